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
    """B_c[s][0] for s = 0..steps of a batch of caps (`top_D[s, g]`; `top_PM[s, g]`: params of
    the largest stage of the argmin partition, when tracked), plus the argmin tables to
    rebuild the partitions. Step s uses in-flight count min(s, frozen_m) (frozen_m = None:
    s); an extension starts from `start`'s step s0 with the in-flight count frozen.
    Only rows i <= n - s (a suffix needs >= s layers) and columns j <= n - s + 1 are
    computed at step s."""

    def __init__(self, load, P, smax, caps, steps, frozen_m=None, start=None, s0=0,
                 track_pm=False):
        n1 = load.shape[0]
        n = n1 - 1
        G = len(caps)
        self.s0, self.parent, self.steps = s0, start, steps
        steps = min(steps, n)
        loadc = load[None] if not np.isfinite(caps).any() else \
            np.where(P[None, :, :] <= caps[:, None, None], load[None], INF)
        if start is None:
            D = np.full((G, n1), INF)
            D[:, n] = 0.0
            PM = np.zeros((G, n1))
            self._D0, self._PM0 = D, PM
        else:
            D, PM = start.D_at(s0), start.PM_at(s0)
        self.hist_D, self.hist_PM, self.hist_arg = [], [], []
        top_D = [D[:, 0]]
        top_PM = [PM[:, 0] if PM is not None else None]
        gi = np.arange(G)[:, None]
        for s in range(s0 + 1, steps + 1):
            r, c = n - s + 1, n - s + 2          # rows 0..n-s, columns 0..n-s+1
            m = frozen_m if frozen_m is not None else s
            cand = np.maximum(loadc[:, :r, :c], D[:, None, :c])
            cand = np.where(smax[:r, :c] >= m, cand, INF)
            arg = cand.argmin(axis=2)                                    # G x r
            Dn = np.full((G, n1), INF)
            Dn[:, :r] = cand.min(axis=2)
            if track_pm:
                PMn = np.full((G, n1), INF)
                PMn[:, :r] = np.maximum(P[np.arange(r)[None, :], arg], PM[gi, arg])
                PM = PMn
            D = Dn
            self.hist_D.append(D)
            self.hist_PM.append(PM if track_pm else None)
            self.hist_arg.append(arg)
            top_D.append(D[:, 0])
            top_PM.append(PM[:, 0] if track_pm else None)
        for s in range(steps + 1, self.steps + 1):      # more stages than layers: none
            top_D.append(np.full(G, INF))
            top_PM.append(np.full(G, INF) if track_pm else None)
        pre_D = start.top_D[:s0] if start is not None else np.zeros((0, G))
        self.top_D = np.concatenate([pre_D, np.array(top_D)])
        if track_pm:
            pre_PM = start.top_PM[:s0] if start is not None else np.zeros((0, G))
            self.top_PM = np.concatenate([pre_PM, np.array(top_PM)])

    def D_at(self, s):
        if s <= self.s0:
            return self.parent.D_at(s) if self.parent is not None else self._D0
        return self.hist_D[s - self.s0 - 1]

    def PM_at(self, s):
        if s <= self.s0:
            return self.parent.PM_at(s) if self.parent is not None else self._PM0
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


def _runs_for(load, P, smax, caps, need, track_pm=False):
    """One shared run plus extensions. need: {M: max p}. Returns {M: run}."""
    shared_steps = max((min(M, pm) for M, pm in need.items()), default=0)
    base = _Run(load, P, smax, caps, shared_steps, track_pm=track_pm)
    runs = {}
    for M, pm in need.items():
        runs[M] = base if pm <= M else _Run(load, P, smax, caps, pm, frozen_m=M, start=base,
                                            s0=M, track_pm=track_pm)
    return runs


