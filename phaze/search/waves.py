"""Bound pruning in waves, as the workflow runs it (docs/workflow.md#pruned-search).

The in-process `strategies.pruned` evaluates archs one by one in bound order; the workflow
cannot (each evaluation is many jobs), so it prunes in two waves per (model, seq):

  bound pass   every arch: lower bounds on its layer times (no ILP), from them a DP-free
               bound per microbatch size (the "work bound": plan_floor.PlanFloor, per
               (d, p) the compute, bubble and DP-sync floors under the memory floor; the
               reference DP keeps the plain work_bounds) and spotlight_lb_s, a lower bound
               on its Spotlight-style score (baselines.spotlight_scores of the lower
               bounds, TP width 1); then, in decreasing work bound, the DP bound (the
               placement DP fed with the lower bounds, SweepProblem.bound) until the
               `wave1_archs` best DP bounds are certain. bound_samples_per_s is the DP
               bound where computed (bound_dp), else the work bound (>= the DP bound,
               checked on every arch whose DP bound is computed). Wave 1 = the `wave1_archs` best DP bounds, the
               TPUv4-like chip and the arch with the smallest spotlight_lb_s.
  wave 1       ILPs + DP of wave 1 (the workflow's own schedule/merge/place jobs).
  survivors    incumbent = wave 1's best samples/s; the DP bound of every arch whose work
               bound is >= the incumbent; wave 2 = every other arch whose bound is >= the
               incumbent, or whose spotlight_lb_s is <= wave 1's smallest exact Spotlight
               score.
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
from phaze.search.plan_floor import PlanFloor

WAVES_KEY = ("model", "seq", "arch_id")
# bound_dp: bound_samples_per_s is the DP bound (its microbatch sizes whose work bound is
# below the threshold it was computed for counted with that work bound); else the work bound
WAVES_SCHEMA = {"model": "O", "seq": "i", "arch_id": "O", "area_mm2": "f",
                "peak_flops": "f", "bound_samples_per_s": "f", "bound_dp": "b",
                "spotlight_lb_s": "f", "wave": "i"}
SLACK = 1e-9
SLICE = 512          # archs whose scheduling problems the bound pass holds at once


def spotlight_lower_bound(sp, times: dict) -> float:
    """Lower bound (s per sample) on an arch's Spotlight-style score (baselines.
    spotlight_scores: sum over layer instances of (fwd + bwd) / mbs at TP width 1, the
    least ep, best mbs) from lower bounds on its layer times; NaN when the sweep has no TP
    width 1."""
    best = math.nan
    least_ep = min(key[4] for key in sp.graphs)
    for key, g in sp.graphs.items():
        if key[1:] != (1, False, 1, least_ep):
            continue
        mbs = key[0]
        s = sum((times[(*key, li, "fwd")] + times[(*key, li, "bwd")])
                * layer.repeat for li, layer in enumerate(g.layers)) / mbs
        if not (s >= best):
            best = s
    return best


def work_bound(sp, times: dict) -> float:
    """max over microbatch sizes of work_bounds(sp, times) (see there)."""
    return max(work_bounds(sp, times).values(), default=0.0)


def work_bounds(sp, times: dict) -> dict:
    """Upper bound on samples/s without the DP. The DP's time per batch is >= M x the
    busiest device's load (phaze.place.plan: (M + (p - 1) / v) x max device load + ...),
    a device's load is >= its share 1/p of the chain's forward + backward times, M =
    ceil(batch / (d mbs)) and p d t cp <= devices, so samples/s <= devices x mbs / (t cp W)
    with W = sum over layer instances of (fwd + bwd) at that (mbs, t, sp, cp, ep) (a
    device's seq / cp chunk; the ring steps of cp > 1 and the all-to-alls of ep > 1 only
    add); the max over the sweep's graphs of each microbatch size. Returns {mbs: samples/s}
    (inf when W = 0)."""
    devices = sp.spec.settings.placement.devices
    best: dict = {}
    for key, g in sp.graphs.items():
        mbs, tp, cp = key[0], key[1], key[3]
        w = sum((times[(*key, li, "fwd")] + times[(*key, li, "bwd")])
                * layer.repeat for li, layer in enumerate(g.layers))
        best[mbs] = max(best.get(mbs, 0.0),
                        math.inf if w <= 0 else devices * mbs / (tp * cp * w))
    return best


class _Bounds:
    """Lower-bound layer times of every arch (one array per arch over shared keys) and
    their DP bounds on demand, the scheduling problems built SLICE archs at a time."""

    def __init__(self, spec, grid: pd.DataFrame):
        from phaze.search.pipeline import SweepProblem

        self.rows, self.times, self.keys, self.sp, memo = [], [], None, None, {}
        self.floor = None
        for start in range(0, len(grid), SLICE):
            sp = SweepProblem(spec, grid.iloc[start:start + SLICE])
            sp._bounds = memo                      # one DP per distinct input, all slices
            if self.floor is None and spec.dp == "default":
                self.floor = PlanFloor(sp)         # arch-independent: built once
            self.sp = sp
            for arch_id, area in sp.archs():
                times = sp.lower_times(arch_id)
                if self.keys is None:
                    self.keys = list(times)
                self.times.append(np.array([times[k] for k in self.keys]))
                self.rows.append({"model": spec.model, "seq": int(spec.seq),
                                  "arch_id": arch_id, "area_mm2": float(area),
                                  "peak_flops": sp._peak_of(arch_id),
                                  "bound_samples_per_s": float(max(
                                      self.work_bounds(times).values(), default=0.0)),
                                  "bound_dp": False,
                                  "spotlight_lb_s": float(spotlight_lower_bound(sp, times)),
                                  "wave": 0})
        self.index = {r["arch_id"]: i for i, r in enumerate(self.rows)}

    def work_bounds(self, times: dict) -> dict:
        """{mbs: DP-free bound}: plan_floor.PlanFloor for the default-mode DP, else (the
        reference DP) work_bounds."""
        if self.floor is not None:
            return self.floor.samples_per_s(times)
        return work_bounds(self.sp, times)

    def dp_bound(self, arch_id: str, threshold: float = 0.0) -> float:
        """The arch's bound with the DP run only for the microbatch sizes whose work bound
        reaches `threshold`: max(DP bound over those, work bound of the others). Below
        `threshold` exactly when the full DP bound is; equal to it when threshold <= 0.
        UserError when a work bound is below the DP bound of its microbatch sizes."""
        i = self.index[arch_id]
        times = dict(zip(self.keys, self.times[i]))
        works = self.work_bounds(times)
        run = tuple(m for m, w in works.items() if w >= threshold * (1 - SLACK))
        rest = max((w for m, w in works.items() if m not in run), default=math.nan)
        b = float(self.sp.bound_of(times, self.rows[i]["peak_flops"], run)) if run else math.nan
        top = max((works[m] for m in run), default=math.nan)
        if b > top * (1 + SLACK):
            raise UserError(f"arch {arch_id}: work bound {top:.6g} below its DP bound "
                            f"{b:.6g} samples/s", field="bound",
                            fix="report this; run with search.method: exhaustive meanwhile")
        return float(np.nanmax([b, rest])) if not (math.isnan(b) and math.isnan(rest)) \
            else math.nan


def bound_table(spec, grid: pd.DataFrame, wave1_archs: int) -> pd.DataFrame:
    """The bound pass of one (model, seq): WAVES_SCHEMA rows for every arch of `grid`,
    wave 1 marked, the others 0 (decided by `survivors`). `spec` is a pipeline.SweepSpec."""
    from phaze.search.baselines import tpuv4_arch_id

    bounds = _Bounds(spec, grid)
    df = pd.DataFrame(bounds.rows, columns=list(WAVES_SCHEMA)) \
        .astype({"seq": "int64", "wave": "int64", "bound_dp": bool})
    # DP bounds in decreasing work bound, until no further arch can enter the top k
    order = df.assign(_neg=-df["bound_samples_per_s"]) \
        .sort_values(["_neg", "area_mm2", "arch_id"], kind="mergesort").index
    found: list[float] = []
    for i in order:
        w = df.at[i, "bound_samples_per_s"]
        if not (w > 0) or (len(found) >= wave1_archs and w < found[wave1_archs - 1]):
            break
        kth = found[wave1_archs - 1] if len(found) >= wave1_archs else 0.0
        b = bounds.dp_bound(df.at[i, "arch_id"], kth)
        df.at[i, "bound_samples_per_s"], df.at[i, "bound_dp"] = b, True
        if math.isfinite(b) and b > 0:
            found = sorted(found + [b], reverse=True)
    first = set(_best_bounds(df[df["bound_dp"]], wave1_archs))
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


def refine(waves: pd.DataFrame, incumbent: float, spec, grid: pd.DataFrame) -> pd.DataFrame:
    """The waves table with the DP bound, thresholded at `incumbent`, of every arch outside
    wave 1 whose bound is >= `incumbent`: the only ones the DP bound can still prune or
    keep. That includes archs the bound pass already gave a DP bound: it ran the DP only
    for the microbatch sizes whose work bound reached its own (higher) threshold and kept
    the work bound of the others, which may still reach the incumbent. With no incumbent
    (NaN): the DP bound of every arch that has none. `spec`/`grid` as for bound_table."""
    b = waves["bound_samples_per_s"]
    need = (waves["wave"] != 1) & np.isfinite(b) & (b > 0)
    if math.isfinite(incumbent):
        need &= b >= incumbent * (1 - SLACK)
    else:
        need &= ~waves["bound_dp"]
    out = waves.copy()
    if not need.any():
        return out
    ids = set(out.loc[need, "arch_id"])
    bounds = _Bounds(spec, grid[grid["arch_id"].astype(str).isin(ids)])
    for i in out.index[need]:
        out.at[i, "bound_samples_per_s"] = bounds.dp_bound(
            out.at[i, "arch_id"], incumbent if math.isfinite(incumbent) else 0.0)
        out.at[i, "bound_dp"] = True
    return out


def _best_bounds(df: pd.DataFrame, k: int) -> list[str]:
    """The k archs with the largest finite positive bounds (ties: smaller area, then id)."""
    ok = df[np.isfinite(df["bound_samples_per_s"]) & (df["bound_samples_per_s"] > 0)]
    ok = ok.assign(_neg=-ok["bound_samples_per_s"])
    return list(ok.sort_values(["_neg", "area_mm2", "arch_id"], kind="mergesort")
                ["arch_id"].iloc[:k])


def survivors(waves: pd.DataFrame, place: pd.DataFrame, latency: pd.DataFrame | None,
              spec=None, grid: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """Wave 2 from wave 1's placement rows (phaze.place.table) and merged latency tables:
    (the waves table with wave 2 marked, {incumbent_samples_per_s, spotlight_min_s}).
    With spec and grid (as for bound_table) the work bounds that reach the incumbent are
    first replaced by DP bounds (`refine`); without, they prune as they are (valid, looser).
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
    out = refine(waves, incumbent, spec, grid) if spec is not None else waves.copy()
    out.loc[(out["wave"] != 1) & may_matter(out, incumbent, spot_min), "wave"] = 2
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
        raise UserError("wave must be 0, 1 or 2", field=what,
                        fix="give a table written by `phaze prune-bound` / `phaze prune-next`")
    if df.duplicated(list(WAVES_KEY)).any():
        raise UserError("repeats an arch", field=what,
                        fix="give a table written by `phaze prune-bound` / `phaze prune-next`")


def read_waves(path) -> pd.DataFrame:
    from phaze.files import read_parquet

    df = read_parquet(path, "--waves", fix="run `phaze prune-bound` first or check the path")
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
