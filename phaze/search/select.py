"""Which of two evaluated designs is better, as one total order shared by every search.

Higher throughput wins; on equal throughput the smaller chip wins; then the smaller
arch_id (so exhaustive, bucketed and pruned searches break ties identically).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Design:
    """One arch after evaluation: its best plan over the DP-only axes."""

    arch_id: str
    area_mm2: float
    samples_per_s: float            # NaN / <= 0 when no plan fits (infeasible)
    plan: dict = field(default_factory=dict, compare=False)
    n_ilps: int = 0                 # ILPs solved to evaluate it (0 when cached or pruned)

    @property
    def feasible(self) -> bool:
        return math.isfinite(self.samples_per_s) and self.samples_per_s > 0


def beats(thr_a: float, area_a: float, id_a: str, thr_b: float, area_b: float, id_b: str) -> bool:
    """True when design a is strictly better than design b in the shared order."""
    if thr_a != thr_b:
        return thr_a > thr_b
    if area_a != area_b:
        return area_a < area_b
    return id_a < id_b


def better(a: Design | None, b: Design | None) -> Design | None:
    """The better of two designs; an infeasible or missing design never wins."""
    if a is None or not a.feasible:
        return b if (b is not None and b.feasible) else None
    if b is None or not b.feasible:
        return a
    return a if beats(a.samples_per_s, a.area_mm2, a.arch_id,
                      b.samples_per_s, b.area_mm2, b.arch_id) else b
