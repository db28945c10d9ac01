"""CLI: `phaze schedule`, `phaze schedule-batch`, `phaze merge-latency`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from phaze import __version__
from phaze.errors import UserError
from phaze.settings import BACKENDS, FORMULATIONS, GraphSettings, SchedSettings, parse_network

SOLVERS = ("auto",) + BACKENDS + ("heuristic",)
_DEFAULT = SchedSettings()


def register(sub) -> None:
    p = sub.add_parser("schedule", help="schedule one model's layers on one arch (per-layer ILP)")
    p.add_argument("--model", help="zoo name or Hugging Face config.json")
    p.add_argument("--arch", help="preset name (tpuv4, a100, h100) or an arch_id of --grid")
    p.add_argument("--grid", help="arch grid parquet, to resolve an arch_id")
    p.add_argument("--network", help="network preset name or JSON object (default: the arch's)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--mbs", type=int, default=1)
    p.add_argument("--seq", type=int, default=None)
    # the sweep's default (GraphSettings): one graph per setting on every route
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=GraphSettings().fused,
                   help="fuse GEMMs with their element-wise epilogues (one TC+VC op; default "
                        f"{str(GraphSettings().fused).lower()}, as the sweep's graph.fused)")
    p.add_argument("--sequence-parallel", action="store_true")
    # the rest of a sweep graph's identity (sched.table.GRAPH_KEY), as `phaze graph` takes it
    p.add_argument("--attention", choices=("eager", "flash"), default=GraphSettings().attention,
                   help=f"attention kernel (default {GraphSettings().attention}, as the sweep's "
                        "graph.attention)")
    p.add_argument("--vocab-pad-multiple", type=int, default=GraphSettings().vocab_pad_multiple,
                   help="pad the vocabulary to a multiple of this x t (default "
                        f"{GraphSettings().vocab_pad_multiple})")
    p.add_argument("--cp", type=int, default=1,
                   help="context-parallel size: one device's seq / cp chunk (needs flash)")
    p.add_argument("--ep", type=int, default=0,
                   help="expert-parallel size an MoE graph's expert GEMMs are grouped for "
                        "(0: none; the sweep's graphs have one per dividing ep)")
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

    c = sub.add_parser("cache-compact", help="merge the ILP cache's shards into one file")
    c.add_argument("cache_dir")
    c.add_argument("-o", "--output", help="also write this summary line (a workflow marker)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache_compact)

    m = sub.add_parser("merge-latency", help="merge schedule shards into one latency table")
    m.add_argument("shards", nargs="+")
    m.add_argument("--grid", help="arch grid: check that the shards hold exactly its archs")
    m.add_argument("--n-chunks", type=int, default=1, help="chunks the grid was split into")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_merge_latency)


def _solver_args(p) -> None:
    d = _DEFAULT
    p.add_argument("--solver", default=d.solver, choices=SOLVERS,
                   help=f"scheduling backend (default {d.solver}: the measured default)")
    p.add_argument("--formulation", default=d.formulation, choices=FORMULATIONS)
    p.add_argument("--time-limit", type=float, default=d.time_limit_s,
                   help=f"seconds per layer solve (default {d.time_limit_s:g})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="solver threads (CP-SAT needs its portfolio: 8 even on 2 cores)")
    p.add_argument("--bnb-share", type=float, default=d.bnb_share,
                   help="fraction of the time limit for the branch and bound before the "
                        "solver (0: solver only)")
    p.add_argument("--cache", default=d.cache_dir, help="ILP cache directory (default: none)")


def sched_settings(args) -> SchedSettings:
    """SchedSettings from the flags of _solver_args."""
    flags = {"time_limit_s": "--time-limit", "bnb_share": "--bnb-share", "threads": "--threads"}
    try:
        return SchedSettings(solver=args.solver, formulation=args.formulation,
                             time_limit_s=float(args.time_limit), threads=int(args.threads),
                             bnb_share=float(args.bnb_share), cache_dir=args.cache or "")
    except UserError as e:       # name the flag, not the settings field
        message = str(e).split(": ", 1)[1].removesuffix(f"; fix: {e.fix}" if e.fix else "")
        raise UserError(message, field=flags.get(e.field, e.field), fix=e.fix) from None


def _cache(sched: SchedSettings):
    from phaze.sched.cache import ScheduleCache

    return ScheduleCache(sched.cache_dir or None)


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
        raise UserError(f"arch_id {name!r} not in {grid}", field="arch",
                        fix="use an arch_id of that grid (its arch_id column; a report names the best ones)")
    return rows.reset_index(drop=True), None, name


def _read_parquet(path, field):
    from phaze.files import read_parquet

    return read_parquet(path, field)


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
    from phaze.jsonout import emit_json

    sched = sched_settings(args)
    cache = _cache(sched)
    solver, settings = sched.backend(), sched.solve_settings()
    if args.problem:
        from phaze.sched.problem import SchedProblem

        try:
            p = SchedProblem.from_dict(json.loads(Path(args.problem).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read problem: {e}", field="problem",
                            fix="give a problem JSON as SchedProblem.to_dict writes it") from None
        res = cache.solve(p, solver, sched.formulation, settings)
        if args.json:
            emit_json({"makespan_s": res.makespan_s, "lower_bound_s": res.lower_bound_s,
                       "status": res.status, "gap": res.gap, "solver": res.solver,
                       "seconds": res.seconds, "ops": _op_rows(p, res)})
        else:
            _print_schedule("problem", p, res)
        return 0
    if not args.model or not args.arch:
        raise UserError("--model and --arch are required (or --problem)", field="model",
                        fix="add --model and --arch, or give --problem FILE")
    from phaze.model.graph import build_graph
    from phaze.model.zoo import resolve_model
    from phaze.sched.adapter import layer_problems

    spec = resolve_model(args.model)
    for name in ("cp", "vocab_pad_multiple"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"must be >= 1, got {getattr(args, name)}", field=flag,
                            fix=f"give {flag} 1 or more")
    graph = build_graph(spec, seq=args.seq, mbs=args.mbs, tp=args.tp,
                        sequence_parallel=args.sequence_parallel, fused=args.fused,
                        attention=args.attention, vocab_pad_multiple=args.vocab_pad_multiple,
                        cp=args.cp, ep=args.ep if spec.experts else 0)
    archs, net, arch_name = _resolve_arch(args.arch, args.grid)
    net = parse_network(args.network, net)
    layers = {}
    for _, li, layer, pass_, p in layer_problems(graph, archs, net):
        res = cache.solve(p, solver, sched.formulation, settings)
        layers.setdefault(li, {"layer": layer})[pass_] = (p, res)
    out = []
    for li, d in sorted(layers.items()):
        (pf, rf), (pb, rb), (pr, rr) = d["fwd"], d["bwd"], d["recompute"]
        item = {"index": li, "kind": d["layer"].kind, "repeat": d["layer"].repeat,
                "fwd_s": rf.makespan_s, "bwd_s": rb.makespan_s, "recompute_s": rr.makespan_s,
                "status": _worse(_worse(rf.status, rb.status), rr.status),
                "gap": max(rf.gap, rb.gap, rr.gap)}
        for name, (p, r) in (("fwd", (pf, rf)), ("bwd", (pb, rb)), ("recompute", (pr, rr))):
            item[name] = {"status": r.status, "gap": r.gap, "lower_bound_s": r.lower_bound_s,
                          "solver": r.solver, "seconds": r.seconds, "ops": _op_rows(p, r)}
        out.append(item)
        if not args.json:
            print(f"== layer {li} ({d['layer'].kind}, x{d['layer'].repeat})")
            _print_schedule("forward", pf, rf)
            _print_schedule("backward", pb, rb)
            if pr.n:
                _print_schedule("selective recompute", pr, rr)
    if args.json:
        # the solvers that solved the passes (a Gurobi run falls back to CBC per problem
        # without a licence; "none" / "bound": nothing to solve), beside the one asked for
        used = sorted({item[x]["solver"] for item in out for x in ("fwd", "bwd", "recompute")})
        emit_json({"model": graph.model, "arch": arch_name, "tp": graph.tp, "mbs": graph.mbs,
                   "seq": graph.seq, "solver": "+".join(used) or solver,
                   "solver_requested": solver, "formulation": sched.formulation,
                   "solves": cache.solves, "phaze_version": __version__, "layers": out})
    return 0


def cmd_schedule_batch(args) -> int:
    from phaze.atomic import atomic_path
    from phaze.jsonout import emit_json
    from phaze.hw.arch import grid_chunks
    from phaze.model.serialize import load_graph
    from phaze.sched.adapter import SCHED_PASSES
    from phaze.sched.layers import schedule_rows, shard_frame

    sched = sched_settings(args)
    if args.n_chunks < 1 or not 0 <= args.chunk < args.n_chunks:
        raise UserError(f"need 0 <= chunk < n-chunks, got {args.chunk}/{args.n_chunks}",
                        field="chunk",
                        fix="give --n-chunks >= 1 and --chunk from 0 to n-chunks - 1")
    net = parse_network(args.network)
    grid = _read_parquet(args.grid, "grid")
    if "arch_id" not in grid.columns:
        raise UserError("grid has no arch_id column", field="grid",
                        fix="give a grid written by `phaze arch grid`")
    of = grid_chunks(grid, args.n_chunks)
    mine = grid[[of[str(a)] == args.chunk for a in grid["arch_id"]]]
    mine = mine.reset_index(drop=True)
    cache = _cache(sched)
    t0 = time.time()
    graphs = [load_graph(g) for g in args.graphs]
    total = len(mine) * sum(len(SCHED_PASSES) * len(g.layers) for g in graphs)
    done = [0]

    def progress():
        done[0] += 1
        if sys.stderr.isatty() and done[0] % 50 == 0:
            print(f"\rschedule-batch: {done[0]}/{total} ({time.time() - t0:.0f} s)",
                  end="", file=sys.stderr)

    warnings: dict = {}        # once per job, with a count (not once per ILP)
    collect = lambda msg: warnings.__setitem__(msg, warnings.get(msg, 0) + 1)  # noqa: E731
    # a chunk may hold no arch (a small grid or wave, archs hashed by family): its shard
    # is empty, so the merge still sees every chunk of the job layout
    rows = [r for graph in graphs if len(mine)
            for r in schedule_rows(graph, mine, net, sched, cache, progress, warn=collect)]
    for msg, n in warnings.items():
        print(f"phaze: warning: {msg} ({n} ILP{'s' if n > 1 else ''} of this job)",
              file=sys.stderr)
    df = shard_frame(rows)
    cache.close()                 # the new ILP results: one cache shard, before the output
    with atomic_path(args.output) as tmp:
        df.to_parquet(tmp, index=False)
    summary = {"output": args.output, "rows": len(df), "archs": len(mine),
               "solves": cache.solves, "cache_hits": cache.hits,
               "cache_rejected": cache.rejected, "cache_shards_written": cache.shards_written,
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
    from phaze.jsonout import emit_json
    from phaze.sched.table import merge_shards

    shards = [_read_parquet(s, "shards") for s in args.shards]
    out = merge_shards(shards, list(args.shards))
    if args.grid:
        from phaze.hw.grid import read_grid
        from phaze.sched.table import check_against_grid

        if args.n_chunks < 1:
            raise UserError(f"must be >= 1, got {args.n_chunks}", field="--n-chunks",
                            fix="give how many chunks the grid is split into, >= 1")
        check_against_grid(shards, list(args.shards), read_grid(args.grid), args.n_chunks)
    with atomic_path(args.output) as tmp:
        out.to_parquet(tmp, index=False)
    if args.json:
        emit_json({"output": args.output, "rows": len(out), "shards": len(shards)})
    else:
        print(f"wrote {args.output}: {len(out)} rows from {len(shards)} shards")
    return 0


def cmd_cache_compact(args) -> int:
    from phaze.jsonout import emit_json
    from phaze.sched.cache import compact, shard_paths

    merged, entries = compact(args.cache_dir)
    summary = {"cache_dir": args.cache_dir, "shards_merged": merged, "entries": entries,
               "shards": len(shard_paths(args.cache_dir))}
    if args.output:
        from phaze.atomic import write_text_atomic

        write_text_atomic(args.output, json.dumps(summary) + "\n")
    if args.json:
        emit_json(summary)
    else:
        print(f"{args.cache_dir}: {merged} shards merged, {entries} entries, "
              f"{summary['shards']} shard(s) now")
    return 0
