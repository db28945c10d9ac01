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
    p.add_argument("--model", help="model name (or use --config)")
    p.add_argument("--seq", type=int, help="sequence length (or use --config)")
    p.add_argument("--config", help="sweep config (configs/default.yaml): every model and "
                   "seq in it, with its microbatch sizes, placement and network settings "
                   "(flags given explicitly override it)")
    p.add_argument("--grid", required=True, help="arch grid parquet (phaze arch grid)")
    p.add_argument("--method", default="pruned", choices=METHODS + ("all",))
    p.add_argument("--mbs", default="1,2", help="microbatch sizes (default 1,2)")
    p.add_argument("--tp", default="1", help="tensor-parallel widths (default 1)")
    p.add_argument("--hbm-gib", default="32,64,80", help="HBM sizes in GiB (default 32,64,80)")
    p.add_argument("--recompute", default="none,full", help="recompute modes (default none,full)")
    p.add_argument("--devices", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4096, help="global batch in samples")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--network", default="tpuv4-ici",
                   help="network preset name or a JSON object of phaze.hw.arch.Network fields")
    p.add_argument("--solver", default="cpsat",
                   help="scheduling solver: cpsat, highs, cbc, gurobi or heuristic")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per ILP")
    p.add_argument("--dp", default="default", choices=("default", "reference"),
                   help="placement DP: phaze.place default mode, or the reference DP")
    p.add_argument("--bucket-mm2", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=5, help="buckets: consecutive buckets")
    p.add_argument("--limit-archs", type=int, default=0,
                   help="only the first N archs of the grid (0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    _PARSER_ACTIONS[:] = [a for a in p._actions if a.dest not in ("help",)]


def _specs(args):
    """SweepSpecs from flags, or from --config (one per model and seq)."""
    from phaze.search.pipeline import SweepSpec

    common = dict(mbs=_ints(args.mbs, "--mbs"), tp=_ints(args.tp, "--tp"),
                  hbm_gib=_floats(args.hbm_gib, "--hbm-gib"), recompute=_modes(args.recompute),
                  devices=args.devices, batch=args.batch, optimizer=args.optimizer,
                  network=args.network, solver=args.solver, time_limit_s=args.time_limit,
                  dp=args.dp)
    if not args.config:
        if not args.model or not args.seq:
            raise UserError("give --model and --seq, or --config", field="--model",
                            fix="e.g. --model bert-large --seq 512")
        if args.seq < 1:
            raise UserError(f"must be >= 1, got {args.seq}", field="--seq")
        return [SweepSpec(model=args.model, seq=args.seq, **common)]
    import yaml

    try:
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"cannot read {args.config} ({e.strerror})", field="--config") from None
    pl = cfg.get("placement", {})
    sc = cfg.get("scheduling", {})
    given = {a.dest for a in _PARSER_ACTIONS if getattr(args, a.dest) != a.default}
    if "mbs" not in given and cfg.get("microbatch_sizes"):
        common["mbs"] = tuple(int(x) for x in cfg["microbatch_sizes"])
    for flag, key, conv in (("hbm_gib", "hbm_gib", lambda v: tuple(float(x) for x in v)),
                            ("recompute", "recompute", lambda v: tuple(v)),
                            ("devices", "devices", int), ("batch", "global_batch", int),
                            ("optimizer", "optimizer", str)):
        if flag not in given and key in pl:
            common["batch" if flag == "batch" else flag] = conv(pl[key])
    if "solver" not in given and sc.get("solver") not in (None, "auto"):
        common["solver"] = sc["solver"]
    if "time_limit" not in given and "time_limit_s" in sc:
        common["time_limit_s"] = float(sc["time_limit_s"])
    if "network" not in given and isinstance(cfg.get("network"), dict):
        n = cfg["network"]
        import json

        common["network"] = json.dumps({
            "devices_per_node": n.get("devices_per_node", 8),
            "intra_bw_Bps": n.get("intra_node_bw_Bps", n.get("intra_bw_Bps")),
            "inter_bw_Bps": n.get("inter_node_bw_Bps", n.get("inter_bw_Bps")),
            "intra_latency_s": n.get("intra_node_latency_s", n.get("intra_latency_s", 0)),
            "inter_latency_s": n.get("inter_node_latency_s", n.get("inter_latency_s", 0))})
    specs = []
    for m in cfg.get("models", []):
        seqs = m.get("seq", [])
        for seq in (seqs if isinstance(seqs, list) else [seqs]):
            if args.model and m["name"] != args.model:
                continue
            kw = dict(common)
            if "tp" not in given and m.get("tp"):
                kw["tp"] = tuple(int(x) for x in m["tp"])
            specs.append(SweepSpec(model=m["name"], seq=int(seq), **kw))
    if not specs:
        raise UserError("no models in the config", field="--config", fix="add a models: list")
    return specs


