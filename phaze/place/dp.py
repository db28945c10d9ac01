"""Default-mode placement DP (the one behind the search): the reference DP's structure with
the realistic terms of phaze/place/plan.py.

For one chain (TP width t, microbatch mbs) it finds the 1F1B plan (contiguous stages, p, d)
of least time per batch
    T = (M + p - 1) * max_stage load + max_stage allreduce(stage params, d)
subject to every stage's memory at its position fitting in HBM, p t d <= devices, and
(by default) d mbs dividing the batch. Interleaved 1F1B (v >= 2) uses Megatron's uniform
split and is evaluated directly for every admissible p.

Exact algorithm (one table per pipeline link kind, HBM size and recompute flag, shared by
every d):
  * B_c[s][i] = least max stage load of the suffix [i, n) cut into s stages whose params are
    <= cap c and whose memory fits at their 1F1B position; the stage at suffix position s
    keeps min(s, M) microbatches in flight. For s <= M the table does not depend on d (M),
    so one run over s serves every d; a d with pmax(d) > M continues from step M with the
    in-flight count frozen at M (an "extension").
  * The loads depend on d only through the p2p link kind (inter-node iff t d p > node size),
    the memory through M (above) and, with ZeRO-1, the bytes per parameter (d's with the
    same value share tables).
  * The max over stages of the all-reduce does not decompose over the DP:
        T*(d, p) = min_c [ (M + p - 1) B_c(p) + AR_d(c) ]
    exact because the optimum's own largest stage is one of the caps. The uncapped run also
    tracks the largest stage of its argmin partition, giving an upper bound for every (d, p)
    and a global incumbent U; a cap c only needs a capped run when, for some (d, p),
        max(max layer params, total params / p) <= c < params of the uncapped argmin's
        largest stage   and   (M + p - 1) B_inf(p) + AR_d(c) < U.
    The surviving caps (union over d, p) run in one batch, shared by every d.
Only the winner is evaluated with plan.evaluate_plan (the source of truth for the plan dict).
`best_plans` answers several HBM sizes and recompute flags of one chain in one call (the
range tables are built once per recompute flag and link kind).
"""

from __future__ import annotations

import math

import numpy as np

from phaze.place.chain import Chain
from phaze.place.plan import (Links, PlanOptions, dp_inter, evaluate_plan, p2p_time,
                              pipeline_inter, uniform_stages)

INF = math.inf
_REL = 1e-12          # relative slack when pruning with bounds (never prunes a true optimum)


def _prefix(x):
    return np.concatenate(([0.0], np.cumsum(x)))


class _Ranges:
    """[i, j) matrices of one chain for one recompute flag (loads per pipeline link kind)."""

    def __init__(self, chain: Chain, recompute: str):
        n = chain.n
        self.chain = chain
        ii = np.arange(n + 1)[:, None]
        jj = np.arange(n + 1)[None, :]
        self.ii, self.jj = ii, jj
        self.valid = jj > ii
        Fp, Bp, Pp = _prefix(chain.fwd_s), _prefix(chain.bwd_s), _prefix(chain.param_count)
        Ap = _prefix(chain.act_bytes(recompute))
        self.full = recompute == "full"
        F = Fp[jj] - Fp[ii]
        self.comp = F + (F if self.full else 0.0) + (Bp[jj] - Bp[ii])
        self.P = np.where(self.valid, Pp[jj] - Pp[ii], 0.0)
        self.A = np.where(self.valid, Ap[jj] - Ap[ii], 0.0)
        work = np.zeros((n + 1, n + 1))
        if self.full:
            a = chain.act_none_bytes
            for i in range(n):
                work[i, i + 1:] = np.maximum.accumulate(a[i:])
        self.work = work
        self._load = {}

    def load(self, bw: float, lat: float) -> np.ndarray:
        key = (bw, lat)
        if key not in self._load:
            comm = p2p_time(self.chain.out_bytes, bw, lat)     # boundary after layer k
            edge = np.concatenate(([0.0], comm[:-1], [0.0]))   # cin[i] / cout[j]
            load = edge[self.ii] + self.comp + edge[self.jj]
            self._load[key] = np.where(self.valid, load, INF)
        return self._load[key]

    def smax(self, static_per_param: float, hbm: float) -> np.ndarray:
        """Largest in-flight count m at which each stage fits (inf: any, -1: none)."""
        base = self.P * static_per_param + self.work
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.floor((hbm - base) / np.where(self.A > 0, self.A, 1.0))
        s = np.where(self.A > 0, s, INF)
        s = np.where(base <= hbm, s, -1.0)
        return np.where(self.valid, s, -1.0)


