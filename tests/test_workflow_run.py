"""End-to-end runs of the Snakemake workflow on a tiny sweep (two small zoo models, 8
archs, 2 chunks): locally, through a real one-node SLURM (MPI placement under srun),
incremental reruns after config edits, and a scheduling job killed mid-way."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from slurm_fixture import slurm_cluster  # noqa: F401  (session fixture)
from workflow_util import (
    REPO,
    dry_run_jobs,
    dry_run_jobs_detail,
    env,
    snakemake,
    snakemake_cmd,
    summary,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow


GiB = 2**30
# Columns that record how/when a row was obtained rather than what it is.
PROVENANCE = {"solve_seconds", "seconds", "phaze_version", "cache_hit"}


# ---- reading results ------------------------------------------------------------------------
def place_table(workdir: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted((workdir / "results" / "place").glob("*.parquet"))]
    df = pd.concat(frames, ignore_index=True)
    df = df.drop(columns=[c for c in df.columns if c in PROVENANCE])
    keys = [c for c in ("model", "seq", "arch_id", "mbs", "hbm_bytes", "recompute", "row_kind")
            if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


def assert_same_results(a: Path, b: Path):
    pd.testing.assert_frame_equal(place_table(a), place_table(b), check_exact=False, rtol=1e-9)


def grid_ids(workdir: Path) -> set[str]:
    return set(pd.read_parquet(workdir / "results" / "arch" / "grid.parquet")["arch_id"])


def sched_logs(workdir: Path) -> list[Path]:
    return sorted((workdir / "results" / "logs" / "sched").rglob("*.log"))


def solves_since(workdir: Path, t0: float) -> int:
    """phaze's solve counter: `schedule-batch` reports 'N solves' (ILPs actually solved, not
    served by the cache) in each job's log; sum it over the jobs that ran after t0."""
    total = 0
    for log in sched_logs(workdir):
        if log.stat().st_mtime < t0:
            continue
        m = re.search(r"(\d+) solves", log.read_text())
        assert m, f"no solve count in {log}:\n{log.read_text()[-1000:]}"
        total += int(m.group(1))
    return total


def clone(base: Path, dest: Path) -> Path:
    """A copy of a finished run (outputs, mtimes and Snakemake's metadata)."""
    shutil.copytree(base, dest, symlinks=True)
    return dest


def edit_config(workdir: Path, mutate) -> dict:
    import yaml

    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    mutate(cfg)
    write_config(workdir, cfg)
    return cfg


