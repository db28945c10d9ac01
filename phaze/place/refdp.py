"""Reference-mode placement DP: the published PHAZE DP's semantics
(docs/reference.md#placement-dp).

For every TP width t separately (then the best t):
  * layers in topological order; a stage is a contiguous range [i, j);
  * stage load = forward walk + backward walk (with recomputation: the recompute load
    fw + [forward walk without outside edges, then a backward walk starting at its end]);
    in a chain this is cin + F + cout + B, resp. cin + F + max(F, cout) + B;
  * the stage at position s (s - 1 stages after it) fits iff
    2P + (P if Adam) + A + (s - 1) * stash <= maxMemoryPerDevice,
    stash = (edges entering from outside, in bytes) with recomputation, else A;
  * dp[i][s][.] = minimal max stage load for the suffix [i, n) as exactly s stages (a stage
    at position s >= 2 uses the recompute load when recomputation is on);
  * final round: TPB = max(dp[rest], load(first)) * (M + s - 1) + 4 (d - 1) P(first) / (bw d),
    K = floor(maxDevices / d) devices per pipeline, M = ceil(mbsInBatch / d).

Device counts: a stage uses a = t devices if any of its layers is tensor-parallelised, else 1.
Instead of the reference's dp over "at most k devices" (k = 0..1024) this keeps the number m
of 1-device stages (a suffix's device count is m + (s - m) t), which is exact and needs only
(#non-TP layers + 1) entries instead of 1025.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phaze.place.instance import RefInstance, WidthTable

INF = math.inf


@dataclass
class RangeCosts:
    """Per-range quantities of one width; matrices indexed [i, j] for the stage [i, j)."""

    load0: np.ndarray      # load without recomputation
    loadR: np.ndarray      # load with recomputation (stage not last)
    param: np.ndarray      # P
    smax: np.ndarray       # largest position s at which the stage fits (0: never), float
    small: np.ndarray      # stage uses 1 device while t > 1 (no TP layer inside)
    a: np.ndarray          # devices of the stage


def _prefix(x: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(x)))


def range_costs(inst: RefInstance, w: WidthTable, chain: bool | None = None) -> RangeCosts:
    n, bw = w.n, inst.bandwidth
    if chain is None:
        chain = inst.is_chain()
    Pp, Ap = _prefix(w.param), _prefix(w.act)
    tpp = _prefix(w.tp.astype(float))
    ii = np.arange(n + 1)[:, None]
    jj = np.arange(n + 1)[None, :]
    valid = jj > ii
    P = np.where(valid, Pp[jj] - Pp[ii], 0.0)
    A = np.where(valid, Ap[jj] - Ap[ii], 0.0)
    anytp = np.where(valid, tpp[jj] - tpp[ii], 0.0) > 0
    inc_bytes = np.zeros((n + 1, n + 1))   # bytes of edges entering [i, j) from outside
    if chain:
        Fp, Bp = _prefix(w.fw), _prefix(w.bw)
        edge = np.zeros(n + 1)             # edge[k] = cost of k-1 -> k (k = 1..n-1)
        for s, d, c in w.edges:
            edge[d] = c
        cin = edge / bw                    # cin[i]: into the stage's first layer
        cin[0] = 0.0
        cout = edge.copy() / bw            # cout[j]: out of layer j-1 into layer j
        cout[n] = 0.0
        F = np.where(valid, Fp[jj] - Fp[ii], 0.0)
        B = np.where(valid, Bp[jj] - Bp[ii], 0.0)
        ci, co = cin[ii], cout[jj]
        load0 = ci + F + co + B
        loadR = ci + F + np.maximum(F, co) + B
        inc_bytes = np.broadcast_to(np.where(np.arange(n + 1) > 0, edge, 0.0)[:, None],
                                    (n + 1, n + 1)).copy()
    else:
        load0, loadR = _walk_loads(w, bw, inc_bytes)
    const = 2.0 * P + (P if inst.adam else 0.0) + A
    stash = inc_bytes if inst.recompute else A
    M = inst.max_memory
    # a tiny stash gives an overflowing count: inf, i.e. no memory limit on microbatches
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        smax = np.where(stash > 0, np.floor((M - const) / np.where(stash > 0, stash, 1.0)) + 1,
                        INF)
    smax = np.where(const <= M, smax, 0.0)
    smax = np.where(valid, smax, 0.0)
    t = w.t
    small = valid & (t > 1) & ~anytp
    a = np.where(anytp, t, 1)
    load0 = np.where(valid, load0, INF)
    loadR = np.where(valid, loadR, INF)
    return RangeCosts(load0, loadR, P, smax, small, a)


def _walk_loads(w: WidthTable, bw: float, inc_bytes: np.ndarray):
    """General DAG: the forward/backward walks of docs/reference.md#placement-dp for every range."""
    n = w.n
    preds = [[] for _ in range(n)]
    succs = [[] for _ in range(n)]
    for s, d, c in w.edges:
        preds[d].append((s, c / bw, c))
        succs[s].append((d, c / bw))
    load0 = np.full((n + 1, n + 1), INF)
    loadR = np.full((n + 1, n + 1), INF)
    fw_, bw_ = w.fw, w.bw
    for i in range(n):
        fin = {}
        finR = {}
        fmax = 0.0
        rmax = 0.0
        inb = 0.0
        for j in range(i + 1, n + 1):
            k = j - 1
            start = 0.0
            startR = 0.0
            for p, cost, raw in preds[k]:
                if p >= i:
                    start = max(start, fin[p])
                    startR = max(startR, finR[p])
                else:
                    start = max(start, cost)
                    inb += raw
            fin[k] = start + fw_[k]
            finR[k] = startR + fw_[k]
            fmax = max(fmax, fin[k])
            rmax = max(rmax, finR[k])
            inc_bytes[i, j] = inb
            # backward walks over [i, j)
            bfin = {}
            bfinR = {}
            bmax = 0.0
            bmaxR = 0.0
            for q in range(j - 1, i - 1, -1):
                st = 0.0
                stR = rmax
                for d, cost in succs[q]:
                    if d < j:
                        st = max(st, bfin[d])
                        stR = max(stR, bfinR[d])
                    else:
                        st = max(st, cost)
                        stR = max(stR, cost)
                bfin[q] = st + bw_[q]
                bfinR[q] = stR + bw_[q]
                bmax = max(bmax, bfin[q])
                bmaxR = max(bmaxR, bfinR[q])
            load0[i, j] = fmax + bmax
            loadR[i, j] = fmax + bmaxR
    return load0, loadR


