"""`phaze search`: in-process co-search for one model and sequence length over an arch
grid: exhaustive, the reference's area buckets, or bound pruning (or all three)."""

from __future__ import annotations

import math
import sys
import time

from phaze.errors import UserError
from phaze.settings import (SweepSettings, add_config_arg, add_graph_args, add_network_arg,
                            add_placement_args, add_sched_args, parse_list, sweep_settings)

METHODS = ("exhaustive", "pruned", "buckets")


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
    add_config_arg(p)
    p.add_argument("--grid", required=True, help="arch grid parquet (phaze arch grid)")
    p.add_argument("--method", default="pruned", choices=METHODS + ("all",))
    p.add_argument("--mbs", help="microbatch sizes (default: the config's, else "
                   f"{','.join(map(str, SweepSettings().microbatch_sizes))})")
    p.add_argument("--tp", help="tensor-parallel widths (default: the config's, else 1)")
    p.add_argument("--cp", help="context-parallel sizes, e.g. 1,2 (default: the config's "
                   "models[].cp, else 1)")
    p.add_argument("--fixed", metavar="PxDxT", help="fixed baseline strategy (default: the "
                   "config's fixed_plan of the model, else none)")
    add_placement_args(p)
    add_graph_args(p)
    add_sched_args(p)
    add_network_arg(p)
    p.add_argument("--dp", default="default", choices=("default", "reference"),
                   help="placement DP: phaze.place default mode, or the reference DP")
    p.add_argument("--bucket-mm2", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=5, help="buckets: consecutive buckets")
    p.add_argument("--limit-archs", type=int, default=0,
                   help="only the first N archs of the grid (0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _specs(args):
    """SweepSpecs: one per (model, seq) of --config (or the one of --model/--seq), with the
    config's settings overridden by the flags given (phaze.settings.sweep_settings)."""
    from dataclasses import replace

    from phaze.place.driver import parse_fixed
    from phaze.search.pipeline import SweepSpec

    settings, cfg = sweep_settings(args)
    if args.mbs is not None:
        settings = replace(settings, microbatch_sizes=parse_list(args.mbs, int, "--mbs",
                                                                  minimum=1))
    if args.dp == "reference" and "selective" in settings.placement.recompute:
        # the published DP knows recomputation on or off only: say so, once
        print("phaze search: the reference DP has no selective recomputation; searching "
              "recompute none/full only", file=sys.stderr)
    tp_flag = parse_list(args.tp, int, "--tp", minimum=1) if args.tp is not None else None
    cp_flag = parse_list(args.cp, int, "--cp", minimum=1) if args.cp is not None else None
    fixed_flag = parse_fixed(args.fixed)
    if not cfg:
        if not args.model or not args.seq:
            raise UserError("give --model and --seq, or --config", field="--model",
                            fix="e.g. --model bert-large --seq 512")
        if args.seq < 1:
            raise UserError(f"must be >= 1, got {args.seq}", field="--seq",
                            fix="give the sequence length in tokens, e.g. --seq 2048")
        specs = [SweepSpec(model=args.model, seq=args.seq, tp=tp_flag or (1,),
                           settings=settings, fixed=fixed_flag, dp=args.dp,
                           cp=cp_flag or (1,))]
    else:
        specs = []
        for m in cfg.get("models", []):
            if args.model and m["name"] != args.model:
                continue
            for seq in m["seq"]:
                if args.seq and seq != args.seq:
                    continue
                specs.append(SweepSpec(
                    model=m["name"], source=m.get("hf_config", ""), seq=int(seq),
                    tp=tp_flag or tuple(m["tp"]), settings=settings,
                    fixed=fixed_flag or parse_fixed(m.get("fixed_plan")), dp=args.dp,
                    cp=cp_flag or tuple(m.get("cp", (1,)))))
    if not specs:
        raise UserError("no model of the config matches", field="--config",
                        fix="check --model/--seq against the config's models")
    if args.dp == "reference" and any(sp.cp != (1,) for sp in specs):
        raise UserError("the reference DP has no context parallelism", field="--dp",
                        fix="use --dp default, or drop the models' cp sizes above 1")
    _check_fixed_plans(specs, args, cfg)
    _check_eps(specs, args, cfg)
    _check_cp_comm(specs, args, cfg)
    return specs


def _check_cp_comm(specs, args, cfg) -> None:
    """Refuse a CP size Transformer Engine cannot run with the config's cp_comm_type (a
    sliding window or sinks on the wrong communication, heads an all-to-all cannot split),
    as `phaze check-config` and `phaze evaluate --grid` do (model.graph.cp_comm_problem),
    naming the flag or field that set it."""
    from phaze.model.graph import cp_comm_refusal
    from phaze.model.zoo import resolve_model

    field = ("--cp-comm-type" if args.cp_comm_type is not None or not cfg
             else "placement.cp_comm_type")
    for sp in specs:
        kind = sp.settings.placement.cp_comm_type
        if all(cp <= 1 for cp in sp.cp):
            continue
        spec = resolve_model(sp.source or sp.model).with_(name=sp.model)
        for t in sp.tp:
            for cp in sp.cp:
                size = field.replace("cp_comm_type", "cp_a2a_size").replace(
                    "--cp-comm-type", "--cp-a2a-size")
                no = cp > 1 and cp_comm_refusal(spec, sp.seq, t, cp, kind,
                                                sp.settings.placement.cp_a2a_size, field, size)
                if no:
                    raise UserError(no[0], field=no[1], fix=no[2])


def _check_eps(specs, args, cfg) -> None:
    """Refuse an MoE model none of whose expert-parallel sizes divides its routed experts
    (model.graph.graph_eps), or whose fixed plan has no ep-1 graph to run on, as `phaze
    check-config` does, naming the flag or field."""
    from phaze.model.graph import graph_eps
    from phaze.model.zoo import resolve_model

    field = "--ep" if args.ep is not None or not cfg else "placement.ep"
    for sp in specs:
        spec = resolve_model(sp.source or sp.model).with_(name=sp.model)
        graph_eps(spec, sp.settings.placement.ep, field=field)
        if sp.fixed and spec.experts and 1 not in sp.settings.placement.ep:
            raise UserError(f"the fixed baseline {'x'.join(map(str, sp.fixed))} runs "
                            f"{sp.model} without expert parallelism, which the ep sizes "
                            f"{list(sp.settings.placement.ep)} leave out", field=field,
                            fix=f"add 1 to {field} (or drop the fixed plan)")


def _check_fixed_plans(specs, args, cfg) -> None:
    """Refuse a fixed plan that cannot run, as `phaze check-config` does
    (configcheck.fixed_plan_problems) but with the search's own devices, TP widths and
    graph settings, naming the flag that set each (else the config's field)."""
    from phaze.configcheck import fixed_plan_problems
    from phaze.model.zoo import resolve_model

    for sp in specs:
        if not sp.fixed:
            continue
        m = {"name": sp.model, "fixed_plan": "x".join(map(str, sp.fixed)), "tp": list(sp.tp)}
        if sp.source:
            m["hf_config"] = sp.source
        i = next((k for k, c in enumerate(cfg.get("models", []) if cfg else [])
                  if c["name"] == sp.model), 0)
        plan = "--fixed" if args.fixed else f"models[{i}].fixed_plan"
        names = {"plan": plan, "drop": plan,
                 "devices": "--devices" if args.devices is not None or not cfg
                 else "placement.devices",
                 "tp": "--tp" if args.tp is not None or not cfg else f"models[{i}].tp"}
        if args.sequence_parallel is not None or not cfg:
            names.update(sp_true="--sequence-parallel true",
                         sp_both="--sequence-parallel false,true")
        names.update(batch="--batch" if args.batch is not None or not cfg
                     else "placement.global_batch",
                     mbs="--mbs" if args.mbs is not None or not cfg else "microbatch_sizes")
        problems = fixed_plan_problems(m, resolve_model(sp.source or sp.model).with_(name=sp.model),
                                       sp.settings.placement.devices, sp.settings.graph, names,
                                       sp.settings.placement.global_batch,
                                       sp.settings.microbatch_sizes)
        if problems:
            field, message, fix = problems[0]
            raise UserError(message, field=field, fix=fix)


def run(args) -> int:
    from phaze.hw.grid import read_grid
    from phaze.jsonout import emit_json

    specs = _specs(args)          # every flag and the config checked before any work
    grid = read_grid(args.grid)
    if args.limit_archs > 0:
        grid = grid.iloc[: args.limit_archs]
    reports = [_search_one(spec, grid, args) for spec in specs]
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
    st = spec.settings
    rec = st.record()
    out = {"model": spec.model, "seq": spec.seq, "n_archs": len(grid),
           "mbs": list(st.microbatch_sizes), "hbm_gib": list(st.placement.hbm_gib),
           "recompute": list(st.placement.recompute), "methods": {},
           # how the result was obtained: the version and every setting the search used
           "phaze_version": rec["phaze_version"], "settings": rec}
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
              f"t={plan.get('t')}{_axes(plan)} mbs={plan.get('mbs')} "
              f"recompute={plan.get('recompute')}; "
              f"ILPs solved {r['ilps_solved']}/{r['ilps_total']} "
              f"({r['fraction_ilps_solved']:.1%})")
    if "pruned_matches_exhaustive" in out:
        print("  pruned matches exhaustive: "
              + ("yes" if out["pruned_matches_exhaustive"] else "NO"))


def _axes(plan: dict) -> str:
    """' cp=C ep=E' for the axes a plan uses beyond p, d, t (empty when 1)."""
    return "".join(f" {k}={int(plan[k])}" for k in ("cp", "ep")
                   if plan.get(k) is not None and plan[k] == plan[k] and int(plan[k]) > 1)
