"""Pruned vs exhaustive co-search on a small grid: ILPs solved and wall time.

Target: pruning solves at most 25% of the ILPs exhaustive solves, with the same best
design. Prints the figures and the ratios. Needs the sched stage (phaze.sched.adapter).

    PYTHONPATH=. python benchmarks/bench_search.py [--solver cpsat] [--model bert-large]
"""

import argparse
import time

from phaze.hw.grid import enumerate_grid
from phaze.search.pipeline import SweepProblem, SweepSpec
from phaze.search.strategies import area_buckets, exhaustive, pruned

TARGET_FRACTION = 0.25


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-large")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--solver", default="heuristic")
    ap.add_argument("--time-limit", type=float, default=2.0)
    args = ap.parse_args()
    grid = enumerate_grid({"n_tc": [2, 4, 8, 16], "n_vc": [2, 8], "tc_rows": [64, 128],
                           "tc_cols": [64, 128], "square": True, "glb_mib": [32, 128]})
    from dataclasses import replace

    from phaze.settings import PlacementSettings, SchedSettings, SweepSettings

    st = replace(SweepSettings(), microbatch_sizes=(1, 2),
                 placement=PlacementSettings(hbm_gib=(32.0,), recompute=("none", "full")),
                 sched=SchedSettings(solver=args.solver, time_limit_s=args.time_limit))
    spec = SweepSpec(args.model, args.seq, settings=st)
    res = {}
    for name, fn in (("exhaustive", exhaustive), ("pruned", pruned), ("buckets", area_buckets)):
        t0 = time.perf_counter()
        sp = SweepProblem(spec, grid)
        r = fn(sp)
        res[name] = (r, time.perf_counter() - t0, sp.n_problems())
        print(f"{name:>10}: {r.n_ilps:4d}/{sp.n_problems()} ILPs, {r.n_evaluated}/{r.n_archs} "
              f"archs, {res[name][1]:6.1f} s, best {r.best.arch_id if r.best else None}")
    ex, pr = res["exhaustive"][0], res["pruned"][0]
    frac = pr.n_ilps / max(ex.n_ilps, 1)
    same = ex.best.arch_id == pr.best.arch_id and ex.best.samples_per_s == pr.best.samples_per_s
    print(f"pruned/exhaustive ILPs: {frac:.3f} (target <= {TARGET_FRACTION}, "
          f"ratio to target {frac / TARGET_FRACTION:.2f}); time ratio "
          f"{res['pruned'][1] / res['exhaustive'][1]:.2f}; same best: {same}")


if __name__ == "__main__":
    main()
