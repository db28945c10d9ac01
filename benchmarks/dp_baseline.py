"""FROZEN COPY of phaze/place/dp.py before the placefast rewrite (commit bb8abaf), kept only so that
benchmarks/bench_place_default.py can time the old per-item DP. Not used by phaze.

Default-mode placement DP (the one behind the search): the reference DP's structure with
the realistic terms of phaze/place/plan.py.

For one chain (TP width t, microbatch mbs) it finds the 1F1B plan (contiguous stages, p, d)
of least time per batch
    T = (M + p - 1) * max_stage load + max_stage allreduce(stage params, d)
subject to every stage's memory at its position fitting in HBM, p t d <= devices, and
(by default) d mbs dividing the batch. Interleaved 1F1B (v >= 2) uses Megatron's uniform
split and is evaluated directly for every admissible p.

The max over stages of the all-reduce does not decompose over a suffix DP, so the DP is run
for a set of caps c on a stage's parameters (stages with more are forbidden):
    T* = min_c [ min_p B_c(p) (M + p - 1) + AR(c) ],
exact because the optimum's own largest stage is one of the caps. Caps are pruned with
bounds: only caps with AR(c) + min_p B_inf(p) (M + p - 1) <= the best plan found without a
cap can win. The loads do not depend on d except through the link kind, so the range tables
are built once per link kind.
"""

from __future__ import annotations

import math

import numpy as np

from phaze.place.chain import Chain
from phaze.place.plan import (Links, PlanOptions, allreduce_time, dp_inter, evaluate_plan,
                              p2p_time, pipeline_inter, uniform_stages)

INF = math.inf


def _prefix(x):
    return np.concatenate(([0.0], np.cumsum(x)))


class _Ranges:
    """[i, j) matrices of one chain for one pipeline link kind."""

    def __init__(self, chain: Chain, recompute: str, bw: float, lat: float):
        n = chain.n
        ii = np.arange(n + 1)[:, None]
        jj = np.arange(n + 1)[None, :]
        self.valid = jj > ii
        Fp, Bp, Pp = _prefix(chain.fwd_s), _prefix(chain.bwd_s), _prefix(chain.param_count)
        Ap = _prefix(chain.act_bytes(recompute))
        F = Fp[jj] - Fp[ii]
        B = Bp[jj] - Bp[ii]
        full = recompute == "full"
        comm = p2p_time(chain.out_bytes, bw, lat)       # comm[k]: boundary after layer k
        cin = np.concatenate(([0.0], comm[:-1], [0.0]))   # cin[i] for a stage starting at i
        cout = np.concatenate(([0.0], comm[:-1], [0.0]))  # cout[j] for a stage ending at j
        load = cin[ii] + F + (F if full else 0.0) + B + cout[jj]
        self.load = np.where(self.valid, load, INF)
        self.P = np.where(self.valid, Pp[jj] - Pp[ii], 0.0)
        self.A = np.where(self.valid, Ap[jj] - Ap[ii], 0.0)
        work = np.zeros((n + 1, n + 1))
        if full:
            a = chain.act_none_bytes
            for i in range(n):
                work[i, i + 1:] = np.maximum.accumulate(a[i:])
        self.work = work


def _smax(rg: _Ranges, static_per_param: float, M: int, hbm: float) -> np.ndarray:
    """Largest 1F1B position s at which each stage fits (inf: any)."""
    base = rg.P * static_per_param + rg.work
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.floor((hbm - base) / np.where(rg.A > 0, rg.A, 1.0))
    s = np.where(base + M * rg.A <= hbm, INF, s)           # min(s, M) * A: all s fit
    s = np.where(base <= hbm, s, 0.0)
    return np.where(rg.valid, s, 0.0)


def _run_dp(rg: _Ranges, smax: np.ndarray, caps: np.ndarray, pmax: int):
    """D[c, i, s]: least max stage load of the suffix [i, n) as s stages with every stage's
    params <= caps[c]; arg[c, i, s]: end of the first stage."""
    n = rg.load.shape[0] - 1
    C = len(caps)
    D = np.full((C, n + 1, pmax + 1), INF)
    arg = np.zeros((C, n + 1, pmax + 1), dtype=np.int32)
    D[:, n, 0] = 0.0
    s_idx = np.arange(1, pmax + 1)
    for i in range(n - 1, -1, -1):
        js = np.arange(i + 1, n + 1)
        L = rg.load[i, js]
        ok = (s_idx[None, :] <= smax[i, js][:, None])                          # J x S
        capok = rg.P[i, js][None, :] <= caps[:, None]                          # C x J
        cand = np.maximum(L[None, :, None], D[:, js, :pmax])                   # C x J x S
        cand = np.where(ok[None] & capok[:, :, None], cand, INF)
        best = cand.argmin(axis=1)                                             # C x S
        D[:, i, 1:] = np.take_along_axis(cand, best[:, None, :], axis=1)[:, 0, :]
        arg[:, i, 1:] = js[best]
    return D, arg


