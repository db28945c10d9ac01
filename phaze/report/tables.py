"""Read placement tables (`phaze place` output, docs/cli-contract.md) into one frame.

Columns the report uses (others are carried along):
  model, seq          from the table, else from the file name {model}_s{seq}.parquet
  arch_id, mbs, hbm_bytes (or hbm_gib), recompute
  strategy            "optimised" (DP plan) | "fixed" (published Megatron p x d x t);
                      read from `row_kind` (phaze place: best | fixed), `strategy`,
                      `plan_kind` or `kind`, else a boolean `fixed`; rows without any of
                      them are "optimised"
  feasible            False marks a row without a plan (as does a NaN samples_per_s)
  p, d, t, time_per_batch_s, samples_per_s, tokens_per_s, mfu, memory_per_device_bytes
  compute_s, bubble_s, p2p_s, dp_sync_s, tp_s (phaze place) or breakdown_*_s
                      time per batch split into parts (optional)
  stage_memory_bytes  memory per pipeline stage (list or JSON list, optional)
  reason              why a row has no plan (optional; NaN samples_per_s = infeasible)
  single_chip_latency_s  for the Spotlight-style pick (optional)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from phaze.errors import UserError
from phaze.units import GiB

_NAME = re.compile(r"^(?P<model>.+)_s(?P<seq>\d+)$")


def _strategy(df: pd.DataFrame) -> pd.Series:
    for col in ("row_kind", "strategy", "plan_kind", "kind"):
        if col in df.columns:
            s = df[col].astype(str).str.lower()
            return s.where(~s.str.startswith("fix"), "fixed").where(
                s.str.startswith("fix"), "optimised")
    if "fixed" in df.columns:
        return df["fixed"].astype(bool).map({True: "fixed", False: "optimised"})
    return pd.Series("optimised", index=df.index)


def load_place(paths) -> pd.DataFrame:
    frames = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UserError(f"no such file {path}", field="--place",
                            fix="run `phaze place` first or check the path")
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise UserError(f"{path} is not a parquet table ({e.__class__.__name__})",
                            field="--place") from None
        m = _NAME.match(path.stem)
        if "model" not in df.columns:
            if not m:
                raise UserError(f"{path.name} has no model column and its name is not "
                                "{model}_s{seq}.parquet", field="--place")
            df["model"] = m.group("model")
        if "seq" not in df.columns:
            if not m:
                raise UserError(f"{path.name} has no seq column", field="--place")
            df["seq"] = int(m.group("seq"))
        if df.empty:  # keep the (model, seq) so the report can say nothing fits
            df = pd.DataFrame({"model": [m.group("model") if m else ""],
                               "seq": [int(m.group("seq")) if m else 0],
                               "arch_id": [None], "samples_per_s": [np.nan]})
        for col in ("arch_id", "samples_per_s"):
            if col not in df.columns:
                raise UserError(f"{path.name} lacks column {col!r}", field="--place",
                                fix="regenerate it with `phaze place`")
        df["source"] = str(path)
        frames.append(df)
    if not frames:
        raise UserError("no placement tables given", field="--place")
    out = pd.concat(frames, ignore_index=True, sort=False)
    out["strategy"] = _strategy(out)
    out["samples_per_s"] = pd.to_numeric(out["samples_per_s"], errors="coerce")
    out.loc[~(out["samples_per_s"] > 0), "samples_per_s"] = np.nan
    if "feasible" in out.columns:
        out.loc[out["feasible"].fillna(False).astype(bool) == False, "samples_per_s"] = np.nan  # noqa: E712
    if "hbm_bytes" not in out.columns and "hbm_gib" in out.columns:
        out["hbm_bytes"] = out["hbm_gib"].astype(float) * GiB
    if "stage_memory_bytes" in out.columns:
        out["stage_memory_bytes"] = out["stage_memory_bytes"].map(_as_list)
    out["seq"] = out["seq"].astype(int)
    out["model"] = out["model"].astype(str)
    return out


def _as_list(v):
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return []
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    return [float(x) for x in v]


def load_grid(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file {path}", field="--grid",
                        fix="run `phaze arch grid` first or check the path")
    grid = pd.read_parquet(path)
    for col in ("arch_id", "area_mm2"):
        if col not in grid.columns:
            raise UserError(f"{path.name} lacks column {col!r}", field="--grid")
    grid["arch_id"] = grid["arch_id"].astype(str)
    return grid
