"""Pareto front of designs: smaller chip area and higher throughput are both better."""

from __future__ import annotations

import numpy as np


def pareto_mask(area_mm2, throughput) -> np.ndarray:
    """Boolean mask of the non-dominated points. A point is dominated when another point
    has area <= and throughput >= with at least one strict. Non-finite throughputs
    (infeasible designs) are never on the front. Duplicated points are all kept."""
    area = np.asarray(area_mm2, dtype=float)
    thr = np.asarray(throughput, dtype=float)
    ok = np.isfinite(thr) & np.isfinite(area)
    mask = np.zeros(area.shape, dtype=bool)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return mask
    # sweep in increasing area, then decreasing throughput; keep a point when its
    # throughput beats every smaller-area point's (or equals the running best at the
    # same area and throughput, a duplicate)
    order = idx[np.lexsort((-thr[idx], area[idx]))]
    best_thr = -np.inf
    best_area = None
    for i in order:
        if thr[i] > best_thr:
            mask[i] = True
            best_thr, best_area = thr[i], area[i]
        elif thr[i] == best_thr and area[i] == best_area:
            mask[i] = True
    return mask