def _stages(arg, c, s, n):
    out, i = [], 0
    for pos in range(s, 0, -1):
        j = int(arg[c, i, pos])
        out.append((i, j))
        i = j
    assert i == n
    return out


def d_candidates(chain: Chain, devices: int, batch: int, options: PlanOptions) -> list[int]:
    top = devices // chain.t
    if options.exact_batch:
        if batch % chain.mbs:
            return []
        nmb = batch // chain.mbs
        return [d for d in range(1, min(top, nmb) + 1) if nmb % d == 0]
    return list(range(1, min(top, -(-batch // chain.mbs)) + 1))


def best_plan(chain: Chain, devices: int, batch: int, recompute: str = "none", *,
              hbm_bytes: float, links: Links | None = None, options: PlanOptions | None = None,
              peak_flops: float = 0.0, interleaves=(1,)) -> dict | None:
    """Best plan for one chain (its t and mbs fixed); None when nothing fits."""
    links = links or Links()
    options = options or PlanOptions()
    n, t = chain.n, chain.t
    ranges = {}
    best = None

    def consider(plan):
        nonlocal best
        if plan["feasible"] and (best is None or plan["time_per_batch_s"] < best["time_per_batch_s"]):
            best = plan

    ev = dict(hbm_bytes=hbm_bytes, links=links, options=options, peak_flops=peak_flops)
    for d in d_candidates(chain, devices, batch, options):
        M = -(-batch // (chain.mbs * d))
        pmax = min(n, devices // (t * d))
        if pmax < 1:
            continue
        static = options.static_bytes_per_param(d)
        dbw, dlat = links.link(dp_inter(t, d, links))
        for inter in (False, True):
            ps = [p for p in range(1, pmax + 1) if pipeline_inter(t, d, p, links) == inter]
            if not ps:
                continue
            if inter not in ranges:
                ranges[inter] = _Ranges(chain, recompute, *links.link(inter))
            rg = ranges[inter]
            smax = _smax(rg, static, M, hbm_bytes)
            pm = max(ps)
            D, arg = _run_dp(rg, smax, np.array([INF]), pm)
            Binf = D[0, 0, 1:]
            found = []
            for p in ps:
                if np.isfinite(Binf[p - 1]):
                    plan = evaluate_plan(chain, p, d, batch, recompute, 1,
                                         stages=_stages(arg, 0, p, n), **ev)
                    found.append(plan)
                    consider(plan)
            if not found or d == 1:
                continue
            # caps on a stage's parameters that could still beat the best plan found
            U = min(pl["time_per_batch_s"] for pl in found)
            L0 = min(Binf[p - 1] * (M + p - 1) for p in ps if np.isfinite(Binf[p - 1]))
            cand = np.unique(rg.P[rg.valid])
            cand = cand[cand >= chain.param_count.max()]
            ar = allreduce_time(cand * options.grad_bytes, d, dbw, dlat)
            cand = cand[ar + L0 <= U * (1 + 1e-12)]
            for k in range(0, len(cand), 32):
                caps = cand[k:k + 32]
                D, arg = _run_dp(rg, smax, caps, pm)
                arc = allreduce_time(caps * options.grad_bytes, d, dbw, dlat)
                for p in ps:
                    obj = D[:, 0, p] * (M + p - 1) + arc
                    c = int(np.argmin(obj))
                    if np.isfinite(obj[c]) and (best is None or obj[c] < best["time_per_batch_s"]):
                        consider(evaluate_plan(chain, p, d, batch, recompute, 1,
                                               stages=_stages(arg, c, p, n), **ev))
        for v in interleaves:
            if v < 2:
                continue
            for p in range(2, pmax + 1):
                try:
                    st = uniform_stages(chain, p * v)
                except ValueError:
                    continue
                consider(evaluate_plan(chain, p, d, batch, recompute, v, stages=st, **ev))
    return best
