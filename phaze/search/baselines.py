"""Baselines the co-designed chip is compared with, under the same cost model and DP.

- TPUv4-like chip (docs/reference.md#arch-space): 8 TCs of 128x128, 2 VCs of 128 lanes,
  128 MiB GLB, 1.05 GHz. Evaluated with the DP's optimised plan and with the published
  fixed Megatron strategy of the model (docs/reference.md#models).
- Spotlight-style pick (Spotlight, HPCA 2023, as PHAZE uses it): the arch that minimises
  the single-chip latency of the model's layers, blind to placement, then placed by the DP.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from phaze.units import MiB

TPUV4_LIKE = dict(n_tc=8, tc_rows=128, tc_cols=128, n_vc=2, vc_lanes=128, glb_bytes=128 * MiB)

# Published fixed "Megatron-style" strategies (p, d, t), docs/reference.md#models
# (PHAZE 1.0, ICML 2024). Keys are model names with everything but [a-z0-9] removed.
MEGATRON_FIXED = {
    "opt350m": (12, 85, 1),
    "bertlarge": (8, 128, 1),
    "gpt2xl": (32, 32, 1),
    "megatrongpt254": (8, 32, 4),
    "megatrongpt272": (8, 16, 8),
    "gpt3175b": (32, 8, 4),
    "megatrongpt3175b": (32, 8, 4),
    "llama27b": (8, 128, 1),
}


def model_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def megatron_fixed(model: str) -> tuple[int, int, int] | None:
    return MEGATRON_FIXED.get(model_key(model))


def tpuv4_arch_id(grid: pd.DataFrame) -> str | None:
    """arch_id of the TPUv4-like chip in the grid, or None when the grid lacks it."""
    m = np.ones(len(grid), dtype=bool)
    for col, val in TPUV4_LIKE.items():
        if col not in grid.columns:
            return None
        m &= grid[col].to_numpy() == val
    ids = grid.loc[m, "arch_id"].tolist()
    return str(ids[0]) if ids else None


def spotlight_scores(latency: pd.DataFrame) -> pd.Series:
    """Single-chip latency per sample of the whole model, per arch, at TP width 1, best
    microbatch: sum over layer instances of (fwd_s + bwd_s) / mbs. `latency` has arch_id,
    mbs, fwd_s, bwd_s and optionally tp and cp (only tp == 1 and cp == 1 kept: one chip
    runs the whole sequence), ep (only a model's least kept: one chip holds every expert,
    ep 1 for an MoE model, 0 for a dense one, when the sweep has it) and repeat (instances
    of the layer kind; 1 when absent). Returns seconds per sample indexed by arch_id."""
    lat = latency
    for col in ("tp", "cp"):
        if col in lat.columns:
            lat = lat[lat[col] == 1]
    if "ep" in lat.columns and len(lat):
        least = lat.groupby("model")["ep"].transform("min") if "model" in lat.columns \
            else lat["ep"].min()
        lat = lat[lat["ep"] == least]
    rep = lat["repeat"] if "repeat" in lat.columns else 1.0
    per = lat.assign(_s=(lat["fwd_s"] + lat["bwd_s"]) * rep)
    per_mbs = per.groupby(["arch_id", "mbs"], sort=True)["_s"].sum().reset_index()
    per_mbs["_per_sample"] = per_mbs["_s"] / per_mbs["mbs"]
    return per_mbs.groupby("arch_id")["_per_sample"].min()


def spotlight_pick(scores: pd.Series, grid: pd.DataFrame | None = None) -> str | None:
    """The arch with the smallest single-chip latency (ties: smaller area, then id)."""
    s = scores[np.isfinite(scores.to_numpy(dtype=float))]
    if s.empty:
        return None
    df = s.rename("score").reset_index()
    if grid is not None and "area_mm2" in grid.columns:
        df = df.merge(grid[["arch_id", "area_mm2"]], on="arch_id", how="left")
    else:
        df["area_mm2"] = 0.0
    df = df.sort_values(["score", "area_mm2", "arch_id"], kind="mergesort")
    return str(df["arch_id"].iloc[0])
