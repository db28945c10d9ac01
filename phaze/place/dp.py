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


class _Band:
    """Banded view of the [i, j) tables of one link kind / memory setting: a stage starting at
    i can only end at j = i + 1 + k, k < w, where w is the longest stage that fits in HBM at
    in-flight count 1 (memory only grows with the range, so longer stages never fit)."""

    def __init__(self, load, P, smax):
        n1 = load.shape[0]
        n = n1 - 1
        fits = smax >= 1
        ends = np.where(fits.any(axis=1), n1 - 1 - np.argmax(fits[:, ::-1], axis=1), 0)
        w = max(1, int((ends - np.arange(n1)).max()))
        J = np.arange(n1)[:, None] + 1 + np.arange(w)[None, :]
        inb = J <= n
        self.J = np.minimum(J, n)
        rows = np.arange(n1)[:, None]
        self.load = np.where(inb, load[rows, self.J], INF)
        self.smax = np.where(inb, smax[rows, self.J], -1.0)
        self.P = P[rows, self.J]
        self.n, self.w = n, w


class _Run:
    """B_c[s][0] for s = 0..steps of a batch of caps (`top_D[s, g]`; `top_PM[s, g]`: params of
    the largest stage of the argmin partition, when tracked), plus the argmin tables to
    rebuild the partitions. Step s uses in-flight count min(s, frozen_m) (frozen_m = None:
    s); an extension starts from `start`'s step s0 with the in-flight count frozen.
    Only rows i <= n - s (a suffix needs >= s layers) are computed at step s, over the band
    of stage ends that fit in memory. `advance(steps)` continues a run (the search extends
    runs when the incumbent allows more stages)."""

    def __init__(self, band: _Band, caps, steps, frozen_m=None, start=None, s0=0,
                 track_pm=False):
        self.band = band
        n1 = band.n + 1
        self.n = band.n
        G = len(caps)
        self.G, self.frozen_m = G, frozen_m
        self.s0, self.parent, self.track_pm = s0, start, track_pm
        self.loadc = band.load[None] if not np.isfinite(caps).any() else \
            np.where(band.P[None] <= caps[:, None, None], band.load[None], INF)
        if start is None:
            D = np.full((G, n1), INF)
            D[:, self.n] = 0.0
            PM = np.zeros((G, n1))
            self._D0, self._PM0 = D, PM
            self.top_D = D[:, 0][None].copy()
            self.top_PM = PM[:, 0][None].copy()
        else:
            D, PM = start.D_at(s0), start.PM_at(s0)
            self.top_D = start.top_D[:s0 + 1].copy()
            self.top_PM = start.top_PM[:s0 + 1].copy() if track_pm else None
        self._D, self._PM = D, PM
        self.hist_D, self.hist_PM, self.hist_arg = [], [], []
        self.steps = s0
        self.advance(steps)

    def advance(self, steps):
        if steps <= self.steps:
            return
        n, G, bd = self.n, self.G, self.band
        n1 = n + 1
        D, PM = self._D, self._PM
        gi = np.arange(G)[:, None]
        new_D, new_PM = [], []
        for s in range(self.steps + 1, min(steps, n) + 1):
            r = n - s + 1                        # rows 0..n-s
            m = self.frozen_m if self.frozen_m is not None else s
            Jr = bd.J[:r]
            cand = np.maximum(self.loadc[:, :r], D[:, Jr])               # G x r x w
            cand = np.where(bd.smax[:r] >= m, cand, INF)
            k = cand.argmin(axis=2)                                      # G x r
            ri = np.arange(r)[None, :]
            arg = Jr[ri, k]
            Dn = np.full((G, n1), INF)
            Dn[:, :r] = cand[gi, ri, k]
            if self.track_pm:
                PMn = np.full((G, n1), INF)
                PMn[:, :r] = np.maximum(bd.P[ri, k], PM[gi, arg])
                PM = PMn
            D = Dn
            self.hist_D.append(D)
            self.hist_PM.append(PM if self.track_pm else None)
            self.hist_arg.append(arg)
            new_D.append(D[:, 0])
            if self.track_pm:
                new_PM.append(PM[:, 0])
        for s in range(max(self.steps, n) + 1, steps + 1):    # more stages than layers
            new_D.append(np.full(G, INF))
            if self.track_pm:
                new_PM.append(np.full(G, INF))
        self._D, self._PM = D, PM
        self.top_D = np.concatenate([self.top_D, np.array(new_D).reshape(-1, G)])
        if self.track_pm:
            self.top_PM = np.concatenate([self.top_PM, np.array(new_PM).reshape(-1, G)])
        self.steps = steps

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


