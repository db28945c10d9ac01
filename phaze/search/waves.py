"""Bound pruning in waves, as the workflow runs it (docs/workflow.md#pruned-search).

The in-process `strategies.pruned` evaluates archs one by one in bound order; the workflow
cannot (each evaluation is many jobs), so it prunes in two waves per (model, seq):

  bound pass   every arch: bound_samples_per_s = the placement DP fed with lower bounds
               on its layer times (SweepProblem.bound, no ILP) and spotlight_lb_s = a lower
               bound on its Spotlight-style score (baselines.spotlight_scores of the lower
               bounds, TP width 1); wave 1 = the `wave1_archs` archs with the best bounds,
               the TPUv4-like chip and the arch with the smallest spotlight_lb_s.
  wave 1       ILPs + DP of wave 1 (the workflow's own schedule/merge/place jobs).
  survivors    incumbent = wave 1's best samples/s; wave 2 = every other arch whose bound
               is >= the incumbent, or whose spotlight_lb_s is <= wave 1's smallest exact
               Spotlight score.
  wave 2       ILPs + DP of the survivors; the placement table = wave 1 + wave 2 rows.

Exact: an arch outside both waves has a true throughput <= its bound < the incumbent <=
the best design (the DP's time per batch is monotone in every layer time,
tests/test_search_bound.py), and a true Spotlight score >= its spotlight_lb_s > an exact
score already seen, so the best design, the TPUv4-like baselines and the Spotlight pick
are those of the exhaustive sweep. Ties are kept (relative slack 1e-9), never pruned.

The waves table (WAVES_SCHEMA, one row per arch, keyed by model, seq, arch_id): the bounds
and the wave of every arch (0: pruned, never scheduled).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from phaze.errors import UserError

WAVES_KEY = ("model", "seq", "arch_id")
WAVES_SCHEMA = {"model": "O", "seq": "i", "arch_id": "O", "area_mm2": "f",
                "bound_samples_per_s": "f", "spotlight_lb_s": "f", "wave": "i"}
SLACK = 1e-9
SLICE = 512          # archs whose scheduling problems the bound pass holds at once


def spotlight_lower_bound(sp, times: dict) -> float:
    """Lower bound (s per sample) on an arch's Spotlight-style score (baselines.
    spotlight_scores: sum over layer instances of (fwd + bwd) / mbs at TP width 1, best
    mbs) from lower bounds on its layer times; NaN when the sweep has no TP width 1."""
    best = math.nan
    for (mbs, tp, seqpar), g in sp.graphs.items():
        if tp != 1 or seqpar:
            continue
        s = sum((times[(mbs, 1, False, li, "fwd")] + times[(mbs, 1, False, li, "bwd")])
                * layer.repeat for li, layer in enumerate(g.layers)) / mbs
        if not (s >= best):
            best = s
    return best


def bound_table(spec, grid: pd.DataFrame, wave1_archs: int) -> pd.DataFrame:
    """The bound pass of one (model, seq): WAVES_SCHEMA rows for every arch of `grid`,
    wave 1 marked, the others 0 (decided by `survivors`). `spec` is a pipeline.SweepSpec."""
    from phaze.search.baselines import tpuv4_arch_id
    from phaze.search.pipeline import SweepProblem

    rows, memo = [], {}
    for start in range(0, len(grid), SLICE):      # bounded memory: problems of SLICE archs
        sp = SweepProblem(spec, grid.iloc[start:start + SLICE])
        sp._bounds = memo                          # one DP per distinct input, all slices
        for arch_id, area in sp.archs():
            times = sp.lower_times(arch_id)
            rows.append({"model": spec.model, "seq": int(spec.seq), "arch_id": arch_id,
                         "area_mm2": float(area),
                         "bound_samples_per_s": float(sp.bound(arch_id, times)),
                         "spotlight_lb_s": float(spotlight_lower_bound(sp, times)), "wave": 0})
    df = pd.DataFrame(rows, columns=list(WAVES_SCHEMA)).astype({"seq": "int64", "wave": "int64"})
    first = set(_best_bounds(df, wave1_archs))
    tpu = tpuv4_arch_id(grid)
    if tpu is not None:
        first.add(tpu)
    spot = df[np.isfinite(df["spotlight_lb_s"])]
    if len(spot):
        first.add(spot.sort_values(["spotlight_lb_s", "area_mm2", "arch_id"],
                                   kind="mergesort")["arch_id"].iloc[0])
    df.loc[df["arch_id"].isin(first), "wave"] = 1
    check(df, "bound table")
    return df


def _best_bounds(df: pd.DataFrame, k: int) -> list[str]:
    """The k archs with the largest finite positive bounds (ties: smaller area, then id)."""
    ok = df[np.isfinite(df["bound_samples_per_s"]) & (df["bound_samples_per_s"] > 0)]
    ok = ok.assign(_neg=-ok["bound_samples_per_s"])
    return list(ok.sort_values(["_neg", "area_mm2", "arch_id"], kind="mergesort")
                ["arch_id"].iloc[:k])


def survivors(waves: pd.DataFrame, place: pd.DataFrame, latency: pd.DataFrame | None
              ) -> tuple[pd.DataFrame, dict]:
    """Wave 2 from wave 1's placement rows (phaze.place.table) and merged latency tables:
    (the waves table with wave 2 marked, {incumbent_samples_per_s, spotlight_min_s}).
    UserError when a wave-1 arch beats its own bound (invalid lower bounds) or the tables
    do not hold exactly wave 1's archs."""
    from phaze.search.baselines import spotlight_scores

    first = set(waves.loc[waves["wave"] == 1, "arch_id"])
    got = set(place["arch_id"].astype(str))
    if got != first:
        raise UserError(f"the wave-1 placement table holds {len(got)} archs, wave 1 has "
                        f"{len(first)}", field="--place",
                        fix="rerun the wave-1 jobs of this bound table")
    best = place[(place["row_kind"] == "best") & place["feasible"]]
    per_arch = best.groupby(best["arch_id"].astype(str))["samples_per_s"].max()
    bounds = waves.set_index("arch_id")["bound_samples_per_s"]
    for arch_id, thr in per_arch.items():
        if not thr <= bounds[arch_id] * (1 + SLACK):
            raise UserError(f"arch {arch_id} reaches {thr:.6g} samples/s above its bound "
                            f"{bounds[arch_id]:.6g}: the lower bounds on layer times are "
                            "not valid", field="bound",
                            fix="report this; run with search.method: exhaustive meanwhile")
    incumbent = float(per_arch.max()) if len(per_arch) else math.nan
    spot_min = math.nan
    if latency is not None and len(latency):
        if "layer_repeat" in latency.columns:      # a merged table's name (sched.table)
            latency = latency.rename(columns={"layer_repeat": "repeat"})
        scores = spotlight_scores(latency)
        scores = scores[np.isfinite(scores.to_numpy(dtype=float))]
        if len(scores):
            spot_min = float(scores.min())
    out = waves.copy()
    out.loc[(out["wave"] != 1) & may_matter(waves, incumbent, spot_min), "wave"] = 2
    check(out, "waves table")
    return out, {"incumbent_samples_per_s": incumbent, "spotlight_min_s": spot_min}


