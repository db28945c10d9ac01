"""Parquet schemas of scheduling shards and merged latency tables (docs/cli-contract.md).

Every row carries its identity: the graph it comes from (model, seq, mbs, tp,
sequence_parallel, fused, attention, vocab_pad_multiple, cp, ep) and the arch (arch_id), so
a reader never infers one from a file name. GRAPH_KEY + (arch_id, layer_index) is unique in
a latency table. ep is the expert-parallel size an MoE graph was built for (its routed-
expert GEMMs grouped per local expert; 0 for a dense model or an MoE graph built without
one). A row's core_s is its pass's attention core run alone (what a context-
parallel ring step repeats; sched.adapter.attention_core_times), 0 for graphs of cp 1."""

from __future__ import annotations

import pandas as pd

from phaze.errors import UserError

STATUSES = ("optimal", "time_limit", "heuristic")
# column -> pandas dtype kind ('O' object/string, 'i' int, 'f' float, 'b' bool, 'B' bool
# or None)
GRAPH_KEY = ("model", "seq", "mbs", "tp", "sequence_parallel", "fused", "attention",
             "vocab_pad_multiple", "cp", "ep")
LATENCY_KEY = GRAPH_KEY + ("arch_id", "layer_index")
_IDENTITY = {"model": "O", "seq": "i", "mbs": "i", "tp": "i", "sequence_parallel": "b",
             "fused": "b", "attention": "O", "vocab_pad_multiple": "i", "cp": "i", "ep": "i"}
SHARD_SCHEMA = {
    **_IDENTITY, "arch_id": "O", "layer_repeat": "i", "layer_index": "i", "pass": "O", "layer_kind": "O",
    "latency_s": "f", "lower_bound_s": "f", "core_s": "f", "status": "O", "gap": "f", "solver": "O",
    "formulation": "O", "seconds": "f", "cache_hit": "b", "phaze_version": "O",
}
PASSES = ("fwd", "bwd", "recompute")
LATENCY_SCHEMA = {
    **_IDENTITY, "arch_id": "O", "layer_index": "i", "layer_kind": "O", "layer_repeat": "i",
    **{f"{p}_{c}": k for p in PASSES for c, k in (("s", "f"), ("lower_bound_s", "f"),
                                                  ("core_s", "f"), ("status", "O"),
                                                  ("gap", "f"))},
    "solver": "O", "seconds": "f", "phaze_version": "O",
}


def validate(df: pd.DataFrame, schema: dict, what: str) -> None:
    for col, kind in schema.items():
        if col not in df.columns:
            part = f" of the graph key {GRAPH_KEY}" if col in GRAPH_KEY else ""
            raise UserError(f"missing column {col!r}{part}: written by another phaze version",
                            field=what, fix="regenerate it with this phaze version (rerun "
                            "the step that writes it)")
        k = df[col].dtype.kind
        ok = k == kind or (kind == "f" and k in "fi") or (kind == "O" and k in "OSU") \
            or (kind == "O" and str(df[col].dtype) in ("string", "str")) \
            or (kind == "B" and k in "bO")
        if not ok:
            raise UserError(f"column {col!r} has dtype {df[col].dtype}, expected kind {kind}",
                            field=what,
                            fix="give a table written by phaze (rerun the step that writes it)")
    if "status" in schema and len(df) and not df["status"].isin(STATUSES).all():
        raise UserError("unknown status values", field=what, fix=f"use only {', '.join(STATUSES)}")
    if "pass" in schema and len(df) and not df["pass"].isin(PASSES).all():
        raise UserError(f"pass must be one of {PASSES}", field=what,
                        fix=f"use only {', '.join(PASSES)}")
    if ("latency_s" in schema and len(df)
            and not ((df["latency_s"] >= 0) & (df["lower_bound_s"] <= df["latency_s"] * (1 + 1e-9))).all()):
        raise UserError("latency_s must be >= lower_bound_s >= 0", field=what,
                        fix="give a table written by phaze (rerun the step that writes it)")


