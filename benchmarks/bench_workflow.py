"""Workflow benchmark: wall time of the embedded default sweep (`snakemake --cores 2`,
cold ILP cache) against the 5-minute target, and an extrapolation of the paper sweep's
CPU-hours from the per-job times Snakemake measured (results/benchmarks/**.tsv) and the
per-layer solve times the scheduling shards record.

    python benchmarks/bench_workflow.py [--workdir DIR] [--reuse]

--reuse skips the run and only extrapolates from an existing DIR (e.g. a finished
`snakemake --cores 2` in the repository root: --workdir .).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 300.0


def run_default(workdir: Path) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    subprocess.run(
        ["timeout", "-k", "10", "3600", sys.executable, "-m", "snakemake", "-s",
         str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", "-q"],
        check=True, env=env,
    )
    return time.perf_counter() - t0


def job_seconds(workdir: Path) -> pd.DataFrame:
    """One row per finished job: rule (benchmark subfolder), wall seconds, CPU seconds."""
    rows = []
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        df = pd.read_csv(tsv, sep="\t")
        rule = tsv.relative_to(workdir / "results" / "benchmarks").parts[0]
        cpu = float(df["cpu_time"].iloc[-1]) if "cpu_time" in df else float("nan")
        rows.append({"stage": rule, "file": str(tsv), "s": float(df["s"].iloc[-1]), "cpu_s": cpu})
    return pd.DataFrame(rows)


def sweep_size(cfg: dict, n_archs: int) -> dict:
    model_seqs = [(m, s) for m in cfg["models"] for s in m["seq"]]
    n_mbs = len(cfg["microbatch_sizes"])
    p = cfg["placement"]
    return {
        "model_seqs": len(model_seqs),
        "graphs": sum(len(m["tp"]) for m, _ in model_seqs) * n_mbs,
        # scheduling problems scale with archs x (model, seq, mbs, tp)
        "sched_units": n_archs * sum(len(m["tp"]) for m, _ in model_seqs) * n_mbs,
        "sched_jobs": len(model_seqs) * n_mbs * cfg["scheduling"]["n_chunks"],
        "merge_jobs": len(model_seqs) * n_mbs,
        "place_items": len(model_seqs) * n_archs * n_mbs * len(p["hbm_gib"]) * len(p["recompute"]),
    }


def paper_arch_count() -> int:
    from phaze.hw.grid import enumerate_grid

    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    return len(enumerate_grid(cfg["arch"]))


def extrapolate(workdir: Path) -> None:
    default = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    n_def = len(pd.read_parquet(workdir / "results" / "arch" / "grid.parquet"))
    n_pap = paper_arch_count()
    d, p = sweep_size(default, n_def), sweep_size(paper, n_pap)
    jobs = job_seconds(workdir)
    per_stage = jobs.groupby("stage")["s"].agg(["count", "sum", "mean"])
    print("\nmeasured per-job wall seconds (default sweep):")
    print(per_stage.round(2).to_string())

    # Scheduling: per-problem solve seconds from the shards; problems that hit the default's
    # time limit would run up to the paper's limit, so charge them the paper's limit.
    shards = pd.concat([pd.read_parquet(f) for f in (workdir / "results" / "sched").rglob("*.parquet")])
    solved = shards[~shards["cache_hit"]]
    tl_def = default["scheduling"]["time_limit_s"]
    tl_pap = paper["scheduling"]["time_limit_s"]
    limited = solved["status"] == "time_limit"
    solve_s_def = solved["seconds"].sum()
    solve_s_pap_per_unit = (solved.loc[~limited, "seconds"].sum() + limited.sum() * tl_pap) / d["sched_units"]
    solve_s_low_per_unit = solve_s_def / d["sched_units"]  # limited ILPs stop at the default's limit
    overhead_per_job = max(per_stage.loc["sched", "sum"] - solve_s_def, 0.0) / d["sched_jobs"]
    est = {
        "graphs": per_stage.loc["graphs", "mean"] * p["graphs"],
        "arch": per_stage.loc["arch", "mean"] * 10,  # 75,712 candidates vs a few hundred: ~10x
        "sched": solve_s_pap_per_unit * p["sched_units"] + overhead_per_job * p["sched_jobs"],
        "latency": per_stage.loc["latency", "mean"] * p["merge_jobs"] * (n_pap / n_def) ** 0.5,
        "place": per_stage.loc["place", "sum"] / d["place_items"] * p["place_items"],
    }
    print(f"\nscheduling problems solved: {len(solved)} of {len(shards)} rows "
          f"({1 - len(solved) / len(shards):.0%} cache hits), {limited.mean():.1%} hit the "
          f"{tl_def:g} s limit (charged {tl_pap:g} s each in the paper estimate)")
    print(f"paper sweep: {n_pap} archs, {p['sched_jobs']} scheduling jobs, "
          f"{p['place_items']} placement items")
    print("\nextrapolated paper-sweep CPU-hours (upper bound for scheduling):")
    for k, v in est.items():
        print(f"  {k:8s} {v / 3600:10.1f} h")
    print(f"  {'total':8s} {sum(est.values()) / 3600:10.1f} h")
    low = sum(est.values()) - est["sched"] + solve_s_low_per_unit * p["sched_units"] \
        + overhead_per_job * p["sched_jobs"]
    print(f"  (with every ILP stopped at the default's {tl_def:g} s limit instead: "
          f"{low / 3600:.1f} h in total)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="phaze-bench-wf-"))
    if not args.reuse:
        wall = run_default(workdir)
        print(f"default sweep (snakemake --cores 2, cold cache): {wall:.1f} s wall; "
              f"target {TARGET_S:.0f} s; ratio {wall / TARGET_S:.2f} "
              f"({'met' if wall <= TARGET_S else 'MISSED'}); load average {os.getloadavg()[0]:.1f}")
    extrapolate(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