@dataclass
class WidthResult:
    t: int
    tpb: float
    d: int
    stages: list[tuple[int, int, int]]   # (i, j, devices) per stage, first to last


def solve_width(inst: RefInstance, t: int, rc: RangeCosts | None = None) -> WidthResult | None:
    """The reference DP for one TP width (docs/reference.md#placement-dp): the suffix table
    over (first layer, stages, 1-device stages), then the final round over the first stage
    and d, then the stages rebuilt; None when nothing fits."""
    w = inst.widths[t]
    if rc is None:
        rc = range_costs(inst, w)
    mcap = int((~w.tp).sum()) if (t > 1 and w.tp.any()) else 0
    abig = t if (t > 1 and w.tp.any()) else 1
    S = min(w.n, inst.max_devices)
    # devices used by a suffix with s stages of which m are 1-device stages
    sv = np.arange(S + 1)[:, None]
    mv = np.arange(mcap + 1)[None, :]
    dev_ok = (mv <= sv) & (mv + (sv - mv) * abig <= inst.max_devices)
    D, arg = _suffix_table(inst, rc, w.n, S, mcap, dev_ok)
    pick = _final_round(inst, rc, D, w.n, S, mcap, abig, dev_ok)
    if pick is None:
        return None
    tpb, d, j, s, m = pick
    return WidthResult(t, tpb, d, _rebuild(rc, arg, w.n, j, s, m, track=1 if mcap else 0))


def _stage_loads(rc: RangeCosts, i: int, js, S: int, recompute: bool):
    """Load of stage [i, j) at each position s = 1..S (recompute from s >= 2) and whether
    it fits there: (J x S loads, J x S fits)."""
    s_idx = np.arange(1, S + 1)
    L0 = rc.load0[i, js]
    LR = rc.loadR[i, js] if recompute else L0
    L = np.where(s_idx[None, :] >= 2, LR[:, None], L0[:, None])
    return L, s_idx[None, :] <= rc.smax[i, js][:, None]


def _shift_small(rc: RangeCosts, i: int, js, prev, mcap: int):
    """The rest's table seen from a stage [i, j): one more 1-device stage when it is one."""
    if not mcap:
        return prev
    shifted = np.full_like(prev, INF)
    shifted[:, :, 1:] = prev[:, :, :-1]
    return np.where(rc.small[i, js][:, None, None], shifted, prev)


def _suffix_table(inst, rc, n, S, mcap, dev_ok):
    """D[i, s, m] = least max stage load placing layers [i, n) as s stages, m of them on
    one device; arg[i, s, m] = the first stage's end."""
    D = np.full((n + 1, S + 1, mcap + 1), INF)
    arg = np.zeros((n + 1, S + 1, mcap + 1), dtype=np.int32)
    D[n, 0, 0] = 0.0
    for i in range(n - 1, -1, -1):
        js = np.arange(i + 1, n + 1)
        L, fit = _stage_loads(rc, i, js, S, inst.recompute)
        prev = _shift_small(rc, i, js, D[js, :S, :], mcap)               # J x S x m (s-1)
        cand = np.where(fit[:, :, None], np.maximum(L[:, :, None], prev), INF)
        best = cand.argmin(axis=0)                                             # S x m
        val = np.take_along_axis(cand, best[None], axis=0)[0]
        D[i, 1:] = np.where(dev_ok[1:], val, INF)
        arg[i, 1:] = js[best]
    return D, arg


