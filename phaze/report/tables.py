"""Read placement tables (`phaze place` output, checked against phaze.place.table's
PLACE_SCHEMA) into one frame for the report. Every identity (model, seq, arch, mbs, HBM,
recompute, row kind) comes from the table's own columns, never from a file name.

Added columns:
  strategy   "optimised" (row_kind best: the DP's plan) | "fixed" (the configured p x d x t)
  source     the file a row came from
samples_per_s is NaN on rows without a feasible plan.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from phaze.errors import UserError
from phaze.place.table import PLACE_KEY


def load_place(paths) -> pd.DataFrame:
    from phaze.place.table import read_place

    frames = []
    for p in paths:
        df = read_place(p)
        if df.empty:
            raise UserError(f"{p} holds no rows", field="--place",
                            fix="rerun `phaze place` (it writes a row per arch, feasible or not)")
        frames.append(df.assign(source=str(p)))
    if not frames:
        raise UserError("no placement tables given", field="--place",
                        fix="give --place FILE (a table from `phaze place`)")
    out = pd.concat(frames, ignore_index=True, sort=False)
    # the same rows twice (a table given twice, or a copy of it): every column alike but the
    # file and the DP's timing. Tables of one (model, seq) that differ (e.g. one per CP
    # size) are kept: the report takes the best row of each key over them.
    # (all columns compared only among rows whose key repeats: the rest cannot be copies)
    same = [c for c in out.columns if c not in ("source", "item", "solve_seconds")]
    dup = out.duplicated(list(PLACE_KEY), keep=False)
    if dup.any():
        rep = out[dup]
        dup = pd.Series(False, index=out.index)
        dup[rep.index] = rep.astype({c: str for c in same}).duplicated(same, keep=False)
    if dup.any():
        first = out[dup].iloc[0]
        where = sorted(set(out.loc[dup & (out[list(PLACE_KEY)] == first[list(PLACE_KEY)])
                                   .all(axis=1), "source"]))
        key = {k: getattr(first[k], "item", lambda v=first[k]: v)() for k in PLACE_KEY}
        who = f"{where[0]} is given twice: it repeats" if len(where) == 1 else \
            f"{' and '.join(where)} repeat"
        raise UserError(f"{who} the row {key}", field="--place",
                        fix="give each (model, seq)'s placement table once")
    return load_place_df(out)


def load_place_df(out: pd.DataFrame) -> pd.DataFrame:
    """Report columns of a (validated) placement frame."""
    out = out.copy()
    out["strategy"] = np.where(out["row_kind"] == "fixed", "fixed", "optimised")
    out["samples_per_s"] = pd.to_numeric(out["samples_per_s"], errors="coerce")
    out.loc[~(out["samples_per_s"] > 0), "samples_per_s"] = np.nan
    out.loc[~out["feasible"].astype(bool), "samples_per_s"] = np.nan
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
    from phaze.hw.grid import read_grid

    return read_grid(path)