def _modes(s):
    rec = tuple(x.strip() for x in s.split(",") if x.strip())
    for r in rec:
        if r not in ("none", "selective", "full"):
            raise UserError(f"unknown recompute mode {r!r}", field="--recompute",
                            fix="use none, selective or full")
    return rec


_PARSER_ACTIONS = []


def run(args) -> int:
    from phaze.cli import emit_json
    from phaze.report.tables import load_grid

    grid = load_grid(args.grid)
    if args.limit_archs > 0:
        grid = grid.iloc[: args.limit_archs]
    reports = [_search_one(spec, grid, args) for spec in _specs(args)]
    if args.json:
        emit_json(reports[0] if len(reports) == 1 and not args.config else {"runs": reports})
        return 0
    for out in reports:
        _print(out)
    return 0


def _search_one(spec, grid, args) -> dict:
    from phaze.search.pipeline import SweepProblem
    from phaze.search.strategies import area_buckets, exhaustive, pruned

    methods = METHODS if args.method == "all" else (args.method,)
    runs = {
        "exhaustive": exhaustive,
        "pruned": pruned,
        "buckets": lambda sp: area_buckets(sp, args.bucket_mm2, args.patience),
    }
    results = {}
    solved, statuses = {}, {}   # ILP results shared between methods; each counts its own
    for m in methods:
        t0 = time.perf_counter()
        sp = SweepProblem(spec, grid, solved=solved, statuses=statuses)
        res = runs[m](sp)
        results[m] = (res, sp.n_problems(), time.perf_counter() - t0)
        if not args.json:
            print(f"[{spec.model} s{spec.seq} {m}] {res.n_evaluated}/{res.n_archs} archs "
                  f"evaluated, {res.n_ilps}/{sp.n_problems()} ILPs solved "
                  f"({res.n_ilps / max(sp.n_problems(), 1):.1%}), "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    out = {"model": spec.model, "seq": spec.seq, "n_archs": len(grid),
           "mbs": list(spec.mbs), "hbm_gib": list(spec.hbm_gib),
           "recompute": list(spec.recompute), "methods": {}}
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
    return out


def _print(out: dict) -> None:
    print(f"{out['model']} (seq {out['seq']}), {out['n_archs']} archs:")
    for m, r in out["methods"].items():
        if r["best_arch_id"] is None:
            print(f"{m:>12}: no feasible design for {out['model']} (seq {out['seq']}): out of "
                  f"memory at every mbs {out['mbs']} / recompute {out['recompute']} / "
                  f"HBM {out['hbm_gib']} GiB on all {out['n_archs']} archs")
            continue
        plan = r["plan"]
        print(f"{m:>12}: best {r['best_arch_id']} ({r['best_area_mm2']:.1f} mm^2) "
              f"{r['best_samples_per_s']:.1f} samples/s  p={plan.get('p')} d={plan.get('d')} "
              f"t={plan.get('t')} mbs={plan.get('mbs')} recompute={plan.get('recompute')}; "
              f"ILPs solved {r['ilps_solved']}/{r['ilps_total']} "
              f"({r['fraction_ilps_solved']:.1%})")
    if "pruned_matches_exhaustive" in out:
        print("  pruned matches exhaustive: "
              + ("yes" if out["pruned_matches_exhaustive"] else "NO"))
