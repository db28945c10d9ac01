"""Independent check of the GEMM cycle model (phaze.cost.gemm.gemm_core_cycles).

A cycle-by-cycle simulator of a weight-stationary systolic array, written here from the
hardware rules only (not from the closed form): PE registers, skewed input injection,
partial sums flowing down, two weight registers per PE written row by row when free, and
a controller that starts a fold when the input port is free and its weights are in place.
It also computes the product, which must equal A @ W exactly (so the dataflow is real).
"""

import math

import numpy as np
import pytest

from phaze.cost.gemm import gemm_core_cycles


def simulate_ws(A: np.ndarray, W: np.ndarray, R: int, C: int):
    """Return (A @ W as accumulated by the array, cycles until the last MAC)."""
    M, K = A.shape
    N = W.shape[1]
    # balanced folds: only ceil(K / folds) rows and ceil(N / folds) columns are used,
    # the rest of the array is bypassed
    R, C = math.ceil(K / math.ceil(K / R)), math.ceil(N / math.ceil(N / C))
    folds = [(nf, kf) for nf in range(math.ceil(N / C)) for kf in range(math.ceil(K / R))]
    F = len(folds)

    def weights(f):
        nf, kf = folds[f]
        tile = np.zeros((R, C))
        blk = W[kf * R:(kf + 1) * R, nf * C:(nf + 1) * C]
        tile[:blk.shape[0], :blk.shape[1]] = blk
        return tile

    slot_tag = -np.ones((R, C, 2), dtype=int)
    slot_w = np.zeros((R, C, 2))
    slot_done = np.zeros((R, C, 2), dtype=bool)
    next_write = [0] * R
    starts: list[int] = []
    a_reg = np.zeros((R, C))
    tag_reg = -np.ones((R, C), dtype=int)
    m_reg = -np.ones((R, C), dtype=int)
    p_reg = np.zeros((R, C))
    acc = np.zeros((M, N))
    rows = np.arange(R)
    last_busy = -1
    t = 0
    while True:
        # controller, weight writes (one fold per row per cycle, visible next cycle)
        writes = []
        for i in range(R):
            f = next_write[i]
            if f < F:
                free = ((slot_tag[i] == -1) | slot_done[i]).all(axis=0)
                if free.any():
                    writes.append((i, int(np.argmax(free)), f))
                    next_write[i] += 1
        # controller, start streaming the next fold
        f = len(starts)
        if f < F and (f == 0 or t >= starts[-1] + M) and (slot_tag == f).any(axis=2).all():
            starts.append(t)
        # inputs entering column 0 this cycle (row i is skewed by i cycles)
        in_val = np.zeros(R)
        in_tag = -np.ones(R, dtype=int)
        in_m = -np.ones(R, dtype=int)
        for fi, s in enumerate(starts):
            m = t - rows - s
            ok = (m >= 0) & (m < M)
            if ok.any():
                _, kf = folds[fi]
                k_idx = kf * R + rows[ok]
                vals = np.where(k_idx < K, A[m[ok], np.minimum(k_idx, K - 1)], 0.0)
                in_val[ok], in_tag[ok], in_m[ok] = vals, fi, m[ok]
        a_in = np.column_stack([in_val, a_reg[:, :-1]])
        tag_in = np.column_stack([in_tag, tag_reg[:, :-1]])
        m_in = np.column_stack([in_m, m_reg[:, :-1]])
        p_above = np.vstack([np.zeros((1, C)), p_reg[:-1]])
        tag_above = np.vstack([-np.ones((1, C), dtype=int), tag_reg[:-1]])
        m_above = np.vstack([-np.ones((1, C), dtype=int), m_reg[:-1]])
        valid = tag_in >= 0
        # the skew must line up: a PE's partial sum comes from the same (fold, row)
        assert np.all(~valid[1:] | ((tag_above[1:] == tag_in[1:]) & (m_above[1:] == m_in[1:])))
        has = slot_tag == tag_in[:, :, None]
        assert np.all(~valid | has.any(axis=2)), "weight missing when data arrived"
        w = np.where(has, slot_w, 0.0).sum(axis=2)
        p_new = np.where(valid, p_above + a_in * w, 0.0)
        finished = valid & (m_in == M - 1)
        slot_done |= has & finished[:, :, None]
        if valid[R - 1].any():
            for j in np.nonzero(valid[R - 1])[0]:
                nf, _ = folds[tag_in[R - 1, j]]
                col = nf * C + j
                if col < N:
                    acc[m_in[R - 1, j], col] += p_new[R - 1, j]
        if valid.any():
            last_busy = t
        a_reg, tag_reg, m_reg, p_reg = a_in, np.where(valid, tag_in, -1), np.where(valid, m_in, -1), p_new
        for i, s, f in writes:
            slot_tag[i, :, s], slot_w[i, :, s], slot_done[i, :, s] = f, weights(f)[i], False
        t += 1
        if len(starts) == F and not valid.any() and t > starts[-1] + M:
            break
    return acc, last_busy + 1


def _shapes():
    rng = np.random.default_rng(2024)
    shapes = [(1, 1, 1), (1, 37, 29), (40, 1, 9), (3, 16, 16), (64, 8, 8), (2, 33, 3)]
    while len(shapes) < 54:
        shapes.append(tuple(int(x) for x in rng.integers(1, 41, size=3)))
    return shapes


ARRAYS = [(4, 4), (8, 4), (4, 8), (8, 8), (2, 16)]


@pytest.mark.slow
def test_cycle_model_matches_simulation_within_5pct():
    rng = np.random.default_rng(7)
    worst = 0.0
    n = 0
    for (M, K, N) in _shapes():
        A = rng.integers(-3, 4, size=(M, K)).astype(float)
        W = rng.integers(-3, 4, size=(K, N)).astype(float)
        for R, C in ARRAYS:
            out, cycles = simulate_ws(A, W, R, C)
            np.testing.assert_array_equal(out, A @ W)
            model = float(gemm_core_cycles(1, M, N, K, R, C, 1))
            err = abs(model - cycles) / cycles
            worst = max(worst, err)
            assert err <= 0.05, (M, K, N, R, C, model, cycles)
            n += 1
    assert n >= 200
    print(f"{n} GEMM x array cases, worst relative error {worst:.4f}")


def test_single_fold_closed_form_against_simulation():
    # one fold: M + R + C - 1 cycles (first weights visible after one cycle)
    A = np.arange(12.0).reshape(6, 2)
    W = np.ones((2, 3))
    out, cycles = simulate_ws(A, W, 2, 3)
    np.testing.assert_array_equal(out, A @ W)
    assert cycles == 6 + 2 + 3 - 1
