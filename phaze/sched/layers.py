"""Every layer pass of a graph scheduled on archs: the rows of a scheduling shard, and the
per-layer latencies of one arch read back from them.

The workflow writes these rows per arch chunk (`phaze schedule-batch`) and merges them
into latency tables; `phaze evaluate|search --grid` call the same functions for the archs
they need, through the same ILP cache, so both routes see the same layer times.
"""

from __future__ import annotations

import pandas as pd

from phaze import __version__
from phaze.sched.adapter import SCHED_PASSES, attention_core_times, layer_problems
from phaze.sched.solve import DEFAULT_SETTINGS
from phaze.sched.table import SHARD_SCHEMA, merge_shards, validate


def graph_identity(graph) -> dict:
    """The columns that key a graph's rows (sched.table.GRAPH_KEY). Graphs built with the
    GPU-kernel options of `phaze evaluate`'s presets (unfused_bias, apex_layernorm) or with
    MoE token dropping (moe_expert_capacity_factor: `phaze graph` and `phaze evaluate`
    only) have no key here: UserError (the sweep never builds them)."""
    from phaze.errors import UserError

    extra = [k for k in ("unfused_bias", "apex_layernorm") if getattr(graph, k, False)]
    if extra:
        raise UserError(f"graph of {graph.model} was built with {', '.join(extra)}, an option "
                        "of phaze evaluate's GPU presets that the schedule tables do not key",
                        field="graph", fix="build the graph without it (phaze graph does)")
    if getattr(graph, "moe_expert_capacity_factor", None) is not None:
        raise UserError(f"graph of {graph.model} was built with MoE token dropping "
                        f"(capacity factor {graph.moe_expert_capacity_factor:g}), which the "
                        "schedule tables do not key (the sweep models dropless MoE)",
                        field="graph", fix="build the graph without --moe-expert-capacity-factor")
    return {"model": graph.model, "seq": int(graph.seq), "mbs": int(graph.mbs),
            "tp": int(graph.tp), "sequence_parallel": bool(graph.sequence_parallel),
            "fused": bool(graph.fused), "attention": graph.attention,
            "vocab_pad_multiple": int(graph.vocab_pad_multiple), "cp": int(graph.cp),
            "ep": int(graph.ep)}


def schedule_rows(graph, archs: pd.DataFrame, network, sched, cache, progress=None,
                  warn=None) -> list:
    """Shard rows (SHARD_SCHEMA) of every (arch, layer, pass) of `graph`. `sched` is a
    phaze.settings.SchedSettings, `cache` a ScheduleCache, `warn` what solver warnings go
    to (default: stderr, one line each)."""
    ident = graph_identity(graph)
    solver, settings = sched.backend(), sched.solve_settings()
    settings = {**DEFAULT_SETTINGS, **settings}
    probs = list(layer_problems(graph, archs, network))
    # the ring step of context parallelism (0 where the graph has no CP: nothing reads it)
    core = attention_core_times(graph, archs, network) if graph.cp > 1 else None
    # keys first: the stored results are looked up in bulk (one query per cache shard per
    # 500 keys), and each distinct ILP of the job is solved once
    by_obj: dict = {}          # layer_problems shares one object between identical archs
    keys = [(by_obj[id(p)] if id(p) in by_obj else by_obj.setdefault(
        id(p), cache.key(p, solver, sched.formulation, settings))) if p.n else None
            for *_x, p in probs]
    cache.prefetch((k, p, solver, sched.formulation) for k, (*_x, p) in zip(keys, probs) if k)
    arch_ids = [str(a) for a in archs["arch_id"]]
    rows = []
    for key, (a, li, layer, pass_, p) in zip(keys, probs):
        res = cache.solve(p, solver, sched.formulation, settings, key=key,
                          **({"warn": warn} if warn else {}))
        rows.append({**ident, "arch_id": arch_ids[a], "layer_index": int(li),
                     "pass": pass_, "layer_kind": layer.kind, "layer_repeat": int(layer.repeat),
                     "latency_s": res.makespan_s,
                     "lower_bound_s": res.lower_bound_s,
                     "core_s": float(core[a, li, SCHED_PASSES.index(pass_)]) if core is not None
                     else 0.0, "status": res.status, "gap": res.gap,
                     "solver": res.solver, "formulation": res.formulation,
                     "seconds": res.seconds, "cache_hit": bool(res.cache_hit),
                     "phaze_version": __version__})
        if progress:
            progress()
    return rows


def shard_frame(rows: list) -> pd.DataFrame:
    """Rows as a typed, validated shard table."""
    df = pd.DataFrame(rows, columns=list(SHARD_SCHEMA))
    df = df.astype({"seq": "int64", "mbs": "int64", "tp": "int64", "layer_index": "int64",
                    "layer_repeat": "int64", "vocab_pad_multiple": "int64", "cp": "int64",
                    "ep": "int64",
                    "sequence_parallel": bool, "fused": bool, "latency_s": float,
                    "lower_bound_s": float, "core_s": float, "gap": float, "seconds": float,
                    "cache_hit": bool})
    validate(df, SHARD_SCHEMA, "shard")
    return df


def latencies_by_arch(latency: pd.DataFrame) -> tuple[dict, dict]:
    """({arch_id: {layer_index: (fwd_s, bwd_s, recompute_s)}}, {arch_id: {layer_index:
    (fwd_core_s, bwd_core_s, recompute_core_s)}}) of one graph's latency rows."""
    lat: dict = {}
    core: dict = {}
    cols = [latency[c].to_numpy() for c in ("arch_id", "layer_index", "fwd_s", "bwd_s",
                                             "recompute_s", "fwd_core_s", "bwd_core_s",
                                             "recompute_core_s")]
    for aid, li, f, b, r, cf, cb, cr in zip(*cols):
        lat.setdefault(str(aid), {})[int(li)] = (float(f), float(b), float(r))
        core.setdefault(str(aid), {})[int(li)] = (float(cf), float(cb), float(cr))
    return lat, core


def scheduled_layer_latencies(graph, archs: pd.DataFrame, network, sched, cache,
                              rows: bool = False) -> tuple:
    """latencies_by_arch of the graph scheduled on the archs (what the workflow's latency
    table holds for them): (layer times, attention-core times) per arch; `rows`: also the
    latency rows themselves (solver, statuses and gaps), third."""
    merged = merge_shards([shard_frame(schedule_rows(graph, archs, network, sched, cache))],
                          ["in-process schedule"])
    return (*latencies_by_arch(merged), merged) if rows else latencies_by_arch(merged)