def may_matter(waves: pd.DataFrame, incumbent: float, spot_min: float) -> pd.Series:
    """Archs that could still be the best design (bound >= incumbent; any feasible bound
    when there is no incumbent) or the Spotlight pick (spotlight_lb_s <= spot_min; any
    finite one when spot_min is NaN). Ties kept (relative slack SLACK)."""
    b = waves["bound_samples_per_s"]
    can_win = np.isfinite(b) & (b > 0)
    if math.isfinite(incumbent):
        can_win &= b >= incumbent * (1 - SLACK)
    lb = waves["spotlight_lb_s"]
    near_spot = lb <= spot_min * (1 + SLACK) if math.isfinite(spot_min) else np.isfinite(lb)
    return can_win | near_spot


def check(df: pd.DataFrame, what: str) -> None:
    """Schema, waves in {0, 1, 2} and one row per WAVES_KEY (UserError naming `what`)."""
    from phaze.sched.table import validate

    validate(df, WAVES_SCHEMA, what)
    if len(df) and not df["wave"].isin((0, 1, 2)).all():
        raise UserError("wave must be 0, 1 or 2", field=what)
    if df.duplicated(list(WAVES_KEY)).any():
        raise UserError("repeats an arch", field=what)


def read_waves(path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"no such file {path}", field="--waves",
                        fix="run `phaze prune-bound` first or check the path") from None
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path} is not a parquet table ({e.__class__.__name__})",
                        field="--waves") from None
    check(df, f"--waves {path}")
    return df


def wave_grid(grid: pd.DataFrame, waves: pd.DataFrame, wave: int) -> pd.DataFrame:
    """The grid rows of one wave's archs (the wave's jobs take it as their --grid)."""
    ids = set(waves.loc[waves["wave"] == wave, "arch_id"])
    return grid[grid["arch_id"].astype(str).isin(ids)].reset_index(drop=True)


def summary_line(waves: pd.DataFrame) -> str:
    """What a pruned run evaluated, for the report and logs."""
    n = len(waves)
    w1, w2 = int((waves["wave"] == 1).sum()), int((waves["wave"] == 2).sum())
    return (f"{w1 + w2} of {n} archs evaluated exactly (wave 1: {w1}, wave 2: {w2}); "
            f"{n - w1 - w2} pruned by their bound")