# ---- the reference run ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wf_base")
    write_config(work, tiny_config())
    t0 = time.time()
    snakemake(work, "--cores", "2", timeout_s=900)
    (work / "wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    return work


def test_local_sweep_end_to_end(base_run):
    cfg = tiny_config()
    res = base_run / "results"
    ids = grid_ids(base_run)
    assert len(ids) == 8
    # Chunking (docs/cli-contract.md): arch -> the chunk of its family (the arch without its
    # GLB size, phaze.hw.arch.chunk_of), every arch once.
    from phaze.hw.arch import grid_chunks

    n = cfg["scheduling"]["n_chunks"]
    chunk = grid_chunks(pd.read_parquet(res / "arch" / "grid.parquet"), n)
    for m in cfg["models"]:
        for s in m["seq"]:
            for b in cfg["microbatch_sizes"]:
                seen = set()
                for c in range(n):
                    shard = pd.read_parquet(res / "sched" / m["name"] / f"s{s}_b{b}" / f"{c}.parquet")
                    archs = set(shard["arch_id"])
                    assert archs == {a for a in ids if chunk[a] == c}
                    seen |= archs
                assert seen == ids
                lat = pd.read_parquet(res / "latency" / f"{m['name']}_s{s}_b{b}.parquet")
                assert set(lat["arch_id"]) == ids
    # Placement: one best row per (arch, microbatch, HBM, recompute) of the sweep.
    place = place_table(base_run)
    best = place[place["row_kind"] == "best"]
    for m in cfg["models"]:
        got = best[best["model"] == m["name"]]
        expect = {(a, b, h * GiB, r) for a in ids for b in cfg["microbatch_sizes"]
                  for h in cfg["placement"]["hbm_gib"] for r in cfg["placement"]["recompute"]}
        assert set(zip(got["arch_id"], got["mbs"], got["hbm_bytes"], got["recompute"])) == expect
        assert got["feasible"].any(), f"no feasible plan for {m['name']}"
    # Every job left a log and a benchmark; no temporary file survived.
    assert len(list((res / "benchmarks").rglob("*.tsv"))) == len(list((res / "logs").rglob("*.log")))
    assert not [p for p in res.rglob("*.tmp") if "cache" not in p.parts]


@pytest.mark.slurm
def test_slurm_run_equals_local_run(base_run, slurm_cluster, tmp_path):  # noqa: F811
    """The same sweep through the real one-node SLURM with the slurm executor: every rule
    an sbatch job, the placement an MPI job of 2 tasks under `srun --mpi=pmi2`."""
    write_config(tmp_path, tiny_config())
    proc = snakemake(
        tmp_path, "--profile", str(REPO / "cluster" / "slurm"),
        "--slurm-init-seconds-before-status-checks", "1", "--jobs", "4",
        timeout_s=900,
    )
    out = proc.stdout + proc.stderr
    assert "srun --mpi=pmi2 -n 2 phaze place --mpi" in out
    place_jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: [^)]*rule_place", out)
    assert len(place_jobs) == 2, out[-3000:]
    for jobid in place_jobs:
        info = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in info and "NumTasks=2" in info, info
    assert_same_results(tmp_path, base_run)


def test_adding_hbm_size_reruns_only_placement(base_run, tmp_path):
    work = clone(base_run, tmp_path / "w")
    edit_config(work, lambda c: c["placement"]["hbm_gib"].append(64))
    counts = dry_run_jobs(work)
    # the report and the config it names (results/config.yaml) follow every config edit
    for rule in ("all", "report", "sweep_config"):
        counts.pop(rule, None)
    assert counts == {"place": 2}
    for path, row in summary(work).items():
        if row["rule"] == "place":
            assert (row["status"], row["plan"]) == ("params changed", "update pending"), path
        elif row["rule"] not in ("report", "sweep_config"):
            assert row["plan"] == "no update", (path, row)
    shards_before = {p: p.stat().st_mtime for p in (work / "results" / "sched").rglob("*.parquet")}
    t0 = time.time()
    snakemake(work, "--cores", "2")
    assert solves_since(work, t0) == 0
    assert {p: p.stat().st_mtime for p in shards_before} == shards_before
    new, old = place_table(work), place_table(base_run)
    assert set(new["hbm_bytes"]) == {32 * GiB, 64 * GiB}
    kept = new[new["hbm_bytes"] == 32 * GiB].reset_index(drop=True)
    old = old.reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.drop(columns=["item"], errors="ignore"),
                                  old.drop(columns=["item"], errors="ignore"), check_exact=False)


def test_adding_microbatch_size_reruns_no_existing_scheduling_job(base_run, tmp_path):
    work = clone(base_run, tmp_path / "w")
    edit_config(work, lambda c: c["microbatch_sizes"].append(2))
    jobs = dry_run_jobs_detail(work)
    by_rule: dict[str, list] = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j["wildcards"])
    # the new microbatch size needs its own graphs and layer schedules; nothing else reruns
    for rule in ("graph", "schedule_chunk", "merge_latency"):
        assert by_rule[rule] and all(w["mbs"] == "2" for w in by_rule[rule]), (rule, by_rule[rule])
    assert len(by_rule["schedule_chunk"]) == 2 * 2  # 2 models x 2 chunks
    assert len(by_rule["place"]) == 2
    assert "arch_grid" not in by_rule