class _Run:
    """B_c[s][0] for s = 1..S of a batch of caps, plus the argmin tables to rebuild the
    partitions. Steps s <= s_shared use in-flight min(s, M_shared) (M_shared = inf for the
    shared run); an extension starts from another run's step s0 with in-flight frozen."""

    def __init__(self, load, P, smax, caps, steps, frozen_m=None, start=None, s0=0):
        n1 = load.shape[0]
        n = n1 - 1
        G = len(caps)
        self.s0 = s0
        self.parent = start
        capok = P[None, :, :] <= caps[:, None, None] if np.isfinite(caps).any() else None
        if start is None:
            D = np.full((G, n1), INF)
            D[:, n] = 0.0
            PM = np.zeros((G, n1))
        else:
            D, PM = start.D_at(s0).copy(), start.PM_at(s0).copy()
        self.hist_D, self.hist_PM, self.hist_arg = [], [], []
        rows = np.arange(n1)
        for s in range(s0 + 1, steps + 1):
            m = frozen_m if frozen_m is not None else s
            ok = smax >= m
            if capok is not None:
                ok = ok[None] & capok
            cand = np.maximum(load[None, :, :], D[:, None, :])
            cand = np.where(ok, cand, INF)
            arg = cand.argmin(axis=2)                                    # G x n1
            D = np.take_along_axis(cand, arg[:, :, None], axis=2)[:, :, 0]
            PM = np.maximum(P[rows[None, :], arg], np.take_along_axis(PM, arg, axis=1))
            PM = np.where(np.isfinite(D), PM, INF)
            self.hist_D.append(D)
            self.hist_PM.append(PM)
            self.hist_arg.append(arg)
        self.steps = steps

    def D_at(self, s):
        if s <= self.s0:
            return self.parent.D_at(s)
        return self.hist_D[s - self.s0 - 1]

    def PM_at(self, s):
        if s <= self.s0:
            return self.parent.PM_at(s)
        return self.hist_PM[s - self.s0 - 1]

    def arg_at(self, s):
        if s <= self.s0:
            return self.parent.arg_at(s)
        return self.hist_arg[s - self.s0 - 1]

    def stages(self, g: int, p: int, n: int) -> list[tuple[int, int]]:
        out, i = [], 0
        for pos in range(p, 0, -1):
            j = int(self.arg_at(pos)[g, i])
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


def _ar_coeff(n: int, bw: float, lat: float, grad_bytes: float) -> tuple[float, float]:
    """Ring all-reduce time = alpha * params + beta (plan.allreduce_time)."""
    if n <= 1:
        return 0.0, 0.0
    return 2.0 * (n - 1) / n * grad_bytes / bw, 2.0 * (n - 1) * lat


def _runs_for(load, P, smax, caps, groups):
    """One shared run plus extensions. groups: {M: max p needed}. Returns {M: run}."""
    shared_steps = max((min(M, pm) for M, pm in groups.items()), default=0)
    base = _Run(load, P, smax, caps, shared_steps)
    runs = {}
    for M, pm in groups.items():
        runs[M] = base if pm <= M else _Run(load, P, smax, caps, pm, frozen_m=M, start=base, s0=M)
    return runs


