"""Work items of the placement sweep and the MPI driver.

A work item is one (model, seq, arch, mbs, HBM size, recompute); its result row is the best
plan over the graph variants of that (model, seq, mbs): every TP width t, with and without
sequence parallelism where the sweep asks for both, every CP size and, for an MoE model,
every expert-parallel size its graphs were built for (each searched at its own ep only;
and, with --fixed, the fixed baseline's row, at the variant with the fixed t, no sequence
parallelism, cp 1 and ep 1, or 0 for a dense model).
Inputs are joined strictly (`load_inputs`): every graph's latency rows must cover exactly
the grid's archs and the graph's layers, keyed by the columns the rows carry.
Items are grouped by content: items whose DP inputs are identical (same model, seq,
microbatch size, peak FLOP/s, HBM bandwidth (it times the optimizer step) and
bit-identical per-layer latencies of every graph variant;
archs that differ only in on-chip buffer size often are) form one group whatever their
arch, HBM size or recompute flag. A group is solved by one phaze.place.dp.best_plans call
per graph variant (the DP runs once for all of its HBM sizes and recompute flags, and
once for all of its archs), and its result is fanned out to one row per item.
Under MPI every rank reads the inputs itself (vectorised; measured cheaper than one
reader broadcasting, and no rank waits on another's reading) and groups the items the same
way; the groups are split statically by estimated cost, largest first to the least loaded
rank (`assign_groups`; no dispatcher: every rank works). Each rank sends its groups'
results (not rows) to rank 0, which fans them out into the table column by column
(`place_table`), sorted by item index, and writes one parquet file atomically. Results do
not depend on the number of ranks. Without mpi4py (or with one rank) the same code runs
serially.
"""

from __future__ import annotations

import json
import sys
import time

from phaze import __version__
from phaze.errors import UserError
from phaze.place.dp import best_plans
from phaze.place.plan import evaluate_plan
from phaze.place.table import PLACE_SCHEMA

GiB = 1024**3
TAG_WORK = 2
ROW_COLUMNS = tuple(PLACE_SCHEMA)


