"""Benchmark: `phaze place` on a realistic placement job, serially and under MPI (1, 2 ranks).

The job (one paper-like (model, seq), what one workflow `place` rule runs): the model's
operator graphs (phaze.model.graph.build_graph, the paper config's graph options) for
every microbatch size and TP width given; archs sampled from the paper grid
(configs/paper.yaml) as whole families (an arch without its on-chip buffer size: every
buffer size of a family is kept, so the job sees the archs whose DP inputs coincide, as
the real grid does), families drawn with a fixed seed; the paper's placement settings
(1024 devices, batch 4096, SGD, HBM 32/64/80 GiB, recompute none/full) and its fixed
baseline. Latency tables are not scheduled (that would take the ILP stage's hours): each
layer pass's latency is the serial sum of its ops' all-core latencies from the cost model
(phaze.cost.api.op_latencies), status "heuristic", lower bound the longest op. The DP
sees the same table shapes, key joins and duplicate structure as in the workflow.

Measured over --repeat rounds (serial, 1 rank, 2 ranks in turn, so drift in the machine's
load hits all three alike): `phaze place` without MPI, `mpiexec -n 1 phaze place --mpi`,
`mpiexec -n 2 ...`; wall of the whole command (start-up included), the placement phase
(`run_seconds` of `--json`, rank 0), the CPU of the whole command (children's rusage: every
rank and mpiexec) and the per-rank DP CPU and wall (`ranks` of `--json`). Printed:
  speedup = wall(1 rank) / wall(2 ranks), best/best and median/median, against the
  target 1.7x (issue 21), and the same for the placement phase;
  parallel efficiency = sum of the ranks' DP CPU / (2 x placement phase wall): 1 when both
  ranks compute all the time; the machine's other load and waiting lower it;
  balance = largest rank's DP CPU / mean; DP CPU of 2 ranks / 1 rank (> 1: the ranks slow
  each other, shared caches or cores); the DP phase's speedup with a core per rank =
  1-rank DP CPU / largest rank DP CPU (medians);
  the load average (/proc/loadavg) before each run.
The tables of all runs are compared (solve_seconds apart, a timing): they must be equal.

    PYTHONPATH=. python benchmarks/bench_place_mpi.py [--model megatron-gpt2-72 --seq 1024
        --tps 1,2,4,8 --mbs 1,2,4,8 --families 100 --repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = 1.7
FAMILY = ("n_tc", "n_vc", "tc_rows", "tc_cols", "vc_lanes", "clock_hz", "hbm_bw_Bps")


def sample_families(grid, families: int, seed: int):
    """Rows of `families` arch families (all of their buffer sizes), drawn with `seed`."""
    fam = grid.groupby(list(FAMILY), sort=True).ngroup()
    chosen = set(random.Random(seed).sample(sorted(set(fam)), families))
    return grid[fam.isin(chosen)].reset_index(drop=True)


def latency_frame(graph, grid, net):
    """A latency table (LATENCY_SCHEMA) of `graph` on every arch of `grid`: each pass the
    serial sum of its ops' all-core latencies."""
    import numpy as np
    import pandas as pd

    from phaze import __version__
    from phaze.cost.api import op_latencies
    from phaze.sched.adapter import SCHED_PASSES, pass_ops
    from phaze.sched.layers import graph_identity
    from phaze.sched.table import LATENCY_SCHEMA, validate

    n = len(grid)
    parts = []
    for li, layer in enumerate(graph.layers):
        cols = {**graph_identity(graph), "arch_id": grid["arch_id"].astype(str).to_numpy(),
                "layer_index": li, "layer_kind": layer.kind, "layer_repeat": int(layer.repeat)}
        for p in SCHED_PASSES:
            ops = pass_ops(layer, p)
            if ops:
                lat = op_latencies(ops, grid, net, tp=graph.tp).lat_all_s
                ub, lb = lat.sum(axis=1), lat.max(axis=1)
            else:
                ub = lb = np.zeros(n)
            cols.update({f"{p}_s": ub, f"{p}_lower_bound_s": lb, f"{p}_status": "heuristic",
                         f"{p}_gap": np.where(ub > 0, (ub - lb) / np.maximum(ub, 1e-300), 0.0)})
        cols.update(solver="none", seconds=0.0, phaze_version=__version__)
        parts.append(pd.DataFrame(cols))
    df = pd.concat(parts, ignore_index=True)[list(LATENCY_SCHEMA)]
    validate(df, LATENCY_SCHEMA, "benchmark latency table")
    return df


