"""The placement table (`phaze place` output): one row per work item and row kind, keyed
by PLACE_KEY, checked against PLACE_SCHEMA when written and when read.
memory_{weights,grads,optimizer,activations,buffers}_bytes split the busiest device's
memory_per_device_bytes; stage_memory is a JSON list, per pipeline rank, of those parts
(phaze.place.plan.memory_parts)."""

from __future__ import annotations

import pandas as pd

from phaze.errors import UserError
from phaze.sched.table import validate

PLACE_KEY = ("model", "seq", "arch_id", "mbs", "hbm_bytes", "recompute", "row_kind")
# column -> dtype kind ('O' str, 'i' int, 'f' float (NaN where a row has no plan), 'b' bool,
# 'B' bool or None)
PLACE_SCHEMA = {
    "item": "i", "model": "O", "seq": "i", "arch_id": "O", "mbs": "i", "hbm_bytes": "f",
    "recompute": "O", "row_kind": "O", "feasible": "b", "p": "f", "d": "f", "t": "f",
    "sequence_parallel": "B", "fused": "B", "interleave": "f", "stages": "O",
    "time_per_batch_s": "f", "samples_per_s": "f", "tokens_per_s": "f", "mfu": "f",
    "memory_per_device_bytes": "f", "memory_weights_bytes": "f", "memory_grads_bytes": "f",
    "memory_optimizer_bytes": "f", "memory_activations_bytes": "f",
    "memory_buffers_bytes": "f", "stage_memory": "O", "compute_s": "f", "bubble_s": "f", "p2p_s": "f",
    "dp_sync_s": "f", "optimizer_s": "f", "tp_s": "f", "ep": "f", "cp": "f", "zero_stage": "f", "method": "O", "solve_seconds": "f", "phaze_version": "O",
}
ROW_KINDS = ("best", "fixed")


def place_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a typed, validated placement table."""
    df = pd.DataFrame(rows, columns=list(PLACE_SCHEMA))
    floats = [c for c, k in PLACE_SCHEMA.items() if k == "f"]
    df[floats] = df[floats].astype(float)
    df = df.astype({"item": "int64", "seq": "int64", "mbs": "int64", "feasible": bool})
    check(df, "place table")
    return df


def check(df: pd.DataFrame, what: str) -> None:
    """Schema, row kinds and key uniqueness (UserError naming `what`)."""
    validate(df, PLACE_SCHEMA, what)
    if len(df) and not df["row_kind"].isin(ROW_KINDS).all():
        raise UserError(f"row_kind must be one of {ROW_KINDS}", field=what,
                        fix="give a table written by `phaze place`")
    dup = df.duplicated(list(PLACE_KEY), keep=False)
    if dup.any():
        raise UserError(f"repeats the row {dict(df[dup].iloc[0][list(PLACE_KEY)])}", field=what,
                        fix="give a table written by `phaze place`, without the repeated row")


def read_place(path) -> pd.DataFrame:
    from phaze.files import read_parquet

    df = read_parquet(path, "--place", fix="run `phaze place` first or check the path")
    check(df, f"--place {path}")
    return df