# ------------------------------------------------------------------ items
def synthetic_items(count: int, seed: int = 0) -> list[dict]:
    """GPT-like synthetic items (closed-form chains), for tests and the benchmark."""
    models = [dict(layers=24, hidden=2048, heads=16), dict(layers=32, hidden=4096, heads=32),
              dict(layers=48, hidden=6144, heads=48), dict(layers=40, hidden=5120, heads=40)]
    items = []
    for k in range(count):
        m = models[(k + seed) % len(models)]
        items.append({"model": f"gpt-{m['layers']}x{m['hidden']}", "seq": 2048,
                      "arch_id": f"synthetic-{k % 3}", "mbs": [1, 2][k % 2],
                      "hbm_bytes": [40, 80][(k // 2) % 2] * GiB,
                      "recompute": ["none", "full"][(k // 4) % 2],
                      "synthetic": {**m, "peak_flops": [200e12, 312e12, 400e12][k % 3]}})
    return items


def _chains_for(item: dict, ctx: dict) -> dict:
    """{(t, sequence_parallel, cp, ep): Chain} for an item: one per graph variant of its
    (model, seq, mbs), a graph of cp > 1 with its attention core's times (the ring); ep is
    the graph's (0: dense, or an MoE graph built without one)."""
    if "synthetic" in item:
        from phaze.place.synthetic import gpt_chain

        sy = dict(item["synthetic"])
        tps = sy.pop("tps", [1, 2, 4, 8])
        return {(t, False, 1, 0): gpt_chain(seq=item["seq"], mbs=item["mbs"], t=t,
                                            model=item["model"], **sy) for t in tps}
    from phaze.place.chain import chain_from_graph

    out = {}
    for key, graph in ctx["graphs"].items():
        if (graph.model, graph.seq, graph.mbs) == (item["model"], item["seq"], item["mbs"]):
            lat = ctx["latency"][(key, item["arch_id"])]
            core = ctx["latency"].core(key, item["arch_id"]) if graph.cp > 1 else None
            out[(graph.tp, bool(graph.sequence_parallel), graph.cp, graph.ep)] = chain_from_graph(
                graph, layer_latency=lat, layer_core_s=core)
    return out


def best_over_variants(chains: dict, ctx: dict, hbms, recs, peak: float,
                       hbm_bw: float = 0.0) -> dict:
    """{(hbm_bytes, recompute): (plan, (t, sequence_parallel, cp, ep)) or None}: the DP on
    every chain variant (its context-parallel size set in the plan options; a variant of
    ep > 0 searched at that ep only, dp.best_plans), the fastest fitting plan kept (ties:
    the first variant in sorted order). `hbm_bw`: the arch's achieved HBM bandwidth
    (times the optimizer step; 0: not timed)."""
    from dataclasses import replace

    best: dict = {(float(h), r): None for h in hbms for r in recs}
    for var in sorted(chains):
        plans = best_plans(chains[var], ctx["devices"], ctx["batch"], hbms, recs,
                           links=ctx["links"], options=replace(ctx["options"], cp=var[2]),
                           peak_flops=peak, hbm_bw_Bps=hbm_bw,
                           interleaves=ctx["interleaves"], eps=ctx.get("eps"),
                           zero_stages=ctx.get("zero_stages"),
                           bound={k: b[0]["time_per_batch_s"] for k, b in best.items() if b})
        for key, plan in plans.items():
            cur = best.get(key)
            if plan and (cur is None or plan["time_per_batch_s"] < cur[0]["time_per_batch_s"]):
                best[key] = (plan, var)
    return best


def fixed_plan(chains: dict, ctx: dict, hbm: float, rec: str, peak: float,
               hbm_bw: float = 0.0):
    """(plan, variant) of the fixed PxDxT strategy (Megatron's uniform split, no sequence
    parallelism, context or expert parallelism: the variant of ep 1, or 0 for a dense
    model), or (None, None) when the model has no such variant or split. The sweep's ZeRO
    stages (ctx["zero_stages"]) apply to it as to the search: the fastest fitting one is
    kept (ties: the first), else the last one's infeasible plan (it says why)."""
    from phaze.place.plan import with_axes

    p, d, t = ctx["fixed"]
    var = next((v for v in ((t, False, 1, 1), (t, False, 1, 0)) if v in chains), None)
    if var is None:
        return None, None
    plans = []
    for z in ctx.get("zero_stages") or (None,):
        try:
            plans.append(evaluate_plan(chains[var], p, d, ctx["batch"], rec, 1, hbm_bytes=hbm,
                                       links=ctx["links"],
                                       options=with_axes(ctx["options"], 1, z),
                                       peak_flops=peak, hbm_bw_Bps=hbm_bw))
        except ValueError:
            continue
    fits = [pl for pl in plans if pl["feasible"]]
    if fits:
        return min(fits, key=lambda pl: pl["time_per_batch_s"]), var
    return (plans[-1], var) if plans else (None, None)


def _content_key(item: dict, ctx: dict, memo: dict):
    """What a group's DP result depends on, besides HBM size and recompute flag."""
    if "synthetic" in item:
        return json.dumps({k: v for k, v in item.items()
                           if k not in ("hbm_bytes", "recompute", "arch_id")},
                          sort_keys=True, default=str)
    mk = (item["model"], item["seq"], item["mbs"], item["arch_id"])
    got = memo.get(mk)
    if got is None:
        lat = ctx["latency"]
        sig = tuple(lat.signature(k, item["arch_id"]) if hasattr(lat, "signature")
                    else repr(sorted(lat[(k, item["arch_id"])].items()))
                    for k in sorted(ctx["graphs"], key=repr)
                    if (ctx["graphs"][k].model, ctx["graphs"][k].seq, ctx["graphs"][k].mbs)
                    == mk[:3])
        got = memo[mk] = (mk[:3], float(ctx["peak"].get(item["arch_id"], 0.0)),
                          float(ctx.get("hbm_bw", {}).get(item["arch_id"], 0.0)), sig)
    return got


def group_items(items: list[dict], ctx: dict | None = None) -> list[list[int]]:
    """Item indices grouped by DP input content (first-seen order): one group per distinct
    (model, seq, mbs, peak FLOP/s, achieved HBM bandwidth, latency chains of every graph
    variant); HBM sizes, recompute flags and arch ids vary inside a group. Without ctx (synthetic items only)
    the content is the item minus arch_id, hbm_bytes and recompute."""
    ctx = ctx or {"graphs": {}, "latency": {}, "peak": {}}
    groups: dict = {}
    memo: dict = {}
    for i, it in enumerate(items):
        groups.setdefault(_content_key(it, ctx, memo), []).append(i)
    return list(groups.values())


def solve_group(indices: list[int], items: list[dict], ctx: dict) -> tuple:
    """(best, fixed, seconds) of a group: best = {(hbm_bytes, recompute): (plan, variant)
    or None}, fixed = {(hbm_bytes, recompute): (plan, variant)} (empty without --fixed)."""
    t0 = time.perf_counter()
    first = items[indices[0]]
    chains = _chains_for(first, ctx)
    peak = first.get("synthetic", {}).get("peak_flops") or ctx["peak"].get(first["arch_id"], 0.0)
    hbm_bw = float(ctx.get("hbm_bw", {}).get(first.get("arch_id"), 0.0))
    hbms = sorted({float(items[i]["hbm_bytes"]) for i in indices})
    recs = sorted({items[i]["recompute"] for i in indices})
    best = best_over_variants(chains, ctx, hbms, recs, peak, hbm_bw)
    t_best = time.perf_counter() - t0
    fixed: dict = {}
    t_fixed = 0.0
    if ctx.get("fixed"):
        t1 = time.perf_counter()
        for h in hbms:
            for r in recs:
                fixed[(h, r)] = fixed_plan(chains, ctx, h, r, peak, hbm_bw)
        t_fixed = (time.perf_counter() - t1) / max(1, len(fixed))
    return best, fixed, (t_best, t_fixed)


def estimated_cost(indices: list[int], items: list[dict], ctx: dict) -> float:
    """Relative DP cost of a group, for balancing ranks: layer instances summed over its
    graph variants x its (HBM size, recompute flag) pairs. Dimensionless: the DP's arrays
    grow with the chain length and the scenario batch; what else sets its time (how many
    stage counts memory admits, the microbatch size) is unknown before solving. Inside one
    job the estimates are nearly equal and the split is close to round-robin
    (docs/place.md has the measured balance)."""
    first = items[indices[0]]
    if "synthetic" in first:
        layers = (first["synthetic"]["layers"] + 2) * len(first["synthetic"].get("tps", [1, 2, 4, 8]))
    else:
        layers = sum(g.n_layers for g in ctx["graphs"].values()
                     if (g.model, g.seq, g.mbs) == (first["model"], first["seq"], first["mbs"]))
    pairs = len({(float(items[i]["hbm_bytes"]), items[i]["recompute"]) for i in indices})
    return float(max(layers, 1) * pairs)


def assign_groups(costs: list[float], size: int) -> list[list[int]]:
    """Group indices per rank: longest processing time first (Graham 1969): groups in
    decreasing cost, each to the rank with the least total so far (ties: the lower rank,
    then the earlier group), so the largest rank total is at most 4/3 - 1/(3 size) of the
    optimum.
    Deterministic: every rank computes the same split."""
    load = [0.0] * size
    out: list[list[int]] = [[] for _ in range(size)]
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(size), key=lambda r: (load[r], r))
        out[r].append(k)
        load[r] += costs[k]
    return out


# columns a row takes from its item; every other column of PLACE_SCHEMA comes from the
# plan (a list or dict as JSON) or from the row's kind, method and timing
ITEM_COLUMNS = ("model", "seq", "arch_id", "mbs", "recompute")
_OWN = ("item", "hbm_bytes", "row_kind", "feasible", "sequence_parallel", "fused", "method",
        "solve_seconds", "phaze_version")
METHODS = {"best": "dp-1f1b+interleaved", "fixed": "fixed-uniform"}
PLAN_COLUMNS = tuple(c for c in ROW_COLUMNS if c not in ITEM_COLUMNS and c not in _OWN)


def _template(kind: str, plan, variant, fused, seconds) -> tuple:
    """The row values shared by every item of a group with the same (HBM, recompute) and
    kind, in the order ("row_kind", "feasible", "sequence_parallel", "fused", "method",
    "solve_seconds", "phaze_version", *PLAN_COLUMNS)."""
    vals = [kind, bool(plan and plan["feasible"]), bool(variant[1]) if plan else None, fused,
            METHODS[kind], seconds, __version__]
    for c in PLAN_COLUMNS:
        v = plan.get(c) if plan else None
        vals.append(json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
    return tuple(vals)


def place_table(groups: list[list[int]], results: dict, items: list[dict], ctx: dict):
    """The placement table (phaze.place.table.place_frame: typed, checked) of all items
    from the groups' solve_group results: one best row per item (and a fixed row with
    --fixed), sorted by item then row kind. Columnar: the values shared by the items of a
    group (the plan's columns, JSON encoded once) form one template row per (group, HBM,
    recompute, kind), taken per item by index; only the item's own columns are per row.
    A best row's solve_seconds is its group's DP time / its item count; a fixed row's the
    time of one fixed evaluation."""
    import numpy as np
    import pandas as pd

    from phaze.place.table import place_frame

    kinds = ("best", "fixed") if ctx.get("fixed") else ("best",)
    fused = ctx.get("fused")
    templates: list[tuple] = []
    pick = np.empty((len(items), len(kinds)), dtype=np.int64)
    for k, indices in enumerate(groups):
        best, fixed, (t_best, t_fixed) = results[k]
        index: dict = {}
        for i in indices:
            key = (float(items[i]["hbm_bytes"]), items[i]["recompute"])
            if key not in index:
                index[key] = len(templates)
                plan, var = best.get(key) or (None, None)
                templates.append(_template("best", plan, var, fused, t_best / len(indices)))
                if len(kinds) == 2:
                    plan, var = fixed.get(key, (None, None))
                    templates.append(_template("fixed", plan, var, fused, t_fixed))
            pick[i] = range(index[key], index[key] + len(kinds))
    head = ["row_kind", "feasible", "sequence_parallel", "fused", "method", "solve_seconds",
            "phaze_version"]
    table = pd.DataFrame.from_records(templates, columns=head + list(PLAN_COLUMNS))
    rows = table.take(pick.ravel()).reset_index(drop=True)
    rows["item"] = np.repeat(np.arange(len(items)), len(kinds))
    for c in ITEM_COLUMNS:
        rows[c] = np.repeat(np.array([it[c] for it in items], dtype=object), len(kinds))
    rows["hbm_bytes"] = np.repeat(np.array([float(it["hbm_bytes"]) for it in items]),
                                  len(kinds))
    return place_frame(rows)


def run_item(index: int, item: dict, ctx: dict):
    """The rows of one item (a group of one) as a placement table, item column = index."""
    table = place_table([[0]], {0: solve_group([0], [item], ctx)}, [item], ctx)
    return table.assign(item=index)


# ------------------------------------------------------------------ running
def _mpi_comm():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _solve_mine(mine: list[int], groups, items, ctx) -> tuple[dict, dict]:
    """({group index: result}, this rank's figures: groups, busy CPU and wall seconds)."""
    c0, t0 = time.process_time(), time.perf_counter()
    results = {k: solve_group(groups[k], items, ctx) for k in mine}
    return results, {"groups": len(mine), "cpu_s": time.process_time() - c0,
                     "busy_s": time.perf_counter() - t0}


def run_items(items: list[dict], ctx: dict, use_mpi: bool):
    """The placement table (on rank 0; None on other ranks). Under MPI every rank reads the
    inputs itself (vectorised, no rank waits on another's reading), groups the items the
    same way and solves the groups assign_groups gives it; the others send their results
    to rank 0, which builds the table. ctx["ranks"] gets each rank's figures (groups, busy
    CPU and wall seconds; rank 0 also wait_s, its wait for the others, and table_s, the
    time to build the table)."""
    comm = _mpi_comm() if use_mpi else None
    groups = group_items(items, ctx)
    ctx["n_groups"] = len(groups)
    if comm is None or comm.Get_size() == 1:
        if use_mpi and comm is None:
            print("phaze place: mpi4py not available, running serially", file=sys.stderr)
        results, stats = _solve_mine(list(range(len(groups))), groups, items, ctx)
        ctx["ranks"] = [stats]
        return _timed_table(groups, results, items, ctx, stats)
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    share = assign_groups([estimated_cost(g, items, ctx) for g in groups], size)
    results, stats = _solve_mine(share[rank], groups, items, ctx)
    if rank != 0:
        _polite_wait(comm.isend((results, stats), dest=0, tag=TAG_WORK))
        return None
    t0 = time.perf_counter()
    per_rank = {0: stats}
    status = MPI.Status()
    for _ in range(size - 1):
        while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_WORK, status=status):
            time.sleep(0.002)      # MPICH's blocking receive spins a core: poll politely
        src = status.Get_source()
        got, per_rank[src] = comm.recv(source=src, tag=TAG_WORK)
        results.update(got)
    stats["wait_s"] = time.perf_counter() - t0
    ctx["ranks"] = [per_rank[r] for r in range(size)]
    return _timed_table(groups, results, items, ctx, stats)


def _timed_table(groups, results, items, ctx, stats):
    t0 = time.perf_counter()
    table = place_table(groups, results, items, ctx)
    stats["table_s"] = time.perf_counter() - t0
    return table


def _polite_wait(req):
    """Wait for a non-blocking request without spinning a core (ranks share cores)."""
    while True:
        done, value = req.test()
        if done:
            return value
        time.sleep(0.002)


def write_table(table, path: str, settings=None) -> None:
    """The placement table as one parquet file, written atomically; `settings` (the
    phaze.settings.SweepSettings it was placed with) go into the file's metadata
    (DataFrame.attrs["phaze"], read back by pandas): how the rows were obtained beyond their
    own columns (optimizer, ZeRO, devices, batch, network, graph options, phaze version)."""
    from phaze.atomic import atomic_path

    if settings is not None:
        table = table.copy()
        table.attrs["phaze"] = settings.record()
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


# ------------------------------------------------------------------ inputs
# long: the strict join is one sequence of checks, each naming the file it refuses
def load_inputs(graph_paths: list, latency_paths: list, grid_path: str, ctx: dict) -> list:
    """Read graphs, latency tables and the grid into ctx (graphs, latency, peak, fused) with
    a strict join; return the work items (model, seq, mbs) x grid archs x HBM x recompute.
    UserError naming the file for a missing, extra, duplicated or mismatched key."""
    import numpy as np
    import pandas as pd

    from phaze.files import read_json, read_parquet
    from phaze.hw.grid import read_grid
    from phaze.model.serialize import graph_from_dict
    from phaze.sched.layers import graph_identity
    from phaze.sched.table import GRAPH_KEY, LATENCY_KEY, LATENCY_SCHEMA, validate

    eps = ctx.get("eps")
    for path in graph_paths:
        raw = read_json(path, "graph")
        graph = graph_from_dict(raw)
        _check_cp_comm(graph, raw.get("spec"), ctx["options"], path)
        if graph.ep and eps is not None and graph.ep not in eps:
            raise UserError(f"{path} was built for expert-parallel size {graph.ep}, which the "
                            f"search's ep sizes {list(eps)} leave out", field="--graphs",
                            fix=f"add {graph.ep} to --ep or drop that graph")
        key = tuple(graph_identity(graph)[k] for k in GRAPH_KEY)
        if key in ctx["graphs"]:
            raise UserError(f"{path} repeats the graph {dict(zip(GRAPH_KEY, key))}",
                            field="--graphs", fix="pass each graph once")
        ctx["graphs"][key] = graph
    if len({g.fused for g in ctx["graphs"].values()}) > 1:
        raise UserError("graphs mix fused and unfused builds", field="--graphs",
                        fix="pass graphs built with one graph.fused setting")
    ctx["fused"] = next(iter(ctx["graphs"].values())).fused if ctx["graphs"] else None
    grid = read_grid(grid_path)
    arch_ids = list(grid["arch_id"])
    ctx["peak"] = dict(zip(arch_ids, grid["peak_flops"].astype(float)))
    from phaze.place.evaluate import sweep_hbm_bw_Bps
    ctx["hbm_bw"] = {a: sweep_hbm_bw_Bps(b) for a, b in zip(arch_ids, grid["hbm_bw_Bps"])}
    ctx["latency"] = LatencyView(arch_ids)
    frames = []
    for path in latency_paths:
        df = read_parquet(path, "--latency")
        validate(df, LATENCY_SCHEMA, f"--latency {path}")
        frames.append(df.assign(_file=str(path)))
    if not frames:
        raise UserError("no latency tables given", field="--latency",
                        fix="give --latency FILE (a table from `phaze merge-latency`)")
    lat = pd.concat(frames, ignore_index=True)
    lat["arch_id"] = lat["arch_id"].astype(str)
    dup = lat.duplicated(list(LATENCY_KEY), keep=False)
    if dup.any():
        r = lat[dup].iloc[0]
        raise UserError(f"{r['_file']} repeats the row {dict(r[list(LATENCY_KEY)])}",
                        field="--latency", fix="pass each latency table once")
    want_archs = set(arch_ids)
    seen = set()
    for key, rows in lat.groupby(list(GRAPH_KEY), sort=False):
        key = tuple(v.item() if hasattr(v, "item") else v for v in key)
        seen.add(key)
        name = dict(zip(GRAPH_KEY, key))
        where = rows["_file"].iloc[0]
        graph = ctx["graphs"].get(key)
        if graph is None:
            raise UserError(f"{where} has latency rows of {name}, which no --graphs file "
                            "describes", field="--latency",
                            fix="pass the matching graphs or the right latency tables")
        got = set(rows["arch_id"])
        if got != want_archs:
            miss, extra = sorted(want_archs - got), sorted(got - want_archs)
            raise UserError(f"{where}: the archs of {name} differ from the grid's "
                            f"({len(miss)} missing, e.g. {miss[:2]}; {len(extra)} not in the "
                            f"grid, e.g. {extra[:2]})", field="--latency",
                            fix="rerun the scheduling jobs of this grid")
        n_layers = len(graph.layers)
        li = rows["layer_index"].to_numpy()
        counts = rows.groupby("arch_id").size()
        if (li < 0).any() or (li >= n_layers).any() or (counts != n_layers).any():
            raise UserError(f"{where}: the layers of {name} are not exactly the graph's "
                            f"{n_layers} layers for every arch", field="--latency",
                            fix="give the --latency table scheduled from these --graphs (rerun `phaze schedule-batch` and `phaze merge-latency`)")
        kinds = np.array([lg.kind for lg in graph.layers])[li]
        if (rows["layer_kind"].to_numpy() != kinds).any():
            raise UserError(f"{where}: layer kinds of {name} differ from the graph's",
                            field="--latency", fix="regenerate the latency tables")
        ctx["latency"].add_rows(key, rows, n_layers)
    unseen = [k for k in ctx["graphs"] if k not in seen]
    if unseen and arch_ids:
        raise UserError(f"no latency rows for the graph {dict(zip(GRAPH_KEY, unseen[0]))}",
                        field="--latency", fix="pass its latency table")
    hbms, recs = ctx["hbm_bytes"], ctx["recompute"]
    models = sorted({(g.model, g.seq, g.mbs) for g in ctx["graphs"].values()})
    return [{"model": m, "seq": s, "arch_id": aid, "mbs": b, "hbm_bytes": hbm, "recompute": r}
            for (m, s, b) in models for aid in arch_ids for hbm in hbms for r in recs]


def _check_cp_comm(graph, spec: dict | None, options, path) -> None:
    """UserError when Transformer Engine cannot run the attention of `graph` context-parallel
    with `cp_comm_type` (a sliding window or sinks on the wrong communication, heads an
    all-to-all cannot split), as `phaze evaluate --grid` and check-config refuse it
    (model.graph.cp_comm_problem; `spec`: the model spec `phaze graph` writes beside the
    graph, absent in older files: not checked)."""
    if graph.cp <= 1 or not spec:
        return
    from phaze.model.graph import cp_comm_refusal
    from phaze.model.spec import ModelSpec

    no = cp_comm_refusal(ModelSpec.from_dict(spec), graph.seq, graph.tp, graph.cp,
                         options.cp_comm_type, options.cp_a2a_size, "--cp-comm-type",
                         "--cp-a2a-size")
    if no:
        raise UserError(f"{path}: {no[0]}", field=no[1],
                        fix=no[2] + " (drop the graphs of this cp)")


class LatencyView:
    """ctx["latency"] of the sweep: {(graph key, arch_id): {layer_index: (fwd_s, bwd_s,
    recompute_s)}} backed by one (archs x layers x 6) array per graph (the three passes'
    times, then their attention-core times: core()), read vectorised; signature() is the
    bit pattern of an arch's row, the content key of the DP input."""

    def __init__(self, arch_ids):
        self._index = {str(a): k for k, a in enumerate(arch_ids)}
        self._arr: dict = {}

    # the columns of a latency table (sched.table.LATENCY_SCHEMA) the array holds
    COLUMNS = ("fwd_s", "bwd_s", "recompute_s", "fwd_core_s", "bwd_core_s", "recompute_core_s")

    def add_rows(self, key, rows, n_layers: int) -> None:
        """One graph's latency rows (every arch of the view, layer_index < n_layers),
        vectorised: one (archs x layers x 6) array, no per-row Python."""
        import numpy as np
        import pandas as pd

        a_idx = pd.Index(list(self._index)).get_indexer(rows["arch_id"].astype(str))
        arr = np.zeros((len(self._index), n_layers, len(self.COLUMNS)))
        arr[a_idx, rows["layer_index"].to_numpy()] = rows[list(self.COLUMNS)].to_numpy(dtype=float)
        self._arr[key] = arr

    def signature(self, key, arch_id) -> bytes:
        return self._arr[key][self._index[arch_id]].tobytes()

    def __getitem__(self, k):
        key, arch_id = k
        a = self._arr[key][self._index[arch_id]]
        return {li: (float(f), float(b), float(r)) for li, (f, b, r) in enumerate(a[:, :3])}

    def core(self, key, arch_id) -> dict:
        """{layer_index: (fwd_core_s, bwd_core_s, recompute_core_s)} of one arch."""
        a = self._arr[key][self._index[arch_id]]
        return {li: (float(f), float(b), float(r)) for li, (f, b, r) in enumerate(a[:, 3:])}

    def __contains__(self, k) -> bool:
        return k[0] in self._arr and k[1] in self._index


def context(settings, fixed=None) -> dict:
    """The driver's context for a phaze.settings.SweepSettings (inputs added by
    load_inputs)."""
    from phaze.place.evaluate import plan_options
    from phaze.place.plan import Links

    pl = settings.placement
    return {"devices": pl.devices, "batch": pl.global_batch, "links": Links.of(settings.net()),
            "options": plan_options(pl, settings.net()), "interleaves": pl.interleave,
            "eps": pl.ep, "zero_stages": pl.zero_stages(), "fixed": fixed,
            "hbm_bytes": pl.hbm_bytes(), "recompute": pl.recompute,
            "graphs": {}, "latency": {}, "peak": {}, "fused": None}


def parse_fixed(text: str | None):
    """'PxDxT' -> (p, d, t), or None."""
    if not text:
        return None
    try:
        fixed = tuple(int(x) for x in text.lower().split("x"))
        assert len(fixed) == 3 and min(fixed) >= 1
    except (ValueError, AssertionError):
        raise UserError(f"expected PxDxT, got {text!r}", field="--fixed",
                        fix="give three integers >= 1 such as 8x128x1") from None
    return fixed
