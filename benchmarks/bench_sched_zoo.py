"""Benchmark: is every zoo layer proven optimal within the time limit?

Every model of the zoo, every distinct layer problem (prologue, block, epilogue; forward
and backward) on the 20 archs of tests/test_sched_zoo.py (presets, 3 with one TC, 3 with
one VC, the rest random grid points), solved by the default pipeline (list heuristic +
lower bound, then CP-SAT compact) with the default 10 s limit. Identical problems
(same cache key) are solved once. Prints the unproven and slow (> 1 s) problems, the
count of distinct problems, the summed and worst time, against the target: every
layer proven optimal within 10 s.

    PYTHONPATH=$PWD python benchmarks/bench_sched_zoo.py [--limit 10] [--models a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=float, default=10.0)
    ap.add_argument("--models", default="", help="comma-separated (default: whole zoo)")
    ap.add_argument("--solver", default="cpsat")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_sched_zoo import _archs

    from phaze.hw.presets import get_network
    from phaze.model.graph import build_graph
    from phaze.model.zoo import ZOO, get_model
    from phaze.sched.adapter import layer_problems
    from phaze.sched.solve import solve_problem

    models = args.models.split(",") if args.models else sorted(ZOO)
    archs = _archs()
    net = get_network("dgx-a100")
    seen: dict[str, tuple] = {}
    total = worst = 0.0
    print(f"{len(models)} models x {len(archs)} archs, solver {args.solver}, "
          f"limit {args.limit:g} s; listing unproven or > 1 s:")
    for m in models:
        graph = build_graph(get_model(m), tp=1)
        for a, li, layer, pass_, p in layer_problems(graph, archs, net):
            k = p.key()
            if k in seen:
                continue
            t = time.perf_counter()
            r = solve_problem(p, args.solver, "compact", {"time_limit_s": args.limit})
            dt = time.perf_counter() - t
            total += dt
            worst = max(worst, dt)
            seen[k] = (m, layer.kind, pass_, p.n, p.n_tc, p.n_vc, r.status, r.gap, dt)
            if r.status != "optimal" or dt > 1.0:
                print(f"  {m:<18} {layer.kind:<8} {pass_} ops {p.n:>2} tc {p.n_tc:>4} "
                      f"vc {p.n_vc:>4}: {r.status:<10} gap {r.gap:.1e} {dt:6.2f} s", flush=True)
    unproven = sum(v[6] != "optimal" for v in seen.values())
    print(f"{len(seen)} distinct layer problems: {unproven} unproven at {args.limit:g} s, "
          f"summed {total:.1f} s, worst {worst:.2f} s (target: all proven within "
          f"{args.limit:g} s: {'MET' if unproven == 0 and worst <= args.limit + 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
