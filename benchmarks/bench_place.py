"""Benchmark: reference-mode placement DP on the 98-layer GPT-3-like instance.

Instance (docs/reference.md#placement-dp format, generated from formulas, not from the published files):
GPT-3 175B (96 blocks, h = 12288, 96 heads, seq 2048, vocab 51200, microbatch 1, bf16) as
98 layers: embedding, 96 transformer blocks, LM head; TP widths t in {1, 2, 4, 8};
1024 devices, 4096 microbatches per batch, 64 GiB per device, 4 GiB/s links.
  params per block 12 h^2 + 13 h (Megatron), bytes = 2 * params / t;
  activations per block (Korthikanti et al. 2023): s b h (10 + 24/t + 5 a s / (h t)) bytes
  (t = 1: s b h (34 + 5 a s / h));
  forward FLOP per block 24 b s h^2 (1 + s / (6 h)) (Narayanan et al. 2021), backward 2x,
  on a 275 TFLOP/s chip at 50 % of peak, divided by t;
  boundary activation s b h * 2 bytes.
Prints seconds per solve and the ratio to the published C++ DP's ~3 s. Also times the MPI
driver with 1 and 2 ranks when mpiexec is available (the speedup of the work split).

Run: PYTHONPATH=. python benchmarks/bench_place.py [--recompute] [--repeat 3] [--no-mpi]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phaze.place.instance import parse_instance  # noqa: E402
from phaze.place.refdp import solve_reference  # noqa: E402

PUBLISHED_CPP_S = 3.0


def gpt3_instance(recompute: bool = True, widths=(1, 2, 4, 8)) -> dict:
    h, a, s, b, V, L = 12288, 96, 2048, 1, 51200, 96
    peak, eff = 275e12, 0.5
    nodes, edges = {}, {}
    boundary = s * b * h * 2.0
    for t in widths:
        block_p = (12 * h * h + 13 * h) / t
        if t == 1:
            block_a = s * b * h * (34 + 5 * a * s / h)
        else:
            block_a = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
        block_fw = 24 * b * s * h * h * (1 + s / (6 * h)) / (peak * eff * t)
        emb_p = V * h / t
        head_fw = 2 * b * s * h * V / (peak * eff * t)
        layers = [(emb_p, s * b * h * 2.0, 1e-4, 2e-4)]
        layers += [(block_p, block_a, block_fw, 2 * block_fw)] * L
        layers += [(emb_p, s * b * V * 4.0 / t, head_fw, 2 * head_fw)]
        nodes[str(t)] = [
            {"id": k, "parameterSize": 2.0 * P, "activationSize": A, "optimalLatencyFw": F,
             "optimalLatencyBw": Bw, "isTensorParallelized": t > 1}
            for k, (P, A, F, Bw) in enumerate(layers)]
        edges[str(t)] = [{"sourceId": k, "destId": k + 1, "communicationCost": boundary}
                         for k in range(len(layers) - 1)]
    return {"maxMemoryPerDevice": 64 * 1024**3, "maxDevices": 1024, "bandwidth": 4 * 1024**3,
            "mbsInBatch": 4096, "activationRecomputation": recompute,
            "optimizerAlgorithm": "SGD", "fixedPP": 32, "fixedTMPC": 4, "fixedDP": 8,
            "numTransformerLayers": L, "nodes": nodes, "edges": edges}


def time_reference(recompute: bool, repeat: int) -> tuple[float, dict]:
    raw = gpt3_instance(recompute)
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = solve_reference(parse_instance(raw))
        best = min(best, time.perf_counter() - t0)
    return best, out


def mpi_items(groups: int) -> list[dict]:
    """`groups` distinct DP inputs (GPT-like synthetic chains, distinct peak FLOP/s), each
    shared by 2 archs x 2 HBM sizes x 2 recompute flags (8 items, fanned out)."""
    models = [dict(layers=24, hidden=2048, heads=16), dict(layers=32, hidden=4096, heads=32),
              dict(layers=48, hidden=6144, heads=48), dict(layers=40, hidden=5120, heads=40)]
    items = []
    for g in range(groups):
        m = models[g % 4]
        for a in range(2):
            for hbm in (40, 80):
                for rec in ("none", "full"):
                    items.append({"model": f"gpt-{m['layers']}x{m['hidden']}", "seq": 2048,
                                  "arch_id": f"synthetic-{g}-{a}", "mbs": 1 + g % 2,
                                  "hbm_bytes": hbm * 1024**3, "recompute": rec,
                                  "synthetic": {**m, "peak_flops": 200e12 + 1e12 * g}})
    return items


def time_mpi(ranks: int, items_file: str, out_dir: str):
    """(wall seconds of the whole command, seconds of the placement phase on rank 0)."""
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not Path(mpiexec).exists():
        return None
    out = os.path.join(out_dir, f"r{ranks}.parquet")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "phaze", "place", "--mpi",
           "--work-items", items_file, "-o", out, "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return None
    wall = time.perf_counter() - t0
    return wall, json.loads(r.stdout)["run_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-mpi", action="store_true")
    ap.add_argument("--groups", type=int, default=400, help="distinct DP inputs of the MPI run")
    ap.add_argument("--mpi-only", action="store_true")
    args = ap.parse_args()
    for rec in (() if args.mpi_only else (True, False)):
        sec, out = time_reference(rec, args.repeat)
        print(f"reference DP, GPT-3-like 98 layers, t in 1,2,4,8, 1024 devices, "
              f"recompute={rec}: {sec:.3f} s  (ratio to published C++ 3 s: {sec / PUBLISHED_CPP_S:.3f}; "
              f"speedup {PUBLISHED_CPP_S / sec:.1f}x)")
        print(f"  -> t={out['tensorParallelDegree']} d={out['dataParallelDegree']} "
              f"p={len(out['stages'])} TPB={out['finalTimePerBatch']:.4g} s "
              f"fixed 32x8x4 TPB={out['fixedStrategyTimePerBatch']}")
    if args.no_mpi:
        return
    with tempfile.TemporaryDirectory() as tmp:
        items = os.path.join(tmp, "items.json")
        Path(items).write_text(json.dumps(mpi_items(args.groups)))
        t1 = time_mpi(1, items, tmp)
        t2 = time_mpi(2, items, tmp)
        if t1 and t2:
            import pandas as pd

            same = pd.read_parquet(os.path.join(tmp, "r1.parquet")).drop(
                columns="solve_seconds").equals(pd.read_parquet(
                    os.path.join(tmp, "r2.parquet")).drop(columns="solve_seconds"))
            print(f"MPI driver, {args.groups} distinct DP inputs x 8 items: placement phase "
                  f"1 rank {t1[1]:.2f} s, 2 ranks {t2[1]:.2f} s, speedup {t1[1] / t2[1]:.2f}x "
                  f"(target 1.7x, ratio {t1[1] / t2[1] / 1.7:.2f}); whole command incl. "
                  f"start-up {t1[0]:.2f} s vs {t2[0]:.2f} s ({t1[0] / t2[0]:.2f}x); "
                  f"tables identical: {same}")
        else:
            print("MPI driver: mpiexec not available or failed; skipped")


if __name__ == "__main__":
    main()
