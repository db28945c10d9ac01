"""The static lower bounds of the problem analysis (phaze/sched/prep.py) must hold for
every feasible schedule: energetic heads and tails, the energy bound with idle charges.
They decide the no-solve shortcut, so a bound that is too high would report a
suboptimal list schedule as optimal. Checked against the independent exhaustive
enumeration (the optimum) and against many random feasible schedules (per op)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from sched_bruteforce import brute_force_makespan  # noqa: E402
from test_sched_dominance import symmetric_instance  # noqa: E402
from test_sched_exact import make_instance  # noqa: E402

from phaze.sched.heuristic import lower_bound_s, serial_sgs  # noqa: E402
from phaze.sched.prep import mode_fixing_bound, prepare  # noqa: E402
from phaze.sched.problem import SchedProblem, check_schedule  # noqa: E402


def _opt(p: SchedProblem) -> float:
    return brute_force_makespan(list(p.core_class), list(p.lat_one_s), list(p.lat_all_s),
                                list(p.edges), p.n_tc, p.n_vc)


def _random_schedules(p: SchedProblem, k: int, seed: int):
    """k feasible schedules: serial SGS over random topological orders and random modes
    (not only the good ones a heuristic would keep)."""
    rng = random.Random(seed)
    preds = [set(x) for x in p.preds()]
    for _ in range(k):
        rest, order = list(range(p.n)), []
        while rest:
            ready = [j for j in rest if preds[j] <= set(order)]
            j = rng.choice(ready)
            order.append(j)
            rest.remove(j)
        modes = [rng.choice(["single", "intra"]) if p.has_intra(i) else "single"
                 for i in range(p.n)]
        yield serial_sgs(p, order, modes=modes)


def _instance(seed: int) -> SchedProblem:
    return (make_instance if seed % 2 else symmetric_instance)(seed // 2)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 20_000))
def test_heads_and_tails_hold_for_every_schedule(seed):
    p = _instance(seed)
    pr = prepare(p, 0.0)
    for s in _random_schedules(p, 12, seed):
        check_schedule(p, s)
        c = s.makespan(p)
        for j in range(p.n):
            assert pr.head[j] <= s.start_s[j] * (1 + 1e-9) + 1e-15, (seed, j)
            assert pr.tail[j] <= (c - s.start_s[j]) * (1 + 1e-9) + 1e-15, (seed, j)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 20_000))
def test_static_bound_at_most_the_optimum(seed):
    p = _instance(seed)
    pr = prepare(p, 0.0)
    opt = _opt(p)
    assert lower_bound_s(p) <= pr.lower_bound_s() <= opt * (1 + 1e-9), seed
    assert pr.energy_bound_s() <= opt * (1 + 1e-9), seed


def test_energetic_head_sees_sibling_gemms_closed_form():
    # a -> {q, k} -> b on 4 TCs, 1 VC; GEMMs scale perfectly (intra = L/4). q and k
    # need 2 L of TC work between a and b whatever their modes: b starts at >= d + L/2.
    # The plain bound sees only one of them on the path (2 d + L/4) or their work
    # without the vector ops around it (2 L / 4).
    L, d = 8e-3, 1e-4
    p = SchedProblem(("vc", "tc", "tc", "vc"), (d, L, L, d), (d, L / 4, L / 4, d),
                     ((0, 1), (0, 2), (1, 3), (2, 3)), n_tc=4, n_vc=1)
    pr = prepare(p, 0.0)
    assert lower_bound_s(p) == pytest.approx(max(2 * d + L / 4, L / 2), rel=1e-12)
    assert pr.head[3] == pytest.approx(d + L / 2, rel=1e-12)
    assert pr.tail[0] == pytest.approx(2 * d + L / 2, rel=1e-12)
    assert pr.lower_bound_s() == pytest.approx(2 * d + L / 2, rel=1e-12)
    assert _opt(p) == pytest.approx(2 * d + L / 2, rel=1e-9)


def test_idle_charge_of_a_vector_op_outlasting_its_neighbour_closed_form():
    # 1 TC: a -> v -> b (TC, VC, TC) and w (TC, incomparable with v, shorter than v).
    # While v runs single the TC can only run w: it idles >= (dv - dw) whatever happens.
    # Intra is never faster (one core, and v's intra would block the TC anyway).
    L, dv, dw = 5e-3, 3e-3, 1e-3
    p = SchedProblem(("tc", "vc", "tc", "tc"), (L, dv, L, dw), (L, dv, L, dw),
                     ((0, 1), (1, 2)), n_tc=1, n_vc=1)
    pr = prepare(p, 0.0)
    assert pr.charged_chain(0) == [1]
    assert pr.single_energy(0, p.lat_one_s) == pytest.approx([L, dv - dw, L, dw])
    assert pr.energy_bound_s() == pytest.approx(2 * L + dw + (dv - dw), rel=1e-12)
    assert _opt(p) == pytest.approx(2 * L + dv, rel=1e-9)



@settings(max_examples=120, deadline=None)
@given(st.integers(0, 20_000), st.floats(0.5, 1.5))
def test_mode_fixing_bound_at_most_the_optimum_for_any_level(seed, factor):
    p = _instance(seed)
    opt = _opt(p)
    pr = prepare(p, 0.0)
    assert mode_fixing_bound(pr, opt * factor) <= opt * (1 + 1e-9), (seed, factor)


def test_mode_fixing_closes_the_exposed_last_vector_op_closed_form():
    # loss -> {dX, dW}, dX -> norm on 4 TCs, 1 VC; GEMMs scale perfectly. dW could hide
    # norm only in single mode, 4x longer: every schedule better than the serial one
    # (loss, dX, dW intra, norm) runs dW intra, so norm is exposed.
    L, a, b = 2.0, 3e-2, 4e-3
    p = SchedProblem(("vc", "tc", "tc", "vc"), (a, L, L, b), (a, L / 4, L / 4, b),
                     ((0, 1), (0, 2), (1, 3)), n_tc=4, n_vc=1)
    pr = prepare(p, 0.0)
    opt = a + L / 2 + b
    assert _opt(p) == pytest.approx(opt, rel=1e-9)
    assert pr.lower_bound_s() < opt * (1 - 1e-3)          # norm looks coverable by dW
    assert mode_fixing_bound(pr, opt) == pytest.approx(opt, rel=1e-12)
