"""Benchmark: time to proven optimum, per zoo layer pass, on >= 20 archs.

Compares the compact formulation against the reference (pairwise + transitivity)
formulation on the same open MILP solver (HiGHS by default), and reports the default
backend (CP-SAT, compact) alongside. Prints one line per (model, layer, pass) with the
median times over archs and the ratio reference / compact, then a summary against the
targets: ratio >= 10x and every zoo layer proven optimal within 10 s by the default.

    PYTHONPATH=$PWD python benchmarks/bench_sched.py [--archs 20] [--ref-limit 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

MODELS = (("gpt3-175b", 8), ("llama2-7b", 1), ("bert-large", 1))


def pick_archs(n: int, seed: int = 0):
    import pandas as pd

    from phaze.hw.grid import enumerate_grid
    from phaze.hw.presets import PRESETS

    grid = enumerate_grid()
    rng = random.Random(seed)
    one = grid[(grid["n_tc"] == 1) | (grid["n_vc"] == 1)]
    rest = grid[(grid["n_tc"] > 1) & (grid["n_vc"] > 1) & (grid["n_tc"] <= 256)]
    k1 = max(4, n // 4)
    rows = [one.iloc[i] for i in rng.sample(range(len(one)), k1)]
    rows += [rest.iloc[i] for i in rng.sample(range(len(rest)), max(0, n - k1 - len(PRESETS)))]
    df = pd.DataFrame(rows)
    pre = pd.DataFrame([a.row() for a in PRESETS.values()])
    return pd.concat([pre, df], ignore_index=True)[list(pre.columns)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--ref-limit", type=float, default=10.0)
    ap.add_argument("--limit", type=float, default=10.0)
    ap.add_argument("--solver", default="highs", help="open MILP solver for the comparison")
    ap.add_argument("--models", default=",".join(m for m, _ in MODELS))
    args = ap.parse_args()
    try:
        from phaze.hw.presets import get_network
        from phaze.model.graph import build_graph
        from phaze.model.zoo import get_model
        from phaze.sched.adapter import layer_problems
    except ImportError as e:
        print(f"bench_sched: needs the graph and cost stages ({e})", file=sys.stderr)
        return 1
    from phaze.sched.solve import solve_problem

    archs = pick_archs(args.archs)
    net = get_network("dgx-a100")
    print(f"{len(archs)} archs ({int(((archs.n_tc == 1) | (archs.n_vc == 1)).sum())} with a "
          f"1-core class); solver {args.solver}; limits: compact {args.limit} s, "
          f"reference {args.ref_limit} s")
    print(f"{'model':<11} {'layer':<9} {'pass':<4} {'ops':>3} {'cpsat med/max s':>16} "
          f"{'compact med s':>13} {'ref med s':>10} {'ratio med':>9} {'ratio min':>9} "
          f"{'unproven c/r/cp':>15} {'heur=LB':>7} {'ref/cpsat':>9}")
    ratios, ratios_cp, worst_default = [], [], 0.0
    all_default_opt = True
    wanted = [(m, t) for m, t in MODELS if m in args.models.split(",")]
    for model, tp in wanted:
        graph = build_graph(get_model(model), tp=tp)
        per = {}
        for a, li, layer, pass_, p in layer_problems(graph, archs, net):
            per.setdefault((li, layer.kind, pass_), []).append(p)
        for (li, kind, pass_), probs in per.items():
            t_cp, t_c, t_r, rs, rcp = [], [], [], [], []
            unproven = [0, 0, 0]
            closed = 0
            for p in probs:
                closed += solve_problem(p, "heuristic").gap <= 1e-12
                rd = solve_problem(p, "cpsat", "compact", {"time_limit_s": args.limit},
                                   shortcut=False)
                rc = solve_problem(p, args.solver, "compact", {"time_limit_s": args.limit,
                                                               "threads": 1},
                                   shortcut=False)
                rr = solve_problem(p, args.solver, "reference", {"time_limit_s": args.ref_limit,
                                                                 "threads": 1},
                                   shortcut=False)
                t_cp.append(rd.seconds)
                t_c.append(rc.seconds)
                t_r.append(rr.seconds)
                unproven[0] += rc.status != "optimal"
                unproven[1] += rr.status != "optimal"
                unproven[2] += rd.status != "optimal"
                all_default_opt &= rd.status == "optimal"
                worst_default = max(worst_default, rd.seconds)
                # a reference run cut at its limit counts with the limit (a lower bound)
                rs.append(rr.seconds / max(rc.seconds, 1e-6))
                rcp.append(rr.seconds / max(rd.seconds, 1e-6))
                for r in (rd, rc, rr):
                    if r.status == "optimal" and rd.status == "optimal":
                        assert abs(r.makespan_s - rd.makespan_s) <= 2e-4 * rd.makespan_s, \
                            (model, kind, pass_, r.makespan_s, rd.makespan_s)
            ratios.extend(rs)
            ratios_cp.extend(rcp)
            print(f"{model:<11} {kind:<9} {pass_:<4} {probs[0].n:>3} "
                  f"{statistics.median(t_cp):>8.3f}/{max(t_cp):<7.2f} "
                  f"{statistics.median(t_c):>13.3f} {statistics.median(t_r):>10.3f} "
                  f"{statistics.median(rs):>8.1f}x {min(rs):>8.1f}x "
                  f"{unproven[0]:>5}/{unproven[1]}/{unproven[2]} {closed:>7} "
                  f"{statistics.median(rcp):>8.1f}x")
    print(f"\nratio reference/compact on {args.solver}: median {statistics.median(ratios):.1f}x, "
          f"geo-mean {statistics.geometric_mean(ratios):.1f}x (target >= 10x: "
          f"{statistics.geometric_mean(ratios) / 10:.2f} of target)")
    print(f"ratio reference on {args.solver} / default cpsat: median "
          f"{statistics.median(ratios_cp):.1f}x, geo-mean {statistics.geometric_mean(ratios_cp):.1f}x")
    print(f"default (cpsat): worst time {worst_default:.2f} s, all proven optimal: "
          f"{all_default_opt} (target: every layer within 10 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