def _final_round(inst, rc, D, n, S, mcap, abig, dev_ok):
    """(time per batch, d, first stage end j, stages s, 1-device stages m) of the best plan
    over first stage, position and d, or None."""
    js = np.arange(1, n + 1)
    L, fit = _stage_loads(rc, 0, js, S, inst.recompute)
    rest = _shift_small(rc, 0, js, D[js, :S, :], mcap)                          # (s-1)
    Bpl = np.where(fit[:, :, None] & dev_ok[1:][None], np.maximum(L[:, :, None], rest), INF)
    jj, ss, mm = np.nonzero(np.isfinite(Bpl))
    if len(jj) == 0:
        return None
    Bv = Bpl[jj, ss, mm]
    sv1 = ss + 1
    Uv = mm + (sv1 - mm) * abig
    Pv = rc.param[0, js[jj]]
    # only the smallest d with each M = ceil(mbs / d) can be optimal (same M, fewer devices
    # needed, smaller resync term 4 (d-1) P / (bw d)); ties go to the smaller d
    mbs, maxdev = inst.mbs_in_batch, inst.max_devices
    best = (INF, 0, -1)
    last_M = None
    for d in range(1, min(maxdev, mbs) + 1):
        M = -(-mbs // d)
        if M == last_M:
            continue
        last_M = M
        ok = Uv <= maxdev // d
        if not ok.any():
            break
        tpb = np.where(ok, Bv * (M + sv1 - 1) + 4.0 * (d - 1) * Pv / (inst.bandwidth * d), INF)
        k = int(tpb.argmin())
        if tpb[k] < best[0]:
            best = (float(tpb[k]), d, k)
    if best[2] < 0:
        return None
    tpb, d, k = best
    return tpb, d, int(js[jj[k]]), int(sv1[k]), int(mm[k])


def _rebuild(rc, arg, n, j, s, m, track):
    """The stages (start, end, devices) of the plan whose first stage is [0, j). `track`:
    1 when m counts 1-device stages (some stages use t devices), else 0."""
    stages = [(0, j, int(rc.a[0, j]))]
    i, m = j, m - track * int(rc.small[0, j])
    for pos in range(s - 1, 0, -1):
        j2 = int(arg[i, pos, m])
        stages.append((i, j2, int(rc.a[i, j2])))
        m -= track * int(rc.small[i, j2])
        i = j2
    assert i == n, "reconstruction did not reach the end"
    return stages


def fixed_strategy(inst: RefInstance, rcs: dict[int, RangeCosts]) -> float | None:
    """TPB of the fixed (fixedPP, fixedTMPC, fixedDP) strategy; None when out of memory
    (or when the instance has no width fixedTMPC)."""
    p, t, d, L = inst.fixed_pp, inst.fixed_tmpc, inst.fixed_dp, inst.num_transformer_layers
    if t not in inst.widths:
        return None
    rc = rcs[t]
    n = inst.widths[t].n
    c = -(-L // p)
    worst = 0.0
    first_param = 0.0
    for k in range(p):
        lo, hi = min(k * c, L, n), min((k + 1) * c, L, n)
        if k == p - 1 and n > L:
            lo, hi = (lo if hi > lo else L), n   # the last stage also holds L .. n-1
        s = p - k
        if hi <= lo:
            continue                      # empty stage: load 0, no memory
        if s > rc.smax[lo, hi]:
            return None
        load = rc.loadR[lo, hi] if (inst.recompute and s >= 2) else rc.load0[lo, hi]
        worst = max(worst, load)
        if k == 0:
            first_param = rc.param[lo, hi]
    M = -(-inst.mbs_in_batch // d)
    return worst * (M + p - 1) + 4.0 * (d - 1) * first_param / (inst.bandwidth * d)


def solve_reference(inst: RefInstance) -> dict:
    """The published DP's output fields for an instance."""
    rcs = {t: range_costs(inst, w) for t, w in inst.widths.items()}
    best: WidthResult | None = None
    for t in sorted(inst.widths):
        r = solve_width(inst, t, rcs[t])
        if r is not None and (best is None or r.tpb < best.tpb):
            best = r
    fixed = fixed_strategy(inst, rcs)
    out = {
        "stages": [],
        "dataParallelDegree": None,
        "tensorParallelDegree": None,
        "finalTimePerBatch": None,
        "fixedStrategyTimePerBatch": fixed,
        "feasible": best is not None,
    }
    if best is not None:
        out["stages"] = [{"layers": list(inst.ids[i:j]), "devices": a} for i, j, a in best.stages]
        out["dataParallelDegree"] = best.d
        out["tensorParallelDegree"] = best.t
        out["finalTimePerBatch"] = best.tpb
    return out
