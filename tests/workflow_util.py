"""Helpers for the workflow tests: run Snakemake on this checkout in a scratch directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def env() -> dict:
    """Jobs import phaze from this checkout (the venv's console script + PYTHONPATH)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def write_config(workdir: Path, cfg: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake_cmd(workdir: Path, *args: str, timeout_s: int = 600) -> list[str]:
    # Snakemake ignores SIGTERM while jobs run: `timeout -k` follows up with SIGKILL.
    return [
        "timeout", "-k", "10", str(timeout_s),
        sys.executable, "-m", "snakemake",
        "-s", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        *args,
    ]


def snakemake(workdir: Path, *args: str, timeout_s: int = 600, check: bool = True):
    proc = subprocess.run(
        snakemake_cmd(workdir, *args, timeout_s=timeout_s),
        capture_output=True, text=True, env=env(), cwd=workdir,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed (rc {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def dry_run_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule that `snakemake -n` would run (from its 'Job stats' table)."""
    proc = snakemake(workdir, "-n", "--cores", "2", *args)
    text = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    if "Nothing to be done" in text:
        return counts
    m = re.search(r"Job stats:\n(.*?)\n\s*total\s+\d+", text, re.S)
    assert m, f"no job stats in dry-run output:\n{text[-3000:]}"
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def summary(workdir: Path) -> dict[str, dict]:
    """`snakemake --summary`: output file -> {rule, status, plan} ("no update" or
    "update pending"; status e.g. "ok", "params changed", "updated input files").
    (`--list-changes params` of Snakemake 9.27 lists every output, changed or not.)"""
    proc = snakemake(workdir, "--summary")
    rows = {}
    for line in proc.stdout.splitlines()[1:]:
        f = line.split("\t")
        if len(f) >= 6:
            rows[f[0]] = {"rule": f[2], "status": f[4], "plan": f[5]}
    assert rows, proc.stdout[-2000:] + proc.stderr[-2000:]
    return rows


def dry_run_jobs_detail(workdir: Path, *args: str) -> list[dict]:
    """Each job `snakemake -n` would run: rule name and wildcards (parsed from its listing)."""
    proc = snakemake(workdir, "-n", "--cores", "2", *args)
    text = proc.stdout + proc.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        wc = {}
        mw = re.search(r"^\s*wildcards: (.*)$", block, re.M)
        if mw:
            for item in mw.group(1).split(", "):
                k, _, v = item.partition("=")
                wc[k.strip()] = v.strip()
        jobs.append({"rule": m.group(1), "wildcards": wc})
    return jobs


def tiny_config(**overrides) -> dict:
    """The small sweep the tests run (.test/config.yaml, a runnable config file)."""
    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    for key, value in overrides.items():
        cfg[key] = value
    return cfg