class _RunSet:
    """One shared run (in-flight = position) plus an extension per M whose p goes past M."""

    def __init__(self, band: _Band, caps, track_pm=False):
        self.args = (band, caps)
        self.track_pm = track_pm
        self.base = None
        self.ext = {}

    def ensure(self, need: dict) -> dict:
        """need {M: max p}; returns {M: run covering p = 1..max p}."""
        shared = max((min(M, pm) for M, pm in need.items()), default=0)
        if self.base is None:
            self.base = _Run(*self.args, shared, track_pm=self.track_pm)
        else:
            self.base.advance(shared)
        out = {}
        for M, pm in need.items():
            if pm <= M:
                out[M] = self.base
            elif M in self.ext:
                self.ext[M].advance(pm)
                out[M] = self.ext[M]
            else:
                self.ext[M] = out[M] = _Run(*self.args, pm, frozen_m=M, start=self.base, s0=M,
                                            track_pm=self.track_pm)
        return out


def _need(pairs: dict, dinfo: dict) -> dict:
    need: dict = {}
    for d, ps in pairs.items():
        if len(ps):
            M = dinfo[d][0]
            need[M] = max(need.get(M, 0), int(ps[-1]))
    return need


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
    # lower bound of any stage's max load: the largest layer, the average (loads >= compute)
    comp = rg.comp[np.arange(n), np.arange(1, n + 1)] if n else np.zeros(0)
    Lmax_layer, Ltot = (float(comp.max()), float(comp.sum())) if n else (0.0, 0.0)
    best = None            # (obj, run, g, d, p)
    sets = {}
    first = 8              # pass 1: few stages, for an incumbent; pass 2: what the bound allows

    def scan(key, pairs):
        nonlocal best
        runs = sets[key].ensure(_need(pairs, dinfo))
        for d, ps in pairs.items():
            if not len(ps):
                continue
            M, _pm, (al, be) = dinfo[d]
            run = runs[M]
            B, pm = run.top_D[ps, 0], run.top_PM[ps, 0]
            obj = (M + ps - 1) * B + al * pm + be
            k = int(np.argmin(obj))
            if np.isfinite(obj[k]) and (best is None or obj[k] < best[0]):
                best = (float(obj[k]), run, 0, d, int(ps[k]))

    for key, dps in groups.items():
        inter, static = key
        band = _Band(rg.load(*links.link(inter)), rg.P, rg.smax(static, hbm))
        sets[key] = _RunSet(band, np.array([INF]), track_pm=True)
        scan(key, {d: ps[ps <= first] for d, ps in dps.items()})
    for key, dps in groups.items():
        pairs = {}
        for d, ps in dps.items():
            ps = ps[ps > first]
            if best is not None and len(ps):
                M, _pm, (al, be) = dinfo[d]
                lb = (M + ps - 1) * np.maximum(Lmax_layer, Ltot / ps) + \
                    al * np.maximum(Pmax_layer, Ptot / ps) + be
                ps = ps[lb < best[0] * (1 + _REL)]
            pairs[d] = ps
        scan(key, pairs)
    # the uncapped pass covered every (d, p) its bound could not exclude; keep those p
    for key, dps in groups.items():
        for d in list(dps):
            M, _pm, (al, be) = dinfo[d]
            ps = dps[d]
            if best is not None:
                lb = (M + ps - 1) * np.maximum(Lmax_layer, Ltot / ps) + \
                    al * np.maximum(Pmax_layer, Ptot / ps) + be
                dps[d] = ps[lb < best[0] * (1 + _REL)]
    if best is not None:
        U = best[0] * (1 + _REL)
        allP = np.unique(rg.P[rg.valid])
        for key, dps in groups.items():
            # caps that could still beat the incumbent for some (d, p): see the docstring
            runs = sets[key].ensure(_need(dps, dinfo))
            band = sets[key].args[0]
            capmask = np.zeros(len(allP) + 1, dtype=int)
            pairs = {}
            for d, ps in dps.items():
                M, _pm, (al, be) = dinfo[d]
                if d == 1 or al <= 0 or not len(ps):
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
            need = _need(pairs, dinfo)
            for k0 in range(0, len(caps), 64):
                cb = caps[k0:k0 + 64]
                cruns = _RunSet(band, cb).ensure(need)
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
