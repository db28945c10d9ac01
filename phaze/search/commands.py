"""`phaze search`: in-process co-search for one model and sequence length over an arch
grid: exhaustive, the reference's area buckets, or bound pruning (or all three)."""

from __future__ import annotations

import math
import sys
import time

from phaze.errors import UserError

METHODS = ("exhaustive", "pruned", "buckets")


def _ints(s: str, field: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {s!r}", field=field) from None
    if not vals or min(vals) < 1:
        raise UserError(f"expected integers >= 1, got {s!r}", field=field)
    return vals


def _floats(s: str, field: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {s!r}", field=field) from None
    if not vals or min(vals) <= 0:
        raise UserError(f"expected numbers > 0, got {s!r}", field=field)
    return vals


def register(sub) -> None:
    p = sub.add_parser(
        "search", help="co-search chip and plan for one model (exhaustive | pruned | buckets)",
        description="Schedule every layer on every arch of the grid and place the model "
                    "with the DP; return the best design. 'pruned' skips the ILPs of archs "
                    "whose optimistic bound (lower bounds on layer times through the DP) "
                    "cannot beat the best found so far; it returns the same best design as "
                    "'exhaustive'. 'buckets' is the reference's descending-area search with "
                    "its 5-bucket stop. 'all' runs the three and compares them.")
    p.add_argument("--model", required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--grid", required=True, help="arch grid parquet (phaze arch grid)")
    p.add_argument("--method", default="pruned", choices=METHODS + ("all",))
    p.add_argument("--mbs", default="1,2", help="microbatch sizes (default 1,2)")
    p.add_argument("--tp", default="1", help="tensor-parallel widths (default 1)")
    p.add_argument("--hbm-gib", default="32,64,80", help="HBM sizes in GiB (default 32,64,80)")
    p.add_argument("--recompute", default="none,full", help="recompute modes (default none,full)")
    p.add_argument("--devices", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4096, help="global batch in samples")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--network", default="tpuv4-ici", help="network preset name")
    p.add_argument("--solver", default="cpsat",
                   help="scheduling solver: cpsat, highs, cbc, gurobi or heuristic")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per ILP")
    p.add_argument("--bucket-mm2", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=5, help="buckets: consecutive buckets")
    p.add_argument("--limit-archs", type=int, default=0,
                   help="only the first N archs of the grid (0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from phaze.report.tables import load_grid
    from phaze.search.pipeline import SweepProblem, SweepSpec
    from phaze.search.strategies import area_buckets, exhaustive, pruned

    if args.seq < 1:
        raise UserError(f"must be >= 1, got {args.seq}", field="--seq")
    rec = tuple(x.strip() for x in args.recompute.split(",") if x.strip())
    for r in rec:
        if r not in ("none", "selective", "full"):
            raise UserError(f"unknown recompute mode {r!r}", field="--recompute",
                            fix="use none, selective or full")
    spec = SweepSpec(model=args.model, seq=args.seq, mbs=_ints(args.mbs, "--mbs"),
                     tp=_ints(args.tp, "--tp"), hbm_gib=_floats(args.hbm_gib, "--hbm-gib"),
                     recompute=rec, devices=args.devices, batch=args.batch,
                     optimizer=args.optimizer, network=args.network, solver=args.solver,
                     time_limit_s=args.time_limit)
    grid = load_grid(args.grid)
    if args.limit_archs > 0:
        grid = grid.iloc[: args.limit_archs]
    methods = METHODS if args.method == "all" else (args.method,)
    runs = {
        "exhaustive": exhaustive,
        "pruned": pruned,
        "buckets": lambda sp: area_buckets(sp, args.bucket_mm2, args.patience),
    }
    results = {}
    for m in methods:
        t0 = time.perf_counter()
        sp = SweepProblem(spec, grid)   # fresh: no ILP shared between methods
        res = runs[m](sp)
        results[m] = (res, sp.n_problems(), time.perf_counter() - t0)
        if not args.json:
            print(f"[{m}] {res.n_evaluated}/{res.n_archs} archs evaluated, "
                  f"{res.n_ilps}/{sp.n_problems()} ILPs solved "
                  f"({res.n_ilps / max(sp.n_problems(), 1):.1%}), "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = {"model": spec.model, "seq": spec.seq, "n_archs": len(grid), "methods": {}}
    for m, (res, n_prob, secs) in results.items():
        b = res.best
        out["methods"][m] = {
            "best_arch_id": b.arch_id if b else None,
            "best_area_mm2": b.area_mm2 if b else None,
            "best_samples_per_s": b.samples_per_s if b else None,
            "plan": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in (b.plan.items() if b else ())},
            "archs_evaluated": res.n_evaluated, "ilps_solved": res.n_ilps,
            "ilps_total": n_prob, "fraction_ilps_solved": res.n_ilps / max(n_prob, 1),
            "seconds": secs,
        }
    if "exhaustive" in results and "pruned" in results:
        e, p = results["exhaustive"][0].best, results["pruned"][0].best
        out["pruned_matches_exhaustive"] = (e is None and p is None) or (
            e is not None and p is not None and e.arch_id == p.arch_id
            and e.samples_per_s == p.samples_per_s)
    if args.json:
        from phaze.cli import emit_json

        emit_json(out)
        return 0
    for m, r in out["methods"].items():
        if r["best_arch_id"] is None:
            print(f"{m:>10}: no feasible design for {spec.model} (seq {spec.seq}): out of "
                  f"memory at every mbs {list(spec.mbs)} / recompute {list(spec.recompute)} / "
                  f"HBM {list(spec.hbm_gib)} GiB on all {len(grid)} archs")
            continue
        plan = r["plan"]
        print(f"{m:>10}: best {r['best_arch_id']} ({r['best_area_mm2']:.1f} mm^2) "
              f"{r['best_samples_per_s']:.1f} samples/s  p={plan.get('p')} d={plan.get('d')} "
              f"t={plan.get('t')} mbs={plan.get('mbs')} recompute={plan.get('recompute')}; "
              f"ILPs solved {r['ilps_solved']}/{r['ilps_total']} "
              f"({r['fraction_ilps_solved']:.1%})")
    if "pruned_matches_exhaustive" in out:
        print("pruned matches exhaustive: " + ("yes" if out["pruned_matches_exhaustive"] else "NO"))
    return 0
