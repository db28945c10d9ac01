"""Session fixture: a real one-node SLURM for tests marked `slurm`.

Import it into a test module (`from slurm_fixture import slurm_cluster  # noqa: F401`).
It runs cluster/ci/slurm-up.sh once per session and, if that call started the cluster,
cluster/ci/slurm-down.sh at the end. It skips (with the reason) only when the machine
cannot host SLURM at all: not root, or the packages are missing and cannot be installed.
Any other bring-up failure fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UP = REPO / "cluster" / "ci" / "slurm-up.sh"
DOWN = REPO / "cluster" / "ci" / "slurm-down.sh"
EXIT_CANNOT_INSTALL = 3


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yield once `sinfo` shows the node idle; stop the cluster afterwards if we started it."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root (cluster/ci/slurm-up.sh installs and starts daemons)")
    have_slurm = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sinfo", "munged"))
    if not have_slurm and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is unavailable to install it")
    proc = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=600)
    if proc.returncode == EXIT_CANNOT_INSTALL:
        pytest.skip(f"cannot install SLURM here: {proc.stderr.strip()}")
    if proc.returncode != 0:
        pytest.fail(f"cluster/ci/slurm-up.sh failed (rc {proc.returncode}): {proc.stderr.strip()}")
    started_here = proc.stdout.strip().endswith("started")
    try:
        yield
    finally:
        if started_here:
            subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=120)
