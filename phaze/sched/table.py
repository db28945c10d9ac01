"""Parquet schemas of scheduling shards and merged latency tables (docs/cli-contract.md)."""

from __future__ import annotations

import pandas as pd

from phaze.errors import UserError

STATUSES = ("optimal", "time_limit", "heuristic")
# column -> pandas dtype kind ('O' object/string, 'i' int, 'f' float, 'b' bool)
SHARD_SCHEMA = {
    "arch_id": "O", "tp": "i", "layer_index": "i", "pass": "O", "layer_kind": "O",
    "latency_s": "f", "lower_bound_s": "f", "status": "O", "gap": "f", "solver": "O",
    "formulation": "O", "seconds": "f", "cache_hit": "b", "phaze_version": "O",
}
LATENCY_SCHEMA = {
    "arch_id": "O", "tp": "i", "layer_index": "i", "layer_kind": "O", "fwd_s": "f",
    "bwd_s": "f", "fwd_lower_bound_s": "f", "bwd_lower_bound_s": "f", "fwd_status": "O",
    "bwd_status": "O", "fwd_gap": "f", "bwd_gap": "f", "solver": "O", "seconds": "f",
    "phaze_version": "O",
}


def validate(df: pd.DataFrame, schema: dict, what: str) -> None:
    for col, kind in schema.items():
        if col not in df.columns:
            raise UserError(f"missing column {col!r}", field=what, fix="regenerate it with "
                            "this phaze version")
        k = df[col].dtype.kind
        ok = k == kind or (kind == "f" and k in "fi") or (kind == "O" and k in "OSU") \
            or (kind == "O" and str(df[col].dtype) in ("string", "str"))
        if not ok:
            raise UserError(f"column {col!r} has dtype {df[col].dtype}, expected kind {kind}",
                            field=what)
    if "status" in schema and len(df) and not df["status"].isin(STATUSES).all():
        raise UserError("unknown status values", field=what)
    if "pass" in schema and len(df) and not df["pass"].isin(("fwd", "bwd")).all():
        raise UserError("pass must be fwd or bwd", field=what)
    if ("latency_s" in schema and len(df)
            and not ((df["latency_s"] >= 0) & (df["lower_bound_s"] <= df["latency_s"] * (1 + 1e-9))).all()):
        raise UserError("latency_s must be >= lower_bound_s >= 0", field=what)


def merge_shards(shards: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    for df, name in zip(shards, names):
        validate(df, SHARD_SCHEMA, name)
    df = pd.concat(shards, ignore_index=True) if shards else pd.DataFrame(columns=list(SHARD_SCHEMA))
    key = ["arch_id", "tp", "layer_index", "pass"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise UserError(f"duplicate row for {dict(row[key])}", field="shards",
                        fix="pass each shard once")
    f = df[df["pass"] == "fwd"].set_index(key[:-1])
    b = df[df["pass"] == "bwd"].set_index(key[:-1])
    if set(f.index) != set(b.index):
        raise UserError("some (arch_id, tp, layer_index) lack a fwd or bwd row", field="shards")
    b = b.loc[f.index]
    out = pd.DataFrame({
        "layer_kind": f["layer_kind"], "fwd_s": f["latency_s"], "bwd_s": b["latency_s"],
        "fwd_lower_bound_s": f["lower_bound_s"], "bwd_lower_bound_s": b["lower_bound_s"],
        "fwd_status": f["status"], "bwd_status": b["status"], "fwd_gap": f["gap"],
        "bwd_gap": b["gap"], "solver": f["solver"], "seconds": f["seconds"] + b["seconds"],
        "phaze_version": f["phaze_version"],
    }).reset_index().sort_values(key[:-1]).reset_index(drop=True)
    validate(out, LATENCY_SCHEMA, "merged")
    return out
