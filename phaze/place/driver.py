"""Work items of the placement sweep and the MPI driver.

A work item is one (model, seq, arch, mbs, HBM size, recompute); its result row is the best
plan over the available TP widths (and, with --fixed, the fixed baseline's row).
Items that differ only in HBM size and recompute flag form a group, solved by one
phaze.place.dp.best_plans call per TP width (the DP runs once for all of them).
Under MPI rank 0 hands out group indices on request (dynamic load balancing) and also works
on groups itself between requests; every result travels back to rank 0, which sorts rows by
item index and writes one parquet file atomically. Results do not depend on the number of
ranks. Without mpi4py (or with one rank) the same code runs serially.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from phaze import __version__
from phaze.errors import UserError
from phaze.place.dp import best_plans
from phaze.place.plan import Links, PlanOptions, evaluate_plan

GiB = 1024**3
TAG_REQ, TAG_WORK = 1, 2
ROW_COLUMNS = ("item", "model", "seq", "arch_id", "mbs", "hbm_bytes", "recompute", "row_kind",
               "feasible", "p", "d", "t", "interleave", "stages", "time_per_batch_s",
               "samples_per_s", "tokens_per_s", "mfu", "memory_per_device_bytes", "compute_s",
               "bubble_s", "p2p_s", "dp_sync_s", "tp_s", "method", "solve_seconds",
               "phaze_version")


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
    """{t: Chain} for an item."""
    if "synthetic" in item:
        from phaze.place.synthetic import gpt_chain

        sy = dict(item["synthetic"])
        tps = sy.pop("tps", [1, 2, 4, 8])
        return {t: gpt_chain(seq=item["seq"], mbs=item["mbs"], t=t, model=item["model"], **sy)
                for t in tps}
    from phaze.place.chain import chain_from_graph

    out = {}
    for (model, seq, mbs, t), graph in ctx["graphs"].items():
        if (model, seq, mbs) != (item["model"], item["seq"], item["mbs"]):
            continue
        lat = ctx["latency"].get((item["arch_id"], t, model, seq, mbs))
        if lat:
            out[t] = chain_from_graph(graph, layer_latency=lat)
    return out


def group_items(items: list[dict]) -> list[list[int]]:
    """Item indices grouped by everything but hbm_bytes and recompute (first-seen order)."""
    groups: dict = {}
    for i, it in enumerate(items):
        key = json.dumps({k: v for k, v in it.items() if k not in ("hbm_bytes", "recompute")},
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_group(indices: list[int], items: list[dict], ctx: dict) -> list[dict]:
    """Rows of a group of items (same chains; HBM sizes / recompute flags vary). Each best
    row's solve_seconds is the group's solve time divided by its item count."""
    t0 = time.perf_counter()
    first = items[indices[0]]
    chains = _chains_for(first, ctx)
    devices, batch = ctx["devices"], ctx["batch"]
    links, options = ctx["links"], ctx["options"]
    peak = first.get("synthetic", {}).get("peak_flops") or ctx["peak"].get(first["arch_id"], 0.0)
    hbms = sorted({float(items[i]["hbm_bytes"]) for i in indices})
    recs = sorted({items[i]["recompute"] for i in indices})
    best: dict = {}
    for t in sorted(chains):
        plans = best_plans(chains[t], devices, batch, hbms, recs, links=links, options=options,
                           peak_flops=peak, interleaves=ctx["interleaves"])
        for key, plan in plans.items():
            cur = best.get(key)
            if plan and (cur is None or plan["time_per_batch_s"] < cur["time_per_batch_s"]):
                best[key] = plan
    per_item = (time.perf_counter() - t0) / len(indices)
    rows = []
    for i in indices:
        item = items[i]
        plan = best.get((float(item["hbm_bytes"]), item["recompute"]))
        rows.append(_row(i, item, "best", plan, "dp-1f1b+interleaved", per_item))
        fixed = ctx.get("fixed")
        if fixed:
            p, d, t = fixed
            t1 = time.perf_counter()
            plan = None
            if t in chains:
                try:
                    plan = evaluate_plan(chains[t], p, d, batch, item["recompute"], 1,
                                         hbm_bytes=float(item["hbm_bytes"]), links=links,
                                         options=options, peak_flops=peak)
                except ValueError:
                    plan = None
            rows.append(_row(i, item, "fixed", plan, "fixed-uniform", time.perf_counter() - t1))
    return rows


def run_item(index: int, item: dict, ctx: dict) -> list[dict]:
    """Rows of one item (a group of one)."""
    return [dict(r, item=index) for r in run_group([0], [item], ctx)]


def _row(index, item, kind, plan, method, seconds) -> dict:
    row = {k: None for k in ROW_COLUMNS}
    row.update(item=index, model=item["model"], seq=item["seq"], arch_id=item["arch_id"],
               mbs=item["mbs"], hbm_bytes=float(item["hbm_bytes"]), recompute=item["recompute"],
               row_kind=kind, feasible=bool(plan and plan["feasible"]), method=method,
               solve_seconds=seconds, phaze_version=__version__)
    if plan:
        for k in ("p", "d", "t", "interleave", "time_per_batch_s", "samples_per_s",
                  "tokens_per_s", "mfu", "memory_per_device_bytes", "compute_s", "bubble_s",
                  "p2p_s", "dp_sync_s", "tp_s"):
            row[k] = plan.get(k)
        row["stages"] = json.dumps(plan["stages"])
    return row


# ------------------------------------------------------------------ running
def _mpi_comm():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def run_items(items: list[dict], ctx: dict, use_mpi: bool) -> list[dict] | None:
    """All rows (on rank 0; None on other ranks)."""
    comm = _mpi_comm() if use_mpi else None
    groups = group_items(items)
    if comm is None or comm.Get_size() == 1:
        if use_mpi and comm is None:
            print("phaze place: mpi4py not available, running serially", file=sys.stderr)
        rows = [r for g in groups for r in run_group(g, items, ctx)]
        rows.sort(key=lambda r: (r["item"], r["row_kind"]))
        return rows
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0:
        done: list = []
        while True:
            comm.send(done, dest=0, tag=TAG_REQ)
            idx = _polite_wait(comm.irecv(source=0, tag=TAG_WORK))
            if idx is None:
                return None
            done = run_group(groups[idx], items, ctx)
    rows: list = []
    nxt = 0
    active = size - 1
    status = MPI.Status()

    def serve(block: bool):
        nonlocal nxt, active
        while active and (block or comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQ)):
            while block and not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQ):
                time.sleep(0.002)      # MPICH's blocking receive spins a core: poll politely
            got = comm.recv(source=MPI.ANY_SOURCE, tag=TAG_REQ, status=status)
            rows.extend(got)
            src = status.Get_source()
            if nxt < len(groups):
                comm.send(nxt, dest=src, tag=TAG_WORK)
                nxt += 1
            else:
                comm.send(None, dest=src, tag=TAG_WORK)
                active -= 1
            if block and nxt < len(groups):
                return

    while nxt < len(groups):
        serve(block=False)
        if nxt >= len(groups):
            break
        idx = nxt
        nxt += 1
        rows.extend(run_group(groups[idx], items, ctx))
    while active:
        serve(block=True)
    rows.sort(key=lambda r: (r["item"], r["row_kind"]))
    return rows


def _polite_wait(req):
    """Wait for a non-blocking receive without spinning a core (ranks share cores)."""
    while True:
        done, value = req.test()
        if done:
            return value
        time.sleep(0.002)


def write_rows(rows: list[dict], path: str) -> None:
    import pandas as pd

    from phaze.atomic import atomic_path

    df = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


# ------------------------------------------------------------------ CLI glue
def _parse_list(text: str, conv, field: str) -> list:
    try:
        return [conv(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"cannot parse {text!r}", field=field) from None


def build_context(args) -> dict:
    net = None
    if args.network:
        try:
            net = json.loads(Path(args.network).read_text()) if Path(args.network).exists() \
                else json.loads(args.network)
        except json.JSONDecodeError as e:
            raise UserError(f"not JSON ({e})", field="--network") from None
    fixed = None
    if getattr(args, "fixed", None):
        try:
            fixed = tuple(int(x) for x in args.fixed.lower().split("x"))
            assert len(fixed) == 3 and min(fixed) >= 1
        except (ValueError, AssertionError):
            raise UserError(f"expected PxDxT, got {args.fixed!r}", field="--fixed") from None
    if args.devices < 1 or args.batch < 1:
        raise UserError("must be >= 1", field="--devices/--batch")
    return {"devices": args.devices, "batch": args.batch, "links": Links.from_any(net),
            "options": PlanOptions(optimizer=args.optimizer, zero1=args.zero1),
            "interleaves": tuple(_parse_list(args.interleave, int, "--interleave")),
            "fixed": fixed, "graphs": {}, "latency": {}, "peak": {}}


def items_from_inputs(args, ctx: dict) -> list[dict]:
    """Items from --graphs/--latency/--grid (the workflow form) or --work-items."""
    hbms = [float(x) * GiB for x in _parse_list(args.hbm_gib, float, "--hbm-gib")]
    recs = _parse_list(args.recompute, str, "--recompute")
    for r in recs:
        if r not in ("none", "full"):
            raise UserError(f"unknown recompute mode {r!r}", field="--recompute", fix="none,full")
    if args.work_items:
        try:
            items = json.loads(Path(args.work_items).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read work items ({e})", field="--work-items") from None
        return items
    if not (args.graphs and args.latency):
        raise UserError("needs --graphs and --latency (or --reference-instance / --work-items)",
                        field="place")
    import pandas as pd

    try:
        from phaze.model.serialize import load_graph
    except ImportError:
        raise UserError("the graph stage (phaze.model.serialize) is not installed",
                        field="--graphs") from None
    for g in args.graphs:
        graph = load_graph(g)
        ctx["graphs"][(graph.model, graph.seq, graph.mbs, graph.tp)] = graph
    lat = pd.concat([pd.read_parquet(p) for p in args.latency], ignore_index=True)
    need = {"arch_id", "tp", "layer_index", "fwd_s", "bwd_s"}
    if not need <= set(lat.columns):
        raise UserError(f"latency table lacks {sorted(need - set(lat.columns))}", field="--latency")
    models = {(m, s, b) for (m, s, b, _t) in ctx["graphs"]}
    arch_ids = sorted(lat["arch_id"].astype(str).unique())
    for (m, s, b) in models:
        sub = lat
        for col, val in (("model", m), ("seq", s), ("mbs", b)):
            if col in lat.columns:
                sub = sub[sub[col] == val]
        for (aid, t), grp in sub.groupby(["arch_id", "tp"]):
            ctx["latency"][(str(aid), int(t), m, s, b)] = {
                int(r.layer_index): (float(r.fwd_s), float(r.bwd_s)) for r in grp.itertuples()}
    if args.grid:
        grid = pd.read_parquet(args.grid)
        if "peak_flops" in grid.columns:
            ctx["peak"] = dict(zip(grid["arch_id"].astype(str), grid["peak_flops"].astype(float)))
    items = []
    for (m, s, b) in sorted(models):
        for aid in arch_ids:
            for hbm in hbms:
                for r in recs:
                    items.append({"model": m, "seq": s, "arch_id": aid, "mbs": b,
                                  "hbm_bytes": hbm, "recompute": r})
    return items


def run_place_command(args) -> int:
    from phaze.cli import emit_json

    ctx = build_context(args)
    items = items_from_inputs(args, ctx)
    if not args.output:
        raise UserError("an output parquet is required", field="-o")
    rows = run_items(items, ctx, args.mpi)
    if rows is None:            # non-root MPI rank
        return 0
    write_rows(rows, args.output)
    best = [r for r in rows if r["row_kind"] == "best" and r["feasible"]]
    summary = {"items": len(items), "rows": len(rows), "feasible": len(best),
               "output": str(args.output)}
    if args.json:
        emit_json(summary)
    else:
        print(f"phaze place: {len(items)} items, {len(best)} feasible -> {args.output}",
              file=sys.stderr)
    return 0