def build_job(out: Path, model: str, seq: int, tps, mbss, families: int, seed: int) -> dict:
    """Write graphs, latency tables, the grid and the config of the job under `out`;
    return the `phaze place` arguments (without launcher, -o and --mpi)."""
    from phaze.hw.grid import enumerate_grid
    from phaze.model.graph import build_graph
    from phaze.model.serialize import save_graph
    from phaze.model.zoo import resolve_model
    from phaze.settings import SweepSettings

    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    st = SweepSettings.from_config(cfg)
    grid = sample_families(enumerate_grid(cfg["arch"]), families, seed)
    out.mkdir(parents=True, exist_ok=True)
    grid.to_parquet(out / "grid.parquet", index=False)
    spec = resolve_model(model)
    graphs, lats = [], []
    for mbs in mbss:
        frames = []
        for tp in tps:
            g = build_graph(spec, seq=seq, mbs=mbs, tp=tp, **st.graph.build_kwargs())
            path = out / f"s{seq}_b{mbs}_t{tp}_sp0.json"
            save_graph(g, path)
            graphs.append(str(path))
            frames.append(latency_frame(g, grid, st.net()))
        import pandas as pd

        lat = out / f"{model}_s{seq}_b{mbs}.parquet"
        pd.concat(frames, ignore_index=True).to_parquet(lat, index=False)
        lats.append(str(lat))
    fixed = next((m.get("fixed_plan") for m in cfg["models"] if m["name"] == model), None)
    pl = cfg["placement"]
    args = ["--graphs", *graphs, "--latency", *lats, "--grid", str(out / "grid.parquet"),
            "--devices", str(pl["devices"]), "--batch", str(pl["global_batch"]),
            "--hbm-gib", ",".join(str(h) for h in pl["hbm_gib"]),
            "--recompute", ",".join(pl["recompute"]), "--optimizer", pl["optimizer"],
            "--no-zero1", "--network", json.dumps(cfg["network"])]
    if fixed:
        args += ["--fixed", fixed]
    return {"args": args, "archs": len(grid), "graphs": len(graphs)}


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() \
        else "?"