def _solve_one(rg: _Ranges, chain: Chain, devices: int, batch: int, recompute: str, hbm: float,
               links: Links, options: PlanOptions, peak_flops: float, interleaves) -> dict | None:
    n, t = chain.n, chain.t
    ds = d_candidates(chain, devices, batch, options)
    # (d, p) pairs grouped by (link kind, bytes per param): {key: {d: [p...]}}
    groups: dict = {}
    dinfo = {}
    for d in ds:
        M = -(-batch // (chain.mbs * d))
        pmax = min(n, devices // (t * d))
        if pmax < 1:
            continue
        ar = _ar_coeff(d, *links.link(dp_inter(t, d, links)), options.grad_bytes)
        dinfo[d] = (M, pmax, ar)
        static = options.static_bytes_per_param(d)
        for p in range(1, pmax + 1):
            key = (pipeline_inter(t, d, p, links), static)
            groups.setdefault(key, {}).setdefault(d, []).append(p)

    Pmax_layer = float(chain.param_count.max()) if n else 0.0
    Ptot = float(chain.param_count.sum())
    inf_cap = np.array([INF])
    cands = []            # (obj, key, d, p, run, g)
    ctx = {}
    for key, dps in groups.items():
        inter, static = key
        load = rg.load(*links.link(inter))
        smax = rg.smax(static, hbm)
        need: dict = {}
        for d, ps in dps.items():
            M = dinfo[d][0]
            need[M] = max(need.get(M, 0), max(ps))
        runs = _runs_for(load, rg.P, smax, inf_cap, need)
        ctx[key] = (load, smax, need)
        for d, ps in dps.items():
            M, _pm, (al, be) = dinfo[d]
            run = runs[M]
            for p in ps:
                B = run.D_at(p)[0, 0]
                if not np.isfinite(B):
                    continue
                pm = run.PM_at(p)[0, 0]
                cands.append(((M + p - 1) * B + al * pm + be, key, d, p, run, 0, B, pm))
    if not cands:
        best = None
    else:
        U = min(c[0] for c in cands)
        # caps that could still beat the incumbent for some (d, p)
        allP = None
        capped = []
        for key in groups:
            capset = set()
            pairs: dict = {}                     # {d: [p...]} that may profit from a cap
            for (obj, k, d, p, run, g, B, pm) in cands:
                if k != key or d == 1:
                    continue
                M, _pm, (al, be) = dinfo[d]
                lo = max(Pmax_layer, Ptot / p)
                hi_obj = (U * (1 + _REL) - (M + p - 1) * B - be)
                if al <= 0 or hi_obj < al * lo * (1 - _REL):
                    continue
                hi = min(pm, hi_obj / al)
                if allP is None:
                    allP = np.unique(rg.P[rg.valid])
                sel = allP[(allP >= lo * (1 - _REL)) & (allP < pm) & (allP <= hi * (1 + _REL))]
                if len(sel):
                    capset.update(sel.tolist())
                    pairs.setdefault(d, []).append(p)
            if not capset:
                continue
            caps = np.array(sorted(capset))
            load, smax, _need = ctx[key]
            need: dict = {}
            for d, ps in pairs.items():
                M = dinfo[d][0]
                need[M] = max(need.get(M, 0), max(ps))
            for k0 in range(0, len(caps), 64):
                cb = caps[k0:k0 + 64]
                runs = _runs_for(load, rg.P, smax, cb, need)
                for d, ps in pairs.items():
                    M, _pm, (al, be) = dinfo[d]
                    run = runs[M]
                    for p in ps:
                        Dp = run.D_at(p)[:, 0]
                        obj = (M + p - 1) * Dp + al * cb + be
                        g = int(np.argmin(obj))
                        if np.isfinite(obj[g]):
                            capped.append((float(obj[g]), key, d, p, run, g, Dp[g], cb[g]))
        best_c = min(cands + capped, key=lambda c: c[0])
        obj, key, d, p, run, g, _B, _pm = best_c
        ev = dict(hbm_bytes=hbm, links=links, options=options, peak_flops=peak_flops)
        best = evaluate_plan(chain, p, d, batch, recompute, 1, stages=run.stages(g, p, n), **ev)
        assert best["feasible"], "DP plan must fit"
    # interleaved schedules: uniform split, evaluated directly
    for v in interleaves:
        if v < 2:
            continue
        ev = dict(hbm_bytes=hbm, links=links, options=options, peak_flops=peak_flops)
        for d, (M, pmax, _ar) in dinfo.items():
            for p in range(2, pmax + 1):
                try:
                    st = uniform_stages(chain, p * v)
                except ValueError:
                    continue
                plan = evaluate_plan(chain, p, d, batch, recompute, v, stages=st, **ev)
                if plan["feasible"] and (best is None or
                                         plan["time_per_batch_s"] < best["time_per_batch_s"]):
                    best = plan
    return best


def best_plans(chain: Chain, devices: int, batch: int, hbm_list, recompute_list=("none",), *,
               links: Links | None = None, options: PlanOptions | None = None,
               peak_flops: float = 0.0, interleaves=(1,)) -> dict:
    """Best plan for one chain (its t and mbs fixed) for every (hbm_bytes, recompute) pair:
    {(hbm_bytes, recompute): plan dict or None when nothing fits}. Range tables are shared
    by the HBM sizes of one recompute flag."""
    links = links or Links()
    options = options or PlanOptions()
    out = {}
    for rec in recompute_list:
        if rec not in ("none", "full"):
            raise ValueError(f"recompute must be none or full, got {rec!r}")
        rg = _Ranges(chain, rec)
        for hbm in hbm_list:
            out[(hbm, rec)] = _solve_one(rg, chain, devices, batch, rec, float(hbm), links,
                                         options, peak_flops, interleaves)
    return out


def best_plan(chain: Chain, devices: int, batch: int, recompute: str = "none", *,
              hbm_bytes: float, links: Links | None = None, options: PlanOptions | None = None,
              peak_flops: float = 0.0, interleaves=(1,)) -> dict | None:
    """Best plan for one chain (its t and mbs fixed); None when nothing fits."""
    return best_plans(chain, devices, batch, [hbm_bytes], [recompute], links=links,
                      options=options, peak_flops=peak_flops,
                      interleaves=interleaves)[(hbm_bytes, recompute)]