def merge_shards(shards: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """One latency table (a row per LATENCY_KEY, the passes side by side) from shards;
    UserError naming the shard on a schema failure, a duplicated or an incomplete key."""
    for df, name in zip(shards, names):
        validate(df, SHARD_SCHEMA, name)
    df = pd.concat(shards, ignore_index=True) if shards else pd.DataFrame(columns=list(SHARD_SCHEMA))
    key = list(LATENCY_KEY)
    dup = df.duplicated(key + ["pass"], keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise UserError(f"duplicate row for {dict(row[key + ['pass']])}", field="shards",
                        fix="pass each shard once")
    by_pass = {p: df[df["pass"] == p].set_index(key) for p in PASSES}
    f = by_pass["fwd"]
    for p in PASSES[1:]:
        if set(by_pass[p].index) != set(f.index):
            raise UserError(f"some {LATENCY_KEY} lack a row of one of the passes {PASSES}",
                            field="shards", fix="regenerate the shards with this phaze version")
    cols = {"layer_kind": f["layer_kind"], "layer_repeat": f["layer_repeat"]}
    for p in PASSES:
        d = by_pass[p].loc[f.index]
        cols.update({f"{p}_s": d["latency_s"], f"{p}_lower_bound_s": d["lower_bound_s"],
                     f"{p}_core_s": d["core_s"], f"{p}_status": d["status"],
                     f"{p}_gap": d["gap"]})
    cols.update(solver=f["solver"],
                seconds=sum(by_pass[p].loc[f.index, "seconds"] for p in PASSES),
                phaze_version=f["phaze_version"])
    out = pd.DataFrame(cols).reset_index().sort_values(key).reset_index(drop=True)
    out = out[list(LATENCY_SCHEMA)]
    validate(out, LATENCY_SCHEMA, "merged")
    return out


def check_against_grid(shards: list[pd.DataFrame], names: list[str], grid: pd.DataFrame,
                       n_chunks: int):
    """Each shard holds exactly the archs of one chunk of the grid (phaze.hw.arch.chunk_of:
    by arch family, GLB size left out) and together they cover the grid: a shard truncated,
    emptied or written for another grid is named (UserError) with the fix."""
    from phaze.hw.arch import grid_chunks

    of = grid_chunks(grid, n_chunks)
    arch_ids = list(of)
    want: dict = {}
    for a, c in of.items():
        want.setdefault(c, set()).add(a)
    covered: set = set()
    fix = "delete it and rerun the workflow (Snakemake reruns its job)"
    for df, name in zip(shards, names):
        got = set(df["arch_id"].astype(str))
        chunks = {of.get(a, -1) for a in got}
        if len(chunks) > 1:
            raise UserError(f"{name} mixes archs of chunks {sorted(chunks)}", field="shards",
                            fix=fix)
        if chunks:
            c = chunks.pop()
            if got != want.get(c, set()):
                miss = sorted(want.get(c, set()) - got)
                extra = sorted(got - want.get(c, set()))
                raise UserError(f"{name} does not hold the archs of chunk {c} of the grid "
                                f"({len(miss)} missing, {len(extra)} not in the grid)",
                                field="shards", fix=fix)
        covered |= got
    missing = set(map(str, arch_ids)) - covered
    if missing:
        empty = [n for df, n in zip(shards, names) if df.empty]
        raise UserError(f"no rows for {len(missing)} archs of the grid"
                        + (f"; empty shards: {', '.join(empty)}" if empty else ""),
                        field="shards", fix=fix)


def schedule_status(lat: pd.DataFrame) -> dict:
    """How a latency table's layer times were obtained: counts of ILPs proven optimal /
    stopped at the time limit / heuristic over every row and pass, the worst relative gap
    and where it is ({"gap", "pass", "arch_id", "layer", "mbs"} or None when every gap is
    0)."""
    st = pd.concat([lat[f"{p}_status"] for p in PASSES], ignore_index=True)
    gaps = pd.concat([lat[f"{p}_gap"] for p in PASSES], ignore_index=True)
    worst = None
    for p in PASSES:
        k = lat[f"{p}_gap"].idxmax()
        g = float(lat.loc[k, f"{p}_gap"])
        if g > 0 and (worst is None or g > worst["gap"]):
            worst = {"gap": g, "pass": p, "arch_id": str(lat.loc[k, "arch_id"]),
                     "layer": f"{lat.loc[k, 'layer_kind']} {int(lat.loc[k, 'layer_index'])}",
                     "mbs": int(lat.loc[k, "mbs"])}
    return {"ilps": int(len(st)), "optimal": int((st == "optimal").sum()),
            "time_limit": int((st == "time_limit").sum()),
            "heuristic": int((~st.isin(["optimal", "time_limit"])).sum()),
            "worst_gap": float(gaps.max()) if len(gaps) else 0.0, "worst": worst}