def test_adding_archs_solves_only_new_archs(base_run, tmp_path):
    work = clone(base_run, tmp_path / "w")
    edit_config(work, lambda c: c["arch"]["tc_cols"].append(128))
    counts = dry_run_jobs(work)
    assert counts["arch_grid"] == 1 and "graph" not in counts
    rows = summary(work)
    assert rows["results/arch/grid.parquet"]["status"] == "params changed"
    assert all(r["plan"] == "no update" for r in rows.values() if r["rule"] == "graph")
    t0 = time.time()
    snakemake(work, "--cores", "2")
    old_ids, new_ids = grid_ids(base_run), grid_ids(work)
    added = new_ids - old_ids
    assert old_ids < new_ids and len(added) == 4
    # Rows of the old archs: served by the ILP cache, identical to before.
    solved_rows = 0
    for shard in (work / "results" / "sched").rglob("*.parquet"):
        df = pd.read_parquet(shard)
        # (an empty pass, nothing to recompute, is no ILP: never a cache hit)
        old = df["arch_id"].isin(old_ids) & (df["solver"] != "none")
        assert df.loc[old, "cache_hit"].all(), shard
        solved_rows += int((~df["cache_hit"]).sum())
        assert set(df["arch_id"]) <= new_ids
    solves = solves_since(work, t0)
    assert 0 < solves <= solved_rows
    new = place_table(work)
    pd.testing.assert_frame_equal(
        new[new["arch_id"].isin(old_ids)].drop(columns=["item"], errors="ignore").reset_index(drop=True),
        place_table(base_run).drop(columns=["item"], errors="ignore").reset_index(drop=True),
        check_exact=False)


def test_changing_a_model_reruns_only_its_jobs(base_run, tmp_path):
    work = clone(base_run, tmp_path / "w")
    edit_config(work, lambda c: c["models"][1].update(seq=[256]))
    jobs = dry_run_jobs_detail(work)
    for path, row in summary(work).items():  # bert-large's results stay as they are
        if "bert-large" in path:
            assert row["plan"] == "no update", (path, row)
    rules = {j["rule"] for j in jobs}
    assert {"graph", "schedule_chunk", "merge_latency", "place"} <= rules
    for j in jobs:
        if j["rule"] in ("all", "report", "sweep_config"):
            continue
        assert j["wildcards"].get("model") == "gpt2-xl", j
    assert "arch_grid" not in rules


def test_killed_scheduling_job_then_rerun_equals_uninterrupted(base_run, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    write_config(work, tiny_config())  # cold ILP cache: scheduling jobs take a while
    shard_dir = work / "results" / "sched"

    def started():
        return {p.relative_to(work / "results" / "logs" / "sched").with_suffix(".parquet")
                for p in sched_logs(work)}

    def finished():
        return {p.relative_to(shard_dir) for p in shard_dir.rglob("*.parquet")}

    # Kill the sweep the moment a scheduling job is running (its log open, its shard not
    # written). A short job may still finish in between: then the same work directory is
    # run again, its finished shards kept, until a kill lands mid-job (a timing race, not
    # the property under test).
    killed = set()
    for _attempt in range(4):
        if _attempt:
            snakemake(work, "--unlock")
        proc = subprocess.Popen(
            snakemake_cmd(work, "--cores", "2", timeout_s=900),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=work,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None:
                if started() - finished():   # a scheduling job is running now
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the sweep finished before a scheduling job could be killed"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
            proc.wait()
        killed = started() - finished()
        if killed:
            break
    assert killed, "no scheduling job was interrupted"
    # Nothing half-written looks finished: every shard present is a complete table.
    for p in shard_dir.rglob("*.parquet"):
        assert len(pd.read_parquet(p)) > 0
    # The killed jobs are rerun; Snakemake needs its stale lock removed first.
    snakemake(work, "--unlock")
    jobs = dry_run_jobs_detail(work)
    rerun = {Path(j["wildcards"]["model"]) / f"s{j['wildcards']['seq']}_b{j['wildcards']['mbs']}"
             / f"{j['wildcards']['chunk']}.parquet" for j in jobs if j["rule"] == "schedule_chunk"}
    assert killed <= rerun
    snakemake(work, "--cores", "2", timeout_s=900)
    assert_same_results(work, base_run)