def _solve_one(rg: _Ranges, chain: Chain, devices: int, batch: int, recompute: str, hbm: float,
               links: Links, options: PlanOptions, peak_flops: float, interleaves) -> dict | None:
    n, t = chain.n, chain.t
    # (d, p range) grouped by (link kind, bytes per param): {key: {d: p array}}
    groups: dict = {}
    dinfo = {}
    for d in d_candidates(chain, devices, batch, options):
        M = -(-batch // (chain.mbs * d))
        pmax = min(n, devices // (t * d))
        if pmax < 1:
            continue
        ar = _ar_coeff(d, *links.link(dp_inter(t, d, links)), options.grad_bytes)
        dinfo[d] = (M, pmax, ar)
        static = options.static_bytes_per_param(d)
        ps = np.arange(1, pmax + 1)
        inter = t * d * ps > links.node_size            # plan.pipeline_inter
        for kind in (False, True):
            sel = ps[inter == kind]
            if len(sel):
                groups.setdefault((kind, static), {})[d] = sel

    Pmax_layer = float(chain.param_count.max()) if n else 0.0
    Ptot = float(chain.param_count.sum())
    best = None            # (obj, run, g, d, p)
    unc = {}               # key -> (load, smax, runs)
    for key, dps in groups.items():
        inter, static = key
        load = rg.load(*links.link(inter))
        smax = rg.smax(static, hbm)
        need: dict = {}
        for d, ps in dps.items():
            M = dinfo[d][0]
            need[M] = max(need.get(M, 0), int(ps[-1]))
        runs = _runs_for(load, rg.P, smax, np.array([INF]), need, track_pm=True)
        unc[key] = (load, smax, runs)
        for d, ps in dps.items():
            M, _pm, (al, be) = dinfo[d]
            run = runs[M]
            B, pm = run.top_D[ps, 0], run.top_PM[ps, 0]
            obj = (M + ps - 1) * B + al * pm + be
            k = int(np.argmin(obj))
            if np.isfinite(obj[k]) and (best is None or obj[k] < best[0]):
                best = (float(obj[k]), run, 0, d, int(ps[k]))
    if best is not None:
        U = best[0] * (1 + _REL)
        allP = np.unique(rg.P[rg.valid])
        for key, dps in groups.items():
            # caps that could still beat the incumbent for some (d, p): see the docstring
            load, smax, runs = unc[key]
            capmask = np.zeros(len(allP) + 1, dtype=int)
            pairs = {}
            for d, ps in dps.items():
                M, _pm, (al, be) = dinfo[d]
                if d == 1 or al <= 0:
                    continue
                run = runs[M]
                B, pm = run.top_D[ps, 0], run.top_PM[ps, 0]
                lo = np.maximum(Pmax_layer, Ptot / ps) * (1 - _REL)
                with np.errstate(invalid="ignore"):
                    hi = np.minimum((U - (M + ps - 1) * B - be) / al * (1 + _REL), pm)
                a = np.searchsorted(allP, lo, side="left")
                # c < pm and c <= hi
                b = np.minimum(np.searchsorted(allP, hi, side="right"),
                               np.searchsorted(allP, pm, side="left"))
                ok = np.isfinite(B) & (b > a)
                if ok.any():
                    pairs[d] = ps[ok]
                    np.add.at(capmask, a[ok], 1)
                    np.add.at(capmask, b[ok], -1)
            if not pairs:
                continue
            caps = allP[np.cumsum(capmask[:-1]) > 0]
            need = {}
            for d, ps in pairs.items():
                M = dinfo[d][0]
                need[M] = max(need.get(M, 0), int(ps[-1]))
            for k0 in range(0, len(caps), 64):
                cb = caps[k0:k0 + 64]
                cruns = _runs_for(load, rg.P, smax, cb, need)
                for d, ps in pairs.items():
                    M, _pm, (al, be) = dinfo[d]
                    run = cruns[M]
                    obj = (M + ps[:, None] - 1) * run.top_D[ps] + al * cb[None, :] + be
                    k = int(np.argmin(obj))
                    kp, g = divmod(k, len(cb))
                    if np.isfinite(obj.flat[k]) and obj.flat[k] < best[0]:
                        best = (float(obj.flat[k]), run, g, d, int(ps[kp]))
    plan = None
    ev = dict(hbm_bytes=hbm, links=links, options=options, peak_flops=peak_flops)
    if best is not None:
        _obj, run, g, d, p = best
        plan = evaluate_plan(chain, p, d, batch, recompute, 1, stages=run.stages(g, p, n), **ev)
        assert plan["feasible"], "DP plan must fit"
    # interleaved schedules: uniform split, evaluated directly
    for v in interleaves:
        if v < 2:
            continue
        for d, (M, pmax, _ar) in dinfo.items():
            for p in range(2, pmax + 1):
                try:
                    st = uniform_stages(chain, p * v)
                except ValueError:
                    continue
                cand = evaluate_plan(chain, p, d, batch, recompute, v, stages=st, **ev)
                if cand["feasible"] and (plan is None or
                                         cand["time_per_batch_s"] < plan["time_per_batch_s"]):
                    plan = cand
    return plan


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
