"""Solver status of the layer ILPs behind one (model, seq), and whether the ranking of
the designs holds under the ILPs' proven lower bounds.

The check: an ILP stopped at its time limit keeps a feasible schedule (latency_s) and a
proven lower bound (lower_bound_s). Every term of a plan's time per batch is a sum or max
of layer times with non-negative weights plus communication that does not depend on them,
so if every layer time of a chip shrank to its lower bound, no plan of that chip would get
faster than by the factor 1 / r, r = min over its layers and passes of
lower_bound_s / latency_s. A chip's throughput can therefore reach at most its sweep
throughput / r. The winner's throughput is achieved by feasible schedules, so a chip
whose bound stays at or below it can never overtake it; a chip whose bound exceeds it
might (an unproven ILP could change the ranking)."""

from __future__ import annotations

import numpy as np
import pandas as pd

PASSES = ("fwd", "bwd", "recompute")


def _of(latency, s):
    if latency is None or latency.empty:
        return None
    lat = latency[(latency["model"] == s["model"]) & (latency["seq"] == s["seq"])]
    return lat if not lat.empty else None


def status(latency: pd.DataFrame | None, s) -> dict | None:
    """phaze.sched.table.schedule_status of the (model, seq) `s`'s latency rows (None
    without any)."""
    from phaze.sched.table import schedule_status

    lat = _of(latency, s)
    return None if lat is None else schedule_status(lat)


def ranking(latency: pd.DataFrame | None, place: pd.DataFrame, s) -> dict | None:
    """The bound above for every chip: {"winner_samples_per_s", "runner_up": {...},
    "could_overtake": [arch ids]}."""
    lat = _of(latency, s)
    if lat is None:
        return None
    ratios = []
    for p in PASSES:
        ub, lb = lat[f"{p}_s"].to_numpy(float), lat[f"{p}_lower_bound_s"].to_numpy(float)
        r = np.where(ub > 0, np.clip(lb, 0, None) / np.where(ub > 0, ub, 1), 1.0)
        ratios.append(pd.Series(r, index=lat.index))
    r = pd.concat(ratios, axis=1).min(axis=1).groupby(lat["arch_id"]).min()
    opt = place[(place["model"] == s["model"]) & (place["seq"] == s["seq"])
                & (place["strategy"] == "optimised")]
    thr = opt.groupby("arch_id")["samples_per_s"].max().dropna().sort_values(ascending=False)
    w = float(s["best_samples_per_s"])
    bound = (thr / r.reindex(thr.index).fillna(1.0).clip(lower=1e-12))
    others = thr.index[thr.index != s["best_arch_id"]]
    out = {"winner_samples_per_s": w, "winner_ratio": float(r.get(s["best_arch_id"], 1.0)),
           "could_overtake": [a for a in others if bound[a] > w * (1 + 1e-12)]}
    if len(others):
        a = others[0]
        out["runner_up"] = {"arch_id": a, "samples_per_s": float(thr[a]),
                            "ratio": float(r.get(a, 1.0)), "bound": float(bound[a])}
    return out


def sentence(st: dict | None, rk: dict | None) -> str:
    if st is None:
        return "No latency tables given (--latency): solver status unknown."
    out = (f"{st['ilps']} layer ILPs: {st['optimal']} proven optimal, {st['time_limit']} "
           f"stopped at the time limit, {st['heuristic']} other (heuristic); worst gap "
           f"{st['worst_gap']:.2%}")
    if st["worst"]:
        w = st["worst"]
        out += f" ({w['pass']} pass of {w['layer']}, mbs {w['mbs']}, arch {w['arch_id']})"
    out += ". "
    if rk and "runner_up" in rk:
        ru = rk["runner_up"]
        out += (f"Runner-up {ru['arch_id']}: {ru['samples_per_s']:,.1f} samples/s; with every "
                f"layer at its proven lower bound at most {ru['bound']:,.1f} "
                f"(min lower bound / latency {ru['ratio']:.4f}) vs the winner's "
                f"{rk['winner_samples_per_s']:,.1f}. ")
        n = len(rk["could_overtake"])
        out += ("The ranking is proven: no chip can overtake the winner under the lower "
                "bounds." if n == 0 else
                f"{n} chip(s) could overtake the winner if their unproven ILPs reached their "
                f"lower bounds: the ranking is not proven (raise scheduling.time_limit_s).")
    return out
