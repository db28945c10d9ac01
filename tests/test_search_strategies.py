"""Exhaustive vs pruned vs area-bucket search on synthetic problems (brute-force checks)."""

import math

import numpy as np
from hypothesis import given, settings, strategies as st

from phaze.search.select import Design
from phaze.search.strategies import area_buckets, exhaustive, pruned
from phaze.search.pareto import pareto_mask


class Synthetic:
    """archs with a true throughput and an optimistic bound >= it (or any bound when
    `valid` is False); counts evaluations."""

    def __init__(self, areas, thr, slack, n_ilps=3):
        self.ids = [f"{i:04x}" for i in range(len(areas))]
        self.area = dict(zip(self.ids, areas))
        self.thr = dict(zip(self.ids, thr))
        self.slack = dict(zip(self.ids, slack))
        self.n_ilps = n_ilps
        self.evaluated = []

    def archs(self):
        return [(a, self.area[a]) for a in self.ids]

    def bound(self, a):
        t = self.thr[a]
        return t * (1.0 + self.slack[a]) if t > 0 else float("nan")

    def evaluate(self, a):
        self.evaluated.append(a)
        t = self.thr[a]
        return Design(a, self.area[a], t if t > 0 else float("nan"), n_ilps=self.n_ilps)


def brute_best(p):
    feas = [a for a in p.ids if p.thr[a] > 0]
    if not feas:
        return None
    return min(feas, key=lambda a: (-p.thr[a], p.area[a], a))


problems = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.sampled_from([1.0, 2.0, 3.0, 50.0, 100.0]), min_size=n, max_size=n),
    st.lists(st.one_of(st.just(0.0), st.sampled_from([1.0, 2.0, 5.0]),
                       st.floats(0.1, 1e3)), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 3.0), min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None)
@given(problems)
def test_pruned_equals_exhaustive_and_brute_force(args):
    areas, thr, slack = args
    p1, p2 = Synthetic(areas, thr, slack), Synthetic(areas, thr, slack)
    ex, pr = exhaustive(p1), pruned(p2)
    want = brute_best(p1)
    assert (ex.best.arch_id if ex.best else None) == want
    assert (pr.best.arch_id if pr.best else None) == want
    if want is not None:
        assert pr.best.samples_per_s == ex.best.samples_per_s
    assert pr.n_ilps <= ex.n_ilps
    assert len(p2.evaluated) + len(pr.skipped) == len(p1.ids)
    assert len(set(p2.evaluated)) == len(p2.evaluated)


def test_pruning_skips_when_bounds_are_tight():
    # exact bounds: only the winner (and nothing else) needs its ILPs
    p = Synthetic([1, 2, 3, 4], [10.0, 40.0, 20.0, 30.0], [0, 0, 0, 0])
    res = pruned(p)
    assert res.best.arch_id == "0001" and p.evaluated == ["0001"]
    assert res.n_ilps == 3 and exhaustive(Synthetic([1, 2, 3, 4], [10.0, 40.0, 20.0, 30.0],
                                                    [0] * 4)).n_ilps == 12


def test_pruned_detects_an_invalid_bound():
    import pytest

    p = Synthetic([1, 2], [10.0, 40.0], [0.0, 0.0])
    p.bound = lambda a: 1.0 if a == "0001" else 5.0  # 0000 really does 10
    with pytest.raises(AssertionError, match="not valid"):
        pruned(p)


def ref_bucket_stop(areas, thr, bucket, patience):
    """Independent re-statement of docs/reference.md#outer-search: returns the set of archs the
    bucket search evaluates."""
    keys = sorted({math.floor(a / bucket + 1e-9) for a in areas}, reverse=True)
    seen, bests = set(), []
    for k in keys:
        members = [i for i, a in enumerate(areas) if math.floor(a / bucket + 1e-9) == k]
        seen.update(members)
        bests.append(max([thr[i] for i in members if thr[i] > 0], default=-1.0))
        if len(bests) >= patience:
            tail = bests[-patience:]
            if all(tail[j] >= tail[j + 1] for j in range(patience - 1)):
                break
    return seen


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 25).flatmap(lambda n: st.tuples(
    st.lists(st.integers(1, 12).map(lambda x: x * 0.01), min_size=n, max_size=n),
    st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0]), min_size=n, max_size=n))),
    st.integers(1, 5))
def test_area_buckets_stop_rule(args, patience):
    areas, thr = args
    p = Synthetic(areas, thr, [0.0] * len(areas))
    res = area_buckets(p, bucket_mm2=0.01, patience=patience)
    want = ref_bucket_stop(areas, thr, 0.01, patience)
    assert {int(a, 16) for a in p.evaluated} == want
    assert len(p.evaluated) + len(res.skipped) == len(areas)
    sub = [i for i in want if thr[i] > 0]
    if sub:
        assert res.best.arch_id == f"{min(sub, key=lambda i: (-thr[i], areas[i], i)):04x}"


def test_area_buckets_can_miss_the_best():
    # the reference's early stop is a heuristic: a small, fast chip after 5 flat buckets
    areas = [0.10, 0.09, 0.08, 0.07, 0.06, 0.01]
    thr = [5.0, 5.0, 4.0, 4.0, 3.0, 100.0]
    res = area_buckets(Synthetic(areas, thr, [0.0] * 6))
    assert res.best.samples_per_s == 5.0 and res.skipped == ["0005"]
    assert exhaustive(Synthetic(areas, thr, [0.0] * 6)).best.samples_per_s == 100.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1.0, 2.0, 3.0, 4.0]),
                          st.sampled_from([1.0, 2.0, 3.0, float("nan")])), max_size=15))
def test_pareto_mask_brute_force(pts):
    area = np.array([a for a, _ in pts], dtype=float)
    thr = np.array([t for _, t in pts], dtype=float)
    got = pareto_mask(area, thr)
    for i in range(len(pts)):
        if not np.isfinite(thr[i]):
            assert not got[i]
            continue
        dominated = any(np.isfinite(thr[j]) and area[j] <= area[i] and thr[j] >= thr[i]
                        and (area[j] < area[i] or thr[j] > thr[i]) for j in range(len(pts)))
        assert got[i] == (not dominated)
