"""The strengthening of the compact models (phaze/sched/prep.py) must never cut off the
optimum: dominance (symmetry) rows S_a <= S_b, the idle-energy charges and the per-core
no-overlap model. Checked against the independent exhaustive enumeration on instances
built to trigger them: few distinct latencies (many interchangeable ops, like the dW
GEMMs and heads of a real block) and core counts where single and intra compete."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from sched_bruteforce import brute_force_makespan  # noqa: E402

from phaze.sched.heuristic import list_schedule  # noqa: E402
from phaze.sched.prep import prepare  # noqa: E402
from phaze.sched.problem import SchedProblem, check_schedule  # noqa: E402
from phaze.sched.solve import solve_problem  # noqa: E402


def symmetric_instance(seed: int) -> SchedProblem:
    rng = random.Random(seed)
    n = rng.randint(3, 7)
    classes = [rng.choice(["tc", "tc", "vc", "tc+vc", "net"]) for _ in range(n)]
    lat1 = [rng.choice([1, 2, 3]) * 1e-5 for _ in range(n)]
    lat_all = [x * rng.choice([0.25, 0.5, 1.0]) for x in lat1]
    for i in range(n):                 # copy another op's class and latencies
        if rng.random() < 0.5:
            j = rng.randrange(n)
            classes[i], lat1[i], lat_all[i] = classes[j], lat1[j], lat_all[j]
    dens = rng.choice([0.1, 0.25, 0.4])
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < dens]
    return SchedProblem(tuple(classes), tuple(lat1), tuple(lat_all), tuple(edges),
                        n_tc=rng.randint(1, 3), n_vc=rng.randint(1, 2))


def _opt(p: SchedProblem) -> float:
    return brute_force_makespan(list(p.core_class), list(p.lat_one_s), list(p.lat_all_s),
                                list(p.edges), p.n_tc, p.n_vc)


SEEDS = range(120)


def test_instances_exercise_the_strengthening():
    pairs = sum(len(prepare(symmetric_instance(s), 1.0).ident_pairs) for s in SEEDS)
    charged = sum(bool(prepare(symmetric_instance(s), 1.0).charged_chain(0)) for s in SEEDS)
    per_core = sum(any(cap > 1 and sum(prepare(p, 1.0).demand(i, False)[r] for i in range(p.n)) > cap
                       for r, cap in enumerate(prepare(p, 1.0).cap))
                   for p in map(symmetric_instance, SEEDS))
    assert pairs >= 100 and charged >= 20 and per_core >= 20, (pairs, charged, per_core)


@pytest.mark.parametrize("solver", ["cpsat", "highs"])
def test_strengthened_compact_matches_brute_force(solver):
    bad = []
    for seed in SEEDS:
        p = symmetric_instance(seed)
        res = solve_problem(p, solver, "compact", {"time_limit_s": 20.0}, shortcut=False)
        check_schedule(p, res.schedule())
        opt = _opt(p)
        assert res.lower_bound_s <= opt * (1 + 1e-9), (seed, res.lower_bound_s, opt)
        if solver == "cpsat":
            assert res.status == "optimal", (seed, res)
        if abs(res.makespan_s - opt) > max(res.gap, 1e-9) * res.makespan_s + 1e-15:
            bad.append((seed, res.makespan_s, opt))
    assert not bad, bad


def test_energy_bound_is_valid():
    for seed in SEEDS:
        p = symmetric_instance(seed)
        assert prepare(p, 1.0).energy_bound_s() <= _opt(p) * (1 + 1e-9), seed


def test_energy_bound_charges_idle_cores_closed_form():
    # a -> v -> b on 3 TCs, w beside them: while VC op v runs only w can use a TC, so
    # at least 2 TCs idle for v's duration. GEMMs scale perfectly (intra = single/3).
    L, d = 9e-3, 1e-3
    p = SchedProblem(("tc", "vc", "tc", "tc"), (L, d, L, L), (L / 3, d, L / 3, L / 3),
                     ((0, 1), (1, 2)), n_tc=3, n_vc=1)
    pr = prepare(p, 1.0)
    # v leaves 2 TCs idle; a and b in single mode leave 1 (only w beside them)
    assert pr.charged_chain(0) == [0, 1, 2]
    assert pr.single_energy(0, p.lat_one_s) == pytest.approx([2 * L, 2 * d, 2 * L, L])
    # every GEMM cheapest intra (3 x L/3 of work each), v charged 2 d: (3 L + 2 d) / 3,
    # above the plain work bound L
    assert pr.energy_bound_s() == pytest.approx(L + 2 * d / 3, rel=1e-12)
    # the optimum runs every GEMM intra and v alone: L + d
    assert _opt(p) == pytest.approx(L + d, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_warm_start_respects_dominance_and_stays_feasible(seed):
    p = symmetric_instance(seed)
    s = list_schedule(p)
    pr = prepare(p, s.makespan(p))
    r = pr.respect_dominance(s)
    check_schedule(p, r)
    assert r.makespan(p) == pytest.approx(s.makespan(p), rel=1e-12)
    assert all(r.start_s[a] <= r.start_s[b] for a, b in pr.ident_pairs)
