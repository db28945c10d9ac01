"""CLI: `phaze schedule`, `phaze schedule-batch`, `phaze merge-latency`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from phaze.errors import UserError
from phaze.sched.backends import BACKENDS
from phaze.sched.solve import DEFAULT_SETTINGS, DEFAULT_SOLVER, FORMULATIONS

SOLVERS = BACKENDS + ("heuristic",)


def register(sub) -> None:
    p = sub.add_parser("schedule", help="schedule one model's layers on one arch (per-layer ILP)")
    p.add_argument("--model", help="zoo name or Hugging Face config.json")
    p.add_argument("--arch", help="preset name (tpuv4, a100, h100) or an arch_id of --grid")
    p.add_argument("--grid", help="arch grid parquet, to resolve an arch_id")
    p.add_argument("--network", help="network preset name or JSON object (default: the arch's)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--mbs", type=int, default=1)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--fused", action="store_true", help="fuse vector epilogues into GEMMs")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--problem", help="schedule a raw problem JSON (SchedProblem.to_dict) instead")
    _solver_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)

    b = sub.add_parser("schedule-batch", help="schedule every layer of graphs on a grid chunk")
    b.add_argument("--graphs", nargs="+", required=True)
    b.add_argument("--grid", required=True)
    b.add_argument("--chunk", type=int, default=0)
    b.add_argument("--n-chunks", type=int, default=1)
    b.add_argument("--network", required=True, help="network JSON object or preset name")
    _solver_args(b)
    b.add_argument("-o", "--output", required=True)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_schedule_batch)

    m = sub.add_parser("merge-latency", help="merge schedule shards into one latency table")
    m.add_argument("shards", nargs="+")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_merge_latency)


def _solver_args(p) -> None:
    p.add_argument("--solver", default=DEFAULT_SOLVER, choices=SOLVERS)
    p.add_argument("--formulation", default="compact", choices=FORMULATIONS)
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per layer solve")
    p.add_argument("--threads", type=int, default=8,
                   help="solver threads (CP-SAT needs its portfolio: 8 even on 2 cores)")
    p.add_argument("--bnb-share", type=float, default=DEFAULT_SETTINGS["bnb_share"],
                   help="fraction of the time limit for the branch and bound before the "
                        "solver (0: solver only)")
    p.add_argument("--cache", default=None, help="cache directory (default: none)")


def _settings(args) -> dict:
    if args.time_limit <= 0:
        raise UserError(f"must be > 0, got {args.time_limit}", field="time-limit")
    if args.threads < 1:
        raise UserError(f"must be >= 1, got {args.threads}", field="threads")
    if not 0 <= args.bnb_share < 1:
        raise UserError(f"must be in [0, 1), got {args.bnb_share}", field="bnb-share")
    return {"time_limit_s": float(args.time_limit), "rel_gap": 1e-6, "threads": int(args.threads),
            "bnb_share": float(args.bnb_share)}


def _cache(args):
    from phaze.sched.cache import ScheduleCache

    return ScheduleCache(args.cache)


def _network(text, default=None):
    if text is None:
        if default is None:
            from phaze.hw.arch import Network

            return Network()
        return default
    from phaze.hw.arch import Network

    t = text.strip()
    if t.startswith("{"):
        try:
            return Network.from_dict(json.loads(t))
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e}", field="network") from None
    if Path(t).is_file():
        return Network.from_dict(json.loads(Path(t).read_text()))
    from phaze.hw.presets import get_network

    return get_network(t)


def _resolve_arch(name: str, grid: str | None):
    import pandas as pd

    from phaze.hw.presets import PRESETS

    if name in PRESETS:
        a = PRESETS[name]
        return pd.DataFrame([a.row()]), a.network, name
    if grid is None:
        raise UserError(f"unknown arch preset {name!r}", field="arch",
                        fix=f"use one of {sorted(PRESETS)}, or pass --grid with an arch_id")
    df = _read_parquet(grid, "grid")
    rows = df[df["arch_id"] == name]
    if rows.empty:
        raise UserError(f"arch_id {name!r} not in {grid}", field="arch")
    return rows.reset_index(drop=True), None, name


def _read_parquet(path, field):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}", field=field) from None


def _op_rows(p, res) -> list[dict]:
    rows = []
    ends = res.schedule().end_s(p)
    for i in sorted(range(p.n), key=lambda k: (res.start_s[k], k)):
        c = p.core_class[i]
        if c == "net":
            cores = "link"
        elif res.mode[i] == "intra":
            cores = f"all ({p.n_tc} TC + {p.n_vc} VC, exclusive)"
        else:
            cores = {"tc": "1 TC", "vc": "1 VC", "tc+vc": "1 TC + 1 VC"}[c]
        rows.append({"op": p.names[i] if p.names else str(i), "class": c, "mode": res.mode[i],
                     "start_s": res.start_s[i], "end_s": ends[i], "cores": cores})
    return rows


def _print_schedule(title, p, res) -> None:
    print(f"{title}: makespan {res.makespan_s * 1e3:.6g} ms  [{res.status}, gap {res.gap:.2e}, "
          f"lower bound {res.lower_bound_s * 1e3:.6g} ms, {res.solver}, {res.seconds:.2f} s]")
    for r in _op_rows(p, res):
        print(f"  {r['start_s'] * 1e6:12.3f} us -> {r['end_s'] * 1e6:12.3f} us  "
              f"{r['op']:<28} {r['cores']}")


def _worse(a: str, b: str) -> str:
    rank = {"optimal": 0, "time_limit": 1, "heuristic": 2}
    return a if rank[a] >= rank[b] else b


def cmd_schedule(args) -> int:
    from phaze.cli import emit_json

    settings = _settings(args)
    cache = _cache(args)
    if args.problem:
        from phaze.sched.problem import SchedProblem

        try:
            p = SchedProblem.from_dict(json.loads(Path(args.problem).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read problem: {e}", field="problem") from None
        res = cache.solve(p, args.solver, args.formulation, settings)
        if args.json:
            emit_json({"makespan_s": res.makespan_s, "lower_bound_s": res.lower_bound_s,
                       "status": res.status, "gap": res.gap, "solver": res.solver,
                       "seconds": res.seconds, "ops": _op_rows(p, res)})
        else:
            _print_schedule("problem", p, res)
        return 0
    if not args.model or not args.arch:
        raise UserError("--model and --arch are required (or --problem)", field="model")
    from phaze.model.graph import build_graph
    from phaze.model.zoo import resolve_model
    from phaze.sched.adapter import layer_problems

    spec = resolve_model(args.model)
    graph = build_graph(spec, seq=args.seq, mbs=args.mbs, tp=args.tp,
                        sequence_parallel=args.sequence_parallel, fused=args.fused)
    archs, net, arch_name = _resolve_arch(args.arch, args.grid)
    net = _network(args.network, net)
    layers = {}
    for _, li, layer, pass_, p in layer_problems(graph, archs, net):
        res = cache.solve(p, args.solver, args.formulation, settings)
        layers.setdefault(li, {"layer": layer})[pass_] = (p, res)
    out = []
    for li, d in sorted(layers.items()):
        (pf, rf), (pb, rb) = d["fwd"], d["bwd"]
        item = {"index": li, "kind": d["layer"].kind, "repeat": d["layer"].repeat,
                "fwd_s": rf.makespan_s, "bwd_s": rb.makespan_s,
                "status": _worse(rf.status, rb.status), "gap": max(rf.gap, rb.gap),
                "fwd": {"status": rf.status, "gap": rf.gap, "lower_bound_s": rf.lower_bound_s,
                        "solver": rf.solver, "seconds": rf.seconds, "ops": _op_rows(pf, rf)},
                "bwd": {"status": rb.status, "gap": rb.gap, "lower_bound_s": rb.lower_bound_s,
                        "solver": rb.solver, "seconds": rb.seconds, "ops": _op_rows(pb, rb)}}
        out.append(item)
        if not args.json:
            print(f"== layer {li} ({d['layer'].kind}, x{d['layer'].repeat})")
            _print_schedule("forward", pf, rf)
            _print_schedule("backward", pb, rb)
    if args.json:
        emit_json({"model": graph.model, "arch": arch_name, "tp": graph.tp, "mbs": graph.mbs,
                   "seq": graph.seq, "solver": args.solver, "formulation": args.formulation,
                   "solves": cache.solves, "layers": out})
    return 0


def cmd_schedule_batch(args) -> int:
    import pandas as pd

    from phaze import __version__
    from phaze.atomic import atomic_path
    from phaze.cli import emit_json
    from phaze.model.serialize import load_graph
    from phaze.sched.adapter import layer_problems
    from phaze.sched.table import SHARD_SCHEMA, validate

    settings = _settings(args)
    if args.n_chunks < 1 or not 0 <= args.chunk < args.n_chunks:
        raise UserError(f"need 0 <= chunk < n-chunks, got {args.chunk}/{args.n_chunks}",
                        field="chunk")
    net = _network(args.network)
    grid = _read_parquet(args.grid, "grid")
    if "arch_id" not in grid.columns:
        raise UserError("grid has no arch_id column", field="grid")
    from phaze.hw.arch import chunk_of

    mine = grid[[chunk_of(str(a), args.n_chunks) == args.chunk for a in grid["arch_id"]]]
    mine = mine.reset_index(drop=True)
    cache = _cache(args)
    rows = []
    t0 = time.time()
    graphs = []
    for g in args.graphs:
        try:
            graphs.append(load_graph(g))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot read graph {g}: {e}", field="graphs") from None
    total = len(mine) * sum(2 * len(g.layers) for g in graphs)
    done = 0
    for graph in graphs:
        if len(mine) == 0:
            break
        for a, li, layer, pass_, p in layer_problems(graph, mine, net):
            res = cache.solve(p, args.solver, args.formulation, settings)
            rows.append({"arch_id": str(mine["arch_id"].iloc[a]), "tp": int(graph.tp),
                         "layer_index": int(li), "pass": pass_, "layer_kind": layer.kind,
                         "latency_s": res.makespan_s, "lower_bound_s": res.lower_bound_s,
                         "status": res.status, "gap": res.gap, "solver": res.solver,
                         "formulation": res.formulation, "seconds": res.seconds,
                         "cache_hit": bool(res.cache_hit), "phaze_version": __version__})
            done += 1
            if sys.stderr.isatty() and done % 50 == 0:
                print(f"\rschedule-batch: {done}/{total} ({time.time() - t0:.0f} s)",
                      end="", file=sys.stderr)
    df = pd.DataFrame(rows, columns=list(SHARD_SCHEMA))
    df = df.astype({"tp": "int64", "layer_index": "int64", "latency_s": float,
                    "lower_bound_s": float, "gap": float, "seconds": float, "cache_hit": bool})
    validate(df, SHARD_SCHEMA, "shard")
    with atomic_path(args.output) as tmp:
        df.to_parquet(tmp, index=False)
    summary = {"output": args.output, "rows": len(df), "archs": len(mine),
               "solves": cache.solves, "cache_hits": cache.hits,
               "not_optimal": int((df["status"] != "optimal").sum()) if len(df) else 0,
               "seconds": time.time() - t0}
    if args.json:
        emit_json(summary)
    else:
        print(f"wrote {args.output}: {summary['rows']} rows, {summary['solves']} solves, "
              f"{summary['cache_hits']} cache hits, {summary['not_optimal']} not proven optimal")
    return 0


def cmd_merge_latency(args) -> int:
    from phaze.atomic import atomic_path
    from phaze.cli import emit_json
    from phaze.sched.table import merge_shards

    shards = [_read_parquet(s, "shards") for s in args.shards]
    out = merge_shards(shards, list(args.shards))
    with atomic_path(args.output) as tmp:
        out.to_parquet(tmp, index=False)
    if args.json:
        emit_json({"output": args.output, "rows": len(out), "shards": len(shards)})
    else:
        print(f"wrote {args.output}: {len(out)} rows from {len(shards)} shards")
    return 0