def run_once(launch: list, args: list, out: Path, tag: str):
    """(wall s, CPU s of the command and its children, `phaze place --json` summary,
    output path, load average before the run)."""
    path = out / f"{tag}.parquet"
    cmd = [*launch, sys.executable, "-m", "phaze", "place", *(["--mpi"] if launch else []),
           *args, "-o", str(path), "--json"]
    ld = load()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{r.stderr}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, json.loads(r.stdout), path, ld


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="megatron-gpt2-72")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--tps", default="1,2,4,8")
    ap.add_argument("--mbs", default="1,2,4,8")
    ap.add_argument("--families", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="build the job in this directory and keep it")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    import pandas as pd

    tmp = None if args.keep else tempfile.TemporaryDirectory()
    out = Path(args.keep or tmp.name)
    t0 = time.perf_counter()
    job = build_job(out, args.model, args.seq, [int(x) for x in args.tps.split(",")],
                    [int(x) for x in args.mbs.split(",")], args.families, args.seed)
    print(f"job: {args.model} s{args.seq}, {job['archs']} archs ({args.families} families), "
          f"{job['graphs']} graphs (mbs {args.mbs} x t {args.tps}); built in "
          f"{time.perf_counter() - t0:.1f} s under {out}")
    if args.build_only:
        return
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    runs = {"serial": [], "1 rank": ([mpiexec, "-n", "1"]), "2 ranks": [mpiexec, "-n", "2"]}
    if not Path(mpiexec).exists():
        runs = {"serial": []}
        print("mpiexec not found: serial run only")
    runs_of: dict = {tag: [] for tag in runs}
    tables = {}
    for rep in range(args.repeat):
        for tag, launch in runs.items():
            wall, cpu, summ, path, ld = run_once(launch, job["args"], out, tag.replace(" ", ""))
            ranks = summ["ranks"]
            cpus = ", ".join(f"{r['cpu_s']:.2f}" for r in ranks)
            walls = ", ".join(f"{r['busy_s']:.2f}" for r in ranks)
            print(f"  run {rep + 1} {tag:8s}: wall {wall:6.2f} s, placement phase "
                  f"{summ['run_seconds']:6.2f} s, CPU {cpu:6.2f} s; per rank DP CPU {cpus} s, "
                  f"DP wall {walls} s; rank 0 waits {ranks[0].get('wait_s', 0.0):.2f} s, "
                  f"builds the table in {ranks[0]['table_s']:.2f} s; load {ld}", flush=True)
            runs_of[tag].append({"wall": wall, "cpu": cpu, "phase": summ["run_seconds"],
                                 "rank_cpu": [r["cpu_s"] for r in ranks], "load": ld})
            tables[tag] = pd.read_parquet(path).drop(columns="solve_seconds")
    ref = tables["serial"]
    same = all(ref.equals(t) for t in tables.values())
    print(f"items {summ['items']}, DP groups {summ['groups']}, rows {len(ref)}; tables identical "
          f"across runs (solve_seconds apart): {same}")

    def med(tag, f):
        return statistics.median(f(r) for r in runs_of[tag])

    for tag, rs in runs_of.items():
        print(f"{tag:8s}: wall best {min(r['wall'] for r in rs):6.2f} s, median "
              f"{med(tag, lambda r: r['wall']):6.2f} s; placement phase median "
              f"{med(tag, lambda r: r['phase']):6.2f} s; loads {[r['load'] for r in rs]}")
    if "2 ranks" in runs_of:
        one, two = runs_of["1 rank"], runs_of["2 ranks"]
        best = min(r["wall"] for r in one) / min(r["wall"] for r in two)
        mid = med("1 rank", lambda r: r["wall"]) / med("2 ranks", lambda r: r["wall"])
        print(f"2-rank speedup, whole command: best/best {best:.2f}x, median/median {mid:.2f}x "
              f"(target {TARGET}x, ratio {max(best, mid) / TARGET:.2f}); placement phase "
              f"median/median {med('1 rank', lambda r: r['phase']) / med('2 ranks', lambda r: r['phase']):.2f}x")
        eff = med("2 ranks", lambda r: sum(r["rank_cpu"]) / (2 * r["phase"]))
        bal = med("2 ranks", lambda r: max(r["rank_cpu"]) / (sum(r["rank_cpu"]) / 2))
        infl = med("2 ranks", lambda r: sum(r["rank_cpu"])) / med("1 rank", lambda r: r["rank_cpu"][0])
        proj = med("1 rank", lambda r: r["rank_cpu"][0]) / med("2 ranks", lambda r: max(r["rank_cpu"]))
        print(f"2 ranks, CPU-time based (medians): parallel efficiency sum(rank DP CPU) / (2 x "
              f"placement phase wall) {eff:.2f} (1 = both ranks busy all the time; less = "
              f"waiting or the machine's other load); balance max/mean rank DP CPU {bal:.3f}; "
              f"DP CPU of 2 ranks / 1 rank {infl:.2f} (contention); speedup of the DP phase "
              f"with a core per rank, 1-rank DP CPU / largest rank DP CPU: {proj:.2f}x")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
