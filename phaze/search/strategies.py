"""Outer search over archs: exhaustive, the reference's area buckets, bound pruning.

A search sees the sweep through a `SearchProblem`:
  archs()          -> [(arch_id, area_mm2), ...]
  bound(arch_id)   -> optimistic samples/s (no ILP): the DP fed with lower bounds on the
                      layer times; NaN or <= 0 when no plan fits whatever the times
  evaluate(arch_id)-> Design (solves the arch's ILPs, runs the DP over mbs/HBM/recompute)
Every search returns a SearchResult with the best Design in the order of select.beats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from phaze.search.select import Design, beats, better


class SearchProblem(Protocol):
    def archs(self) -> list[tuple[str, float]]: ...
    def bound(self, arch_id: str) -> float: ...
    def evaluate(self, arch_id: str) -> Design: ...


@dataclass
class SearchResult:
    method: str
    best: Design | None
    designs: list[Design] = field(default_factory=list)   # every arch evaluated
    n_archs: int = 0                                       # archs in the sweep
    skipped: list[str] = field(default_factory=list)       # archs never evaluated

    @property
    def n_ilps(self) -> int:
        return sum(d.n_ilps for d in self.designs)

    @property
    def n_evaluated(self) -> int:
        return len(self.designs)


def exhaustive(problem: SearchProblem) -> SearchResult:
    archs = problem.archs()
    res = SearchResult("exhaustive", None, n_archs=len(archs))
    for arch_id, _area in archs:
        d = problem.evaluate(arch_id)
        res.designs.append(d)
        res.best = better(res.best, d)
    return res


def _could_beat(bound: float, area: float, arch_id: str, best: Design | None) -> bool:
    if not (math.isfinite(bound) and bound > 0):
        return False        # no plan fits even with optimistic times: memory, not speed
    if best is None:
        return True
    return beats(bound, area, arch_id, best.samples_per_s, best.area_mm2, best.arch_id)


def pruned(problem: SearchProblem) -> SearchResult:
    """Evaluate archs in decreasing optimistic bound; skip every arch whose bound cannot
    beat the best design found so far. Exact (same best as exhaustive) whenever each
    bound is >= the arch's true throughput, which holds because the DP's time per batch
    is monotone non-decreasing in the layer latencies (tests/test_search_bound.py)."""
    archs = problem.archs()
    res = SearchResult("pruned", None, n_archs=len(archs))
    scored = [(problem.bound(a), area, a) for a, area in archs]
    # best bound first; ties in the same order as select.beats
    scored.sort(key=lambda x: (-(x[0] if math.isfinite(x[0]) else -math.inf), x[1], x[2]))
    for bound, area, arch_id in scored:
        if not _could_beat(bound, area, arch_id, res.best):
            res.skipped.append(arch_id)
            continue
        d = problem.evaluate(arch_id)
        if d.feasible and d.samples_per_s > bound * (1 + 1e-9):
            raise AssertionError(
                f"bound {bound} below the throughput {d.samples_per_s} of arch {arch_id}: "
                "the lower bounds on layer times are not valid")
        res.designs.append(d)
        res.best = better(res.best, d)
    return res


def area_buckets(problem: SearchProblem, bucket_mm2: float = 0.01, patience: int = 5) -> SearchResult:
    """The reference's outer loop (docs/reference.md#outer-search): archs in decreasing area,
    grouped in `bucket_mm2` buckets; after each bucket, stop once the best throughputs of
    the last `patience` buckets are non-increasing (infeasible buckets count as -1)."""
    archs = problem.archs()
    res = SearchResult("area-buckets", None, n_archs=len(archs))
    groups: dict[int, list[str]] = {}
    for arch_id, area in sorted(archs, key=lambda x: (-x[1], x[0])):
        groups.setdefault(int(math.floor(area / bucket_mm2 + 1e-9)), []).append(arch_id)
    bucket_best: list[float] = []
    keys = sorted(groups, reverse=True)
    for i, key in enumerate(keys):
        top = -1.0
        for arch_id in groups[key]:
            d = problem.evaluate(arch_id)
            res.designs.append(d)
            res.best = better(res.best, d)
            if d.feasible:
                top = max(top, d.samples_per_s)
        bucket_best.append(top)
        last = bucket_best[-patience:]
        if len(last) == patience and all(a >= b for a, b in zip(last, last[1:])):
            res.skipped = [a for k in keys[i + 1:] for a in groups[k]]
            break
    return res
