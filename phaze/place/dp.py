"""Default-mode placement DP (the one behind the search): the reference DP's structure with
the realistic terms of phaze/place/plan.py.

For one chain (TP width t, microbatch mbs) it finds the 1F1B plan (contiguous stages, p, d)
of least time per batch
    T = (M + p - 1) * max_stage load + max_stage [allreduce(stage params, d) + step(stage params)]
subject to every stage's memory at its position fitting in HBM, p t d <= devices, and
(by default) d mbs dividing the batch. Interleaved 1F1B (v >= 2) uses Megatron's uniform
split and is evaluated directly for every admissible p.

Exact algorithm. `best_plans` solves several scenarios (recompute flag, HBM size) of one
chain at once: they are a batch dimension of every table below.
  * B_c[s][i] = least max stage load of the suffix [i, n) cut into s stages whose params are
    <= cap c and whose memory fits at their 1F1B position; the stage at suffix position s
    keeps min(s, M) microbatches in flight. The DP runs over s (one numpy step per s over
    all rows i, stage ends j and batch entries). For s <= M the table does not depend on d,
    so one run serves every d; a d with pmax(d) > M continues from step M with the
    in-flight count frozen at M (an "extension").
  * Loads depend on d only through the p2p link kind (inter-node iff t d p > node size),
    memory through M (above) and, with ZeRO-1, the bytes per parameter: d's with the same
    (link kind, bytes per parameter) share runs.
  * Band: memory only grows with a range, so a stage is at most w layers long, w the
    longest range that fits at in-flight 1; step s only visits ends j <= i + w and rows
    n - s w <= i <= n - s.
  * Stage counts: a memory greedy (`_fewest_stages`, from the chain's end, each position
    takes the longest range that fits) gives the least feasible p per scenario and M
    exactly; counts below it are skipped, and a d with none feasible costs no step. Counts
    are explored in windows 1..8, 9..16, 17..32, ... (FIRST_WINDOW = 8); before each window,
    (d, p) pairs whose lower bound (M + p - 1) max(largest layer load, total load / p) +
    AR_d(max(largest layer params, total params / p)) cannot beat the scenario's incumbent
    are dropped, so runs stop early.
  * The max over stages of the all-reduce does not decompose over the DP:
        T*(d, p) = min_c [ (M + p - 1) B_c(p) + AR_d(c) ]
    exact because the optimum's own largest stage is one of the caps. The uncapped run also
    tracks the params of the largest stage of its argmin partition (an upper bound for every
    (d, p) and the incumbent U); a cap c only needs a capped run when, for some (d, p),
        max(largest layer params, total params / p) <= c < that largest stage's params
        and (M + p - 1) B_inf(p) + AR_d(c) < U.
    The surviving caps of every scenario run as one more batch (entries = (scenario, cap)),
    shared by every d.
The optimizer step (a memory-bound pass over a device's parameters, or its ZeRO shard:
plan.step_s_per_param) is linear in the stage's params like the all-reduce: it is folded
into the same coefficient (plan.dp_sync_coeffs), so "AR" below is the sync plus the step.
With expert parallelism (ep > 1) the routed experts' gradients go over their own group
(plan.grad_groups), so a stage's sync is al Pd + be + [Pe > 0] (ale Pe + bee): "params"
above is then the stage weight W = Pd + (ale / al) Pe + (bee / al) [Pe > 0] of its d
(_Ranges.weight; monotone in the range like params, so every argument above holds).
Only each scenario's winner is evaluated with plan.evaluate_plan (the source of truth for
the plan dict). The old per-d, per-cap version took 0.15-0.8 s per work item (4 TP widths);
see benchmarks/bench_place_default.py for the current figures.
"""

from __future__ import annotations

import math

import numpy as np

from phaze.place.chain import Chain
from phaze.settings import RECOMPUTE_MODES
from phaze.place.plan import (Links, PlanOptions, axes_chain, chain_eps, dp_sync_coeffs,
                              evaluate_plan, expert_grid_error, hop_pattern, p2p_time,
                              pipeline_level, uniform_stages, with_axes)

INF = math.inf
_REL = 1e-12          # relative slack when pruning with bounds (never prunes a true optimum)


def _prefix(x):
    return np.concatenate(([0.0], np.cumsum(x)))


class _Ranges:
    """[i, j) matrices of one chain for one recompute flag (loads per pipeline link kind).
    `split_experts` (ep > 1): the routed experts' params Pe are kept apart from the dense
    ones Pd (their own gradient group, plan.grad_groups); else Pe = 0."""

    def __init__(self, chain: Chain, recompute: str, split_experts: bool = False):
        n = chain.n
        self.chain = chain
        ii = np.arange(n + 1)[:, None]
        jj = np.arange(n + 1)[None, :]
        self.ii, self.jj = ii, jj
        self.valid = jj > ii
        Fp, Bp, Pp = _prefix(chain.fwd_s), _prefix(chain.bwd_s), _prefix(chain.param_count)
        Ap = _prefix(chain.act_bytes(recompute))
        Rp = _prefix(chain.recompute_s(recompute))
        self.comp = (Fp[jj] - Fp[ii]) + (Rp[jj] - Rp[ii]) + (Bp[jj] - Bp[ii])
        self.fb = (Fp[jj] - Fp[ii]) + (Bp[jj] - Bp[ii])     # ZeRO-2/3 overlap window
        self.P = np.where(self.valid, Pp[jj] - Pp[ii], 0.0)
        self.P[0, n] -= chain.shared_param_count   # one stage: the tied head is no copy
        Ep = _prefix(chain.expert_param_count if split_experts else np.zeros(n))
        self.Pe = np.where(self.valid, Ep[jj] - Ep[ii], 0.0)
        self.Pd = self.P - self.Pe
        self._W = {}
        self.A = np.where(self.valid, Ap[jj] - Ap[ii], 0.0)
        # rematerialised activations of the stage's largest layer (plan.evaluate_plan)
        work = np.zeros((n + 1, n + 1))
        a = chain.work_bytes(recompute)
        if a.any():
            for i in range(n):
                work[i, i + 1:] = np.maximum.accumulate(a[i:])
        self.work = work
        self._load = {}

    def weight(self, r: float, c: float) -> np.ndarray:
        """W = Pd + r Pe + c [Pe > 0] of every range: a stage's DP sync per batch is
        al W + be when its dense params cost al Pd + be and its experts r al Pe + c al
        (plan.dp_sync_coeffs; nothing when it holds no experts). W grows with the range,
        so the caps on the largest stage's W stay exact (module docstring)."""
        if (r, c) == (1.0, 0.0):
            return self.P
        if (r, c) not in self._W:
            self._W[(r, c)] = np.where(self.valid, self.Pd + r * self.Pe
                                       + c * (self.Pe > 0), 0.0)
        return self._W[(r, c)]

    def load(self, link_in: tuple, link_out: tuple, a_mb: float = 0.0,
             b_mb: float = 0.0, a_mb_e: float = 0.0, b_mb_e: float = 0.0) -> np.ndarray:
        """Load per microbatch of every range whose incoming hop runs on link_in (bw, lat)
        and outgoing hop on link_out, plus ZeRO-2/3's exposed per-microbatch communication
        a_mb Pd + b_mb (+ a_mb_e Pe + b_mb_e for the experts' group, when the range holds
        any) (plan.extended_terms: the larger of one layer's share and what the stage's
        forward + backward cannot hide)."""
        key = (link_in, link_out, a_mb, b_mb, a_mb_e, b_mb_e)
        if key not in self._load:
            def edge(link):      # cin[i] / cout[j]: boundary after layer i - 1 / j - 1
                comm = p2p_time(self.chain.out_bytes, *link)
                return np.concatenate(([0.0], comm[:-1], [0.0]))
            load = edge(link_in)[self.ii] + self.comp + edge(link_out)[self.jj]
            if a_mb or b_mb or a_mb_e or b_mb_e:
                per = np.where(self.Pd > 0, a_mb * self.Pd + b_mb, 0.0) + \
                    np.where(self.Pe > 0, a_mb_e * self.Pe + b_mb_e, 0.0)
                layers = np.maximum(self.jj - self.ii, 1)
                load = load + np.maximum(per / layers, per - self.fb)
            self._load[key] = np.where(self.valid, load, INF)
        return self._load[key]

    def smax(self, static_per_param, hbm: float) -> np.ndarray:
        """Largest in-flight count m at which each stage fits (inf: any, -1: none).
        `static_per_param`: bytes per parameter, or (dense, expert) bytes per parameter."""
        sd, se = static_per_param if isinstance(static_per_param, tuple) else \
            (static_per_param, static_per_param)
        base = (self.Pd * sd + self.Pe * se if self.Pe.any() else self.P * sd) + self.work
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.floor((hbm - base) / np.where(self.A > 0, self.A, 1.0))
        s = np.where(self.A > 0, s, INF)
        s = np.where(base <= hbm, s, -1.0)
        return np.where(self.valid, s, -1.0)


class _BandShape:
    """The band of one bytes-per-parameter value for a list of scenarios (recompute flag,
    HBM size): a stage starting at i can only end at j = i + 1 + k, k < w, w the longest
    stage that fits in HBM at in-flight count 1 in some scenario (memory only grows with
    the range, so longer stages never fit); the banded memory and parameter tables."""

    def __init__(self, P, smaxes):
        n1 = P.shape[0]
        n = n1 - 1
        w = 1
        for sm in smaxes:
            fits = sm >= 1
            ends = np.where(fits.any(axis=1), n1 - 1 - np.argmax(fits[:, ::-1], axis=1), 0)
            w = max(w, int((ends - np.arange(n1)).max()))
        J = np.arange(n1)[:, None] + 1 + np.arange(w)[None, :]
        self.inb = J <= n
        self.J = np.minimum(J, n)
        self.rows = np.arange(n1)[:, None]
        self.smax = np.stack([np.where(self.inb, sm[self.rows, self.J], -1.0) for sm in smaxes])
        self.P = P[self.rows, self.J]
        self.n, self.w = n, w


class _Band:
    """A _BandShape with the loads of one hop schedule: `load_of((in level, out level))`
    the banded per-scenario loads (built on first use from `loads_fn(combo)`, a list of
    [i, j) tables); `combo_of(s)` the (in, out) hop levels of the stage at suffix
    position s."""

    def __init__(self, shape: _BandShape, loads_fn, combo_of):
        self.J, self.smax, self.P = shape.J, shape.smax, shape.P
        self.n, self.w = shape.n, shape.w
        self._shape, self._fn, self.combo_of = shape, loads_fn, combo_of
        self._load: dict = {}

    def load_of(self, combo):
        if combo not in self._load:
            sh = self._shape
            self._load[combo] = np.stack([np.where(sh.inb, ld[sh.rows, sh.J], INF)
                                          for ld in self._fn(combo)])
        return self._load[combo]


class _Run:
    """B_e[s][0] for s = 0..steps of a batch of entries e = (scenario sel[e], cap caps[e])
    (`top_D[s, e]`; `top_PM[s, e]`: params of the largest stage of the argmin partition, when
    tracked), plus the argmin tables to rebuild the partitions. Step s uses in-flight count
    min(s, frozen_m) (frozen_m = None: s); an extension starts from `start`'s step s0 with
    the in-flight count frozen. Only rows n - s w <= i <= n - s are computed at step s
    (a suffix needs >= s layers and at most s w), over the band of stage ends. `advance(steps)`
    continues a run (the search extends runs when the incumbent allows more stages)."""

    def __init__(self, band: _Band, sel, caps, steps, frozen_m=None, start=None, s0=0,
                 track_pm=False):
        self.band = band
        n1 = band.n + 1
        self.n = band.n
        G = len(caps)
        self.G, self.frozen_m = G, frozen_m
        self.s0, self.parent, self.track_pm = s0, start, track_pm
        if start is not None:
            self._loadc, self.smaxc = start._loadc, start.smaxc
            self._sel, self._caps = start._sel, start._caps
        else:
            self._loadc = {}                 # (in, out) hop levels -> capped loads
            self._sel, self._caps = sel, caps
            self.smaxc = band.smax[sel]
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

    def loadc(self, s):
        """Loads of the entries (scenario, cap) for the stage at suffix position s."""
        combo = self.band.combo_of(s)
        if combo not in self._loadc:
            ld = self.band.load_of(combo)[self._sel]
            self._loadc[combo] = ld if not np.isfinite(self._caps).any() else \
                np.where(self.band.P[None] <= self._caps[:, None, None], ld, INF)
        return self._loadc[combo]

    def advance(self, steps):
        if steps <= self.steps:
            return
        n, G, bd = self.n, self.G, self.band
        n1 = n + 1
        D, PM = self._D, self._PM
        gi = np.arange(G)[:, None]
        rows_all = np.arange(n1)[None, :]
        s_hi = min(steps, n)
        k_new = max(0, s_hi - self.steps)
        Dbuf = np.full((k_new, G, n1), INF)
        PMbuf = np.full((k_new, G, n1), INF) if self.track_pm else None
        for q, s in enumerate(range(self.steps + 1, s_hi + 1)):
            # rows lo..n-s: a suffix needs >= s layers and at most s * w (stages <= w long)
            r, lo = n - s + 1, max(0, n - s * bd.w)
            m = self.frozen_m if self.frozen_m is not None else s
            Jr = bd.J[lo:r]
            cand = np.maximum(self.loadc(s)[:, lo:r], D[:, Jr])          # G x rows x w
            cand[self.smaxc[:, lo:r] < m] = INF
            k = cand.argmin(axis=2)                                      # G x rows
            D = Dbuf[q]
            D[:, lo:r] = cand.min(axis=2)
            if self.track_pm:
                ri = rows_all[:, :r - lo]
                PMn = PMbuf[q]
                PMn[:, lo:r] = np.maximum(bd.P[lo:r][ri, k], PM[gi, Jr[ri, k]])
                PM = PMn
            self.hist_D.append(D)
            self.hist_PM.append(PM if self.track_pm else None)
            self.hist_arg.append((lo, k))        # stage end of row i: J[i, k[:, i - lo]]
        extra = steps - max(self.steps, s_hi)             # more stages than layers: none
        self._D, self._PM = D, PM
        parts = [self.top_D, Dbuf[:, :, 0], np.full((extra, G), INF)]
        self.top_D = np.concatenate(parts)
        if self.track_pm:
            self.top_PM = np.concatenate([self.top_PM, PMbuf[:, :, 0], np.full((extra, G), INF)])
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
            lo, k = self.arg_at(pos)
            j = int(self.band.J[i, k[g, i - lo]])
            out.append((i, j))
            i = j
        assert i == n
        return out


def d_candidates(chain: Chain, devices: int, batch: int, options: PlanOptions) -> list[int]:
    """Data-parallel degrees to try: t cp d <= devices, the expert grid tiling the t cp d
    ranks of a stage (plan.expert_grid_error: ep divides d cp when expert_tp = t,
    Megatron-Core), d mbs dividing the batch if exact."""
    top = devices // (chain.t * options.cp)
    if options.exact_batch:
        if batch % chain.mbs:
            return []
        nmb = batch // chain.mbs
        ds = [d for d in range(1, min(top, nmb) + 1) if nmb % d == 0]
    else:
        ds = list(range(1, min(top, -(-batch // chain.mbs)) + 1))
    return [d for d in ds if not expert_grid_error(options, chain.t, d)]


class _RunSet:
    """One shared run (in-flight = position) plus an extension per M whose p goes past M."""

    def __init__(self, band: _Band, sel, caps, track_pm=False):
        self.args = (band, np.asarray(sel), np.asarray(caps, dtype=float))
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


def _fewest_stages(smaxes: list, Ms: list, n: int) -> np.ndarray:
    """Least p for which the stages can fit in memory at all (inf: none), for every scenario
    (smax table) and in-flight cap M: result[g, k] for smaxes[g], Ms[k]. From the chain's
    end, the stage at position s = 1, 2, ... (in-flight min(s, M)) takes the longest range
    ending at the current boundary that fits. Memory grows with a range, so any feasible
    p-stage partition has its k-th stage from the end starting no earlier than the greedy's
    (exchange argument), and the greedy's own partition is feasible: the result is exact.
    All (scenario, M) pairs advance together, one numpy step per position."""
    S = np.stack(smaxes)
    G0, K = len(smaxes), len(Ms)
    gg = np.repeat(np.arange(G0), K)
    Mv = np.tile(np.asarray(Ms, dtype=float), G0)
    E = len(gg)
    j = np.full(E, n)
    res = np.full(E, INF)
    active = np.ones(E, dtype=bool)
    iidx = np.arange(n + 1)[None, :]
    for s in range(1, n + 1):
        m = np.minimum(float(s), Mv)
        ok = (S[gg, :, j] >= m[:, None]) & (iidx < j[:, None])         # E x (n + 1)
        fit = ok.any(axis=1)
        first = ok.argmax(axis=1)
        active &= fit                                                   # stalled: infeasible
        j = np.where(active, first, j)
        done = active & (j == 0)
        res[done] = s
        active &= ~done
        if not active.any():
            break
    return res.reshape(G0, K)


def _used_pattern(q: int, pattern: tuple, pmax: int) -> tuple[int, tuple]:
    """The shortest period of the hop levels of the hops 1..pmax-1 that pipelines of at
    most pmax ranks use (level h of hop b = pattern[b % q]): p and p' = p (mod q') then
    see the same level at every stage index, so they share runs. E.g. 8-device nodes,
    256-device pods, one device per rank and pmax 98: q = 256 but q' = 8."""
    seq = [pattern[b % q] for b in range(1, pmax)]
    for qq in range(1, q + 1):
        if all(seq[i] == seq[i + qq] for i in range(len(seq) - qq)):
            out = [0] * qq
            for b in range(1, pmax):
                out[b % qq] = seq[b - 1]
            return qq, tuple(out)
    return q, pattern


def _hop_schedule(kind):
    """combo_of of a group key's hop part: combo_of(s) = (level of the hop into,
    level of the hop out of) the stage at suffix position s. Two-level networks: one level
    (`kind`) for every hop. Levels: kind = (pattern, phase), the pipelines of p = phase
    (mod q) whose stage at suffix position s has index k = p - s, entered by hop k and left
    by hop k + 1 (plan.hop_pattern)."""
    if not isinstance(kind, tuple):
        return lambda s: (kind, kind)
    pattern, phase = kind
    q = len(pattern)

    def combo_of(s):
        return pattern[(phase - s) % q], pattern[(phase - s + 1) % q]
    return combo_of


def _need(pairs: dict, dinfo: dict) -> dict:
    need: dict = {}
    for d, ps in pairs.items():
        if len(ps):
            M = dinfo[d][0]
            need[M] = max(need.get(M, 0), int(ps[-1]))
    return need


FIRST_WINDOW = 8     # pass 1 scans stage counts 1..8 (incumbents); windows then double
CAP_BATCH = 64       # (scenario, cap) entries per capped run (bounds one run's memory)


def _solve(chain: Chain, devices: int, batch: int, scen: list, links: Links,
           options: PlanOptions, peak_flops: float, interleaves, bound=None,
           hbm_bw_Bps: float = 0.0) -> list:
    """Best plan (or None) of every scenario (recompute, hbm_bytes) in `scen`. The DP runs
    on the chain as context and expert parallelism make it (plan.axes_chain: the CP ring
    steps, the EP all-to-alls); winners are evaluated from `chain` by evaluate_plan,
    which applies the same transformation.
    `bound` (per scenario): a time some other plan already reaches (another axis value);
    (d, p) pairs that cannot beat it are pruned, and a scenario with nothing faster
    answers None (or an interleaved plan, evaluated directly)."""
    run_chain = axes_chain(chain, links, options)
    rgs = {rec: _Ranges(run_chain, rec, split_experts=options.ep > 1) for rec, _h in scen}
    search = _PlanSearch(rgs, run_chain, devices, batch, scen, links, options, hbm_bw_Bps)
    search.source_chain = chain
    if bound is not None:
        search.U = np.asarray(bound, dtype=float).copy()
        search.bound = search.U.copy()
    search.first_pass()
    search.window_passes()
    search.capped_runs()
    return [search.plan(g, peak_flops, interleaves) for g in range(len(scen))]


class _PlanSearch:
    """The DP search of `_solve` over the scenarios `scen` of one chain: the (d, p) pairs
    per (link kind, bytes per parameter) group, the layer bounds, and per scenario the
    incumbent U[g] with its argmin best[g] = (obj, run, entry, d, p)."""

    def __init__(self, rgs: dict, chain: Chain, devices: int, batch: int, scen: list,
                 links: Links, options: PlanOptions, hbm_bw_Bps: float = 0.0):
        self.rgs, self.chain, self.batch, self.scen = rgs, chain, batch, scen
        self.hbm_bw_Bps = hbm_bw_Bps     # times the optimizer step (with the DP sync)
        self.source_chain = chain        # what evaluate_plan gets (before EP)
        self.bound = np.full(len(scen), INF)     # a time reached elsewhere (other axes)
        self.links, self.options = links, options
        self.n = chain.n
        self.G0 = len(scen)
        self.wkey: dict = {}         # d -> (r, c) of its stage weight W (_Ranges.weight)
        self._wb: dict = {}          # (r, c) -> (largest layer W, total W), lower bounds
        self._allW: dict = {}        # (r, c) -> every distinct stage W (the candidate caps)
        self.groups, self.dinfo = self._groups(devices)
        self._layer_bounds()
        self.best = [None] * self.G0
        self.U = np.full(self.G0, INF)
        self.sets: dict = {}
        self._smax: dict = {}        # bytes per parameter -> per-scenario smax tables
        self._shapes: dict = {}      # (bytes per parameter, W key) -> _BandShape
        self._lb: dict = {}          # d -> lower bounds for p = 1..pmax
        self.p_lo: dict = {}     # (bytes per param, M) -> least feasible p per scenario

    def _groups(self, devices: int):
        """(d, p range) grouped by (link kind, bytes per param, ZeRO-2/3 per-microbatch
        coefficients, W key): {key: {d: p array}}, and dinfo {d: (M, pmax, all-reduce
        coefficients of the dense params)}. With ep > 1 the routed experts have their own
        group (plan.grad_groups): bytes per parameter and per-microbatch coefficients come
        in (dense, expert) pairs and a stage's sync is al W + be, W = Pd + r Pe + c [Pe > 0]
        with r, c the expert group's coefficients over al (self.wkey[d])."""
        chain, links, options, t = self.chain, self.links, self.options, self.chain.t
        groups: dict = {}
        dinfo = {}
        cp = options.cp
        split = options.ep > 1
        for d in d_candidates(chain, devices, self.batch, options):
            M = -(-self.batch // (chain.mbs * d))
            pmax = min(self.n, devices // (t * cp * d))
            if pmax < 1:
                continue
            al, be, a_mb, b_mb = dp_sync_coeffs(options, links, t, d, hbm_bw_Bps=self.hbm_bw_Bps)
            dinfo[d] = (M, pmax, (al, be))
            static = options.static_bytes_per_param(d)
            wkey = (1.0, 0.0)
            mb = (a_mb, b_mb)
            if split:
                ale, bee, a_mbe, b_mbe = dp_sync_coeffs(options, links, t, d, expert=True,
                                                        hbm_bw_Bps=self.hbm_bw_Bps)
                static = (static, options.static_bytes_per_param(d, expert=True, t=t))
                mb = (a_mb, b_mb, a_mbe, b_mbe)
                if al > 0:
                    wkey = (ale / al, bee / al)
            self.wkey[d] = wkey
            ps = np.arange(1, pmax + 1)
            if links.levels:     # per-hop levels: runs shared by the p of one phase p % q
                q, pattern = _used_pattern(*hop_pattern(t * cp * d, links), pmax)
                for phase in range(q):
                    sel = ps[ps % q == phase]
                    if len(sel):
                        groups.setdefault(((pattern, phase), static, mb, wkey), {})[d] = sel
                continue
            inter = pipeline_level(t * cp, d, ps, links)     # numpy-aware
            for kind in (False, True):
                sel = ps[inter == kind]
                if len(sel):
                    groups.setdefault((kind, static, mb, wkey), {})[d] = sel
        return groups, dinfo

    def _layer_bounds(self) -> None:
        """Lower bounds of any stage's max load (the largest layer, the average: loads >=
        compute); those of its params (stage weight W) are `wbounds`."""
        n = self.n
        self.Lmax_layer, self.Ltot = np.zeros(self.G0), np.zeros(self.G0)
        for g, (rec, _h) in enumerate(self.scen):
            comp = self.rgs[rec].comp[np.arange(n), np.arange(1, n + 1)]
            self.Lmax_layer[g], self.Ltot[g] = comp.max(), comp.sum()

    def wbounds(self, wkey) -> tuple[float, float]:
        """(largest layer's W, total W) of the stage weight `wkey` (_Ranges.weight): any
        stage (device) holding a layer has W >= that layer's (a single stage: >= the whole
        chain's, less a tied head's copy), and the stages' W add up to >= the total."""
        if wkey not in self._wb:
            r0 = self.rgs[self.scen[0][0]]
            W, n = r0.weight(*wkey), self.n
            tot = float(r0.Pd[0, n] + wkey[0] * r0.Pe[0, n])
            self._wb[wkey] = (min(float(W[np.arange(n), np.arange(1, n + 1)].max()),
                                  float(W[0, n])), tot)
        return self._wb[wkey]

    def lower_bound(self, d, ps):      # len(ps) x G0 (one table per d, built once)
        tab = self._lb.get(d)
        if tab is None:
            M, pm, (al, be) = self.dinfo[d]
            a = np.arange(1, pm + 1)[:, None]
            wmax, wtot = self.wbounds(self.wkey[d])
            tab = self._lb[d] = (M + a - 1) * np.maximum(self.Lmax_layer[None, :],
                                                         self.Ltot[None, :] / a) \
                + al * np.maximum(wmax, wtot / a) + be
        return tab[np.asarray(ps) - 1]

    def scan(self, key, pairs) -> None:
        """Uncapped objective of every (d, p) in `pairs`; improves the incumbents."""
        if not any(len(ps) for ps in pairs.values()):
            return
        runs = self._runset(key).ensure(_need(pairs, self.dinfo))
        for d, ps in pairs.items():
            if not len(ps):
                continue
            M, _pm, (al, be) = self.dinfo[d]
            run = runs[M]
            B = run.top_D[ps]
            with np.errstate(invalid="ignore"):                # 0 * inf where d = 1
                obj = (M + ps[:, None] - 1) * B + al * run.top_PM[ps] + be     # p x G0
            obj = np.where(np.isfinite(B), obj, INF)
            k = np.argmin(obj, axis=0)
            for g in range(self.G0):
                o = obj[k[g], g]
                if o < self.U[g]:
                    self.U[g] = o
                    self.best[g] = (float(o), run, g, d, int(ps[k[g]]))

    def first_pass(self) -> None:
        """Per group: least feasible stage counts, the band and the uncapped run set, and a
        scan of the first FIRST_WINDOW stage counts (incumbents for the bounds)."""
        rgs, scen, dinfo, p_lo = self.rgs, self.scen, self.dinfo, self.p_lo
        smax_cache = self._smax
        for key, dps in self.groups.items():
            inter, static, mb, _w = key
            if static not in smax_cache:
                smax_cache[static] = [rgs[rec].smax(static, hbm) for rec, hbm in scen]
            smaxes = smax_cache[static]
            # stage counts below what memory allows are infinite in the DP anyway; a d whose
            # M admits no feasible count in any scenario needs no steps at all
            Ms = sorted({dinfo[d][0] for d in dps if (static, dinfo[d][0]) not in p_lo})
            if Ms:
                lo_all = _fewest_stages(smaxes, Ms, self.n)
                for k, M in enumerate(Ms):
                    p_lo[(static, M)] = lo_all[:, k]
            for d in list(dps):
                dps[d] = dps[d][dps[d] >= p_lo[(static, dinfo[d][0])].min()]
            self.scan(key, self.prune(key, dps, 0, FIRST_WINDOW))

    def _runset(self, key) -> "_RunSet":
        """The uncapped run set of a group, built on first use (groups whose pairs are all
        pruned never build one)."""
        if key not in self.sets:
            inter, static, mb, wkey = key
            if (static, wkey) not in self._shapes:
                self._shapes[(static, wkey)] = _BandShape(self.rgs[self.scen[0][0]].weight(*wkey),
                                                          self._smax[static])
            combo_of = _hop_schedule(inter)
            lk, rgs, scen = self.links.link, self.rgs, self.scen

            def loads_fn(c):
                return [rgs[rec].load(lk(c[0]), lk(c[1]), *mb) for rec, _h in scen]
            band = _Band(self._shapes[(static, wkey)], loads_fn, combo_of)
            self.sets[key] = _RunSet(band, np.arange(self.G0), np.full(self.G0, INF),
                                     track_pm=True)
        return self.sets[key]

    def prune(self, key, dps, above=0, upto=None):
        """Stage counts some scenario still needs: memory admits them (p >= least feasible
        p of that scenario) and the bound does not rule them out."""
        out = {}
        for d, ps in dps.items():
            ps = ps[(ps > above) & (ps <= (upto or ps[-1] if len(ps) else 0))]
            if len(ps):
                lo = self.p_lo[(key[1], self.dinfo[d][0])]
                keep = (self.lower_bound(d, ps) < self.U[None, :] * (1 + _REL)) \
                    & (ps[:, None] >= lo[None, :])
                ps = ps[keep.any(axis=1)]
            out[d] = ps
        return out

    def window_passes(self) -> None:
        """Pass 2, in doubling windows of stage counts: each window is pruned with the
        incumbents found so far (more stages cost steps; the bound drops hopeless counts
        before they run)."""
        lo_p, hi_p = FIRST_WINDOW, 2 * FIRST_WINDOW
        while lo_p < self.n:
            for key, dps in self.groups.items():
                self.scan(key, self.prune(key, dps, lo_p, hi_p))
            lo_p, hi_p = hi_p, 2 * hi_p

    def all_params(self, wkey=(1.0, 0.0)):
        """Every distinct stage weight W (_Ranges.weight; the candidate caps), built on
        first use."""
        if wkey not in self._allW:
            r = self.rgs[self.scen[0][0]]
            self._allW[wkey] = np.unique(r.weight(*wkey)[r.valid])
        return self._allW[wkey]

    def capped_runs(self) -> None:
        """Caps (see the module docstring); every (d, p) left was scanned uncapped."""
        for key, dps in self.groups.items():
            dps = self.prune(key, dps)
            if not any(len(ps) for ps in dps.values()):
                continue
            runs = self._runset(key).ensure(_need(dps, self.dinfo))
            sel_e, cap_e, pairs = [], [], {}
            for g in range(self.G0):
                if np.isfinite(self.U[g]):
                    caps = self._caps_of(g, dps, runs, pairs, key[3])
                    if caps is not None:
                        sel_e.append(np.full(len(caps), g))
                        cap_e.append(caps)
            if pairs:
                self._scan_caps(self.sets[key].args[0], np.concatenate(sel_e),
                                np.concatenate(cap_e), pairs)

    def _caps_of(self, g, dps, runs, pairs, wkey=(1.0, 0.0)):
        """Caps (on the stage weight `wkey`) scenario g needs (None: none); adds the (d, p)
        pairs they serve to `pairs`."""
        U = self.U
        capmask = None
        for d, ps in dps.items():
            M, _pm, (al, be) = self.dinfo[d]
            if al <= 0 or not len(ps):      # no sync (d cp = 1): no cap matters
                continue
            run = runs[M]
            B, pm = run.top_D[ps, g], run.top_PM[ps, g]
            allP = self.all_params(wkey)
            wmax, wtot = self.wbounds(wkey)
            lo = np.maximum(wmax, wtot / ps) * (1 - _REL)
            with np.errstate(invalid="ignore"):
                hi = np.minimum((U[g] * (1 + _REL) - (M + ps - 1) * B - be) / al * (1 + _REL),
                                pm)
            a = np.searchsorted(allP, lo, side="left")
            b = np.minimum(np.searchsorted(allP, hi, side="right"),      # c <= hi, c < pm
                           np.searchsorted(allP, pm, side="left"))
            ok = np.isfinite(B) & (b > a)
            if ok.any():
                if capmask is None:
                    capmask = np.zeros(len(allP) + 1, dtype=int)
                old = pairs.get(d)
                pairs[d] = ps[ok] if old is None else np.union1d(old, ps[ok])
                np.add.at(capmask, a[ok], 1)
                np.add.at(capmask, b[ok], -1)
        if capmask is None:
            return None
        return self.all_params(wkey)[np.cumsum(capmask[:-1]) > 0]

    def _scan_caps(self, band, sel_e, cap_e, pairs) -> None:
        """Capped runs of the entries (scenario sel_e, cap cap_e), CAP_BATCH at a time;
        improves the incumbents."""
        need = _need(pairs, self.dinfo)
        for k0 in range(0, len(cap_e), CAP_BATCH):
            se, cb = sel_e[k0:k0 + CAP_BATCH], cap_e[k0:k0 + CAP_BATCH]
            cruns = _RunSet(band, se, cb).ensure(need)
            for d, ps in pairs.items():
                M, _pm, (al, be) = self.dinfo[d]
                run = cruns[M]
                obj = (M + ps[:, None] - 1) * run.top_D[ps] + al * cb[None, :] + be   # p x E
                kp = np.argmin(obj, axis=0)
                o = obj[kp, np.arange(len(cb))]
                for g in np.unique(se):
                    idx = np.flatnonzero(se == g)
                    e = int(idx[np.argmin(o[idx])])
                    if o[e] < self.U[g]:
                        self.U[g] = o[e]
                        self.best[g] = (float(o[e]), run, e, d, int(ps[kp[e]]))

    def plan(self, g: int, peak_flops: float, interleaves):
        """Scenario g's plan dict (or None): its DP winner evaluated with plan.evaluate_plan,
        or an interleaved schedule (uniform split, evaluated directly) when faster. Only the
        depths in `interleaves` are answered: without 1 the DP's plain-1F1B winner is not
        (it still bounds the search)."""
        chain, batch = self.source_chain, self.batch
        rec, hbm = self.scen[g]
        ev = dict(hbm_bytes=hbm, links=self.links, options=self.options, peak_flops=peak_flops,
                  hbm_bw_Bps=self.hbm_bw_Bps)
        plan = None
        if self.best[g] is not None and 1 in interleaves:
            _obj, run, e, d, p = self.best[g]
            plan = evaluate_plan(chain, p, d, batch, rec, 1, stages=run.stages(e, p, self.n),
                                 **ev)
            assert plan["feasible"], "DP plan must fit"
        total = float(self.rgs[rec].comp[0, self.n])      # a device runs >= total / p
        for v in interleaves:
            if v < 2:
                continue
            for d, (M, pmax, (al, be)) in self.dinfo.items():
                for p in range(2, pmax + 1):
                    limit = min(self.bound[g], plan["time_per_batch_s"] if plan else INF)
                    # bound: every device runs >= total / p per microbatch, the largest
                    # device holds >= the average params (the DP's own bound, plus bubble)
                    wmax, wtot = self.wbounds(self.wkey[d])
                    lb = (M + (p - 1) / v) * total / p + al * max(wmax, wtot / p) + be
                    if M % p or lb >= limit * (1 + _REL):      # infeasible / cannot win
                        continue
                    try:
                        st = uniform_stages(chain, p * v)
                    except ValueError:
                        continue
                    cand = evaluate_plan(chain, p, d, batch, rec, v, stages=st, **ev)
                    if cand["feasible"] and (plan is None or
                                             cand["time_per_batch_s"] < plan["time_per_batch_s"]):
                        plan = cand
        return plan


def best_plans(chain: Chain, devices: int, batch: int, hbm_list, recompute_list=("none",), *,
               links: Links | None = None, options: PlanOptions | None = None,
               peak_flops: float = 0.0, interleaves=(1,), eps=None, zero_stages=None,
               bound: dict | None = None, hbm_bw_Bps: float = 0.0) -> dict:
    """Best plan for one chain (its t and mbs fixed) for every (hbm_bytes, recompute) pair:
    {(hbm_bytes, recompute): plan dict or None when nothing fits}. All pairs share one DP
    run per link kind (a batch dimension), so a call with several costs far less than as
    many best_plan calls.
    Axes beyond d, p: `eps` (expert-parallel sizes; None: options.ep; only the chain's own
    when its graph was built for one, plan.chain_eps) and `zero_stages`
    (0..3; None: as options say) are searched too, one DP per (ep, stage) (plan.with_axes),
    the fastest plan kept (ties: the larger ep, then the larger stage: they run first). Context parallelism is
    options.cp with `chain` built for seq / cp (like t, the chain's own width).
    `bound` {(hbm_bytes, recompute): seconds} (optional): times other plans already reach
    (another chain variant); a pair answers None unless a plan beats its bound, and
    the DP prunes with it.
    `hbm_bw_Bps` (achieved HBM bandwidth; 0: not timed) times the optimizer step
    (options.optimizer_bytes_per_param), charged per stage with its DP sync
    (plan.step_s_per_param), as evaluate_plan does."""
    options = options or PlanOptions()
    if hbm_bw_Bps > 0 and (options.grad_accum_bytes_per_param > 0
                           or options.ddp_bucket_copy_bytes_per_param > 0):
        # memory passes per microbatch / per batch the DP's stage loads do not carry
        raise ValueError("the DP does not search with grad_accum_bytes_per_param or "
                         "ddp_bucket_copy_bytes_per_param; evaluate such plans")
    if options.p2p_scatter_gather or options.p2p_blocking:
        # its stage loads send whole activations, paired per direction (evaluate_plan's
        # default): a plan with either option would cost otherwise there
        raise ValueError("the DP does not search with p2p_scatter_gather or p2p_blocking; "
                         "evaluate such plans")
    if options.recompute_method != "uniform" or options.recompute_num_layers != 1:
        # per-chunk recomputation depends on where the chunk boundaries fall
        raise ValueError("the DP searches full recomputation of every block (uniform, 1 "
                         "layer); evaluate other recompute methods")
    if eps is not None or zero_stages is not None:
        best: dict = {}
        # widest EP and deepest ZeRO first: they tend to win on large models, and a good
        # incumbent early prunes most (d, p) pairs of the other values
        for ep in sorted(chain_eps(chain, eps, options), reverse=True):
            for z in (sorted(zero_stages, reverse=True) if zero_stages is not None else (None,)):
                inc = {k: (pl["time_per_batch_s"] if pl else INF) for k, pl in best.items()}
                got = best_plans(chain, devices, batch, hbm_list, recompute_list, links=links,
                                 options=with_axes(options, int(ep), z), peak_flops=peak_flops,
                                 interleaves=interleaves, hbm_bw_Bps=hbm_bw_Bps, bound={**(bound or {}), **{
                                     k: min(v, (bound or {}).get(k, INF)) for k, v in inc.items()}})
                for key, pl in got.items():
                    cur = best.get(key)
                    if key not in best or (pl is not None and (
                            cur is None or pl["time_per_batch_s"] < cur["time_per_batch_s"])):
                        best[key] = pl
        return best
    links = links or Links()
    options = options or PlanOptions()
    recs = list(dict.fromkeys(recompute_list))
    for rec in recs:
        if rec not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {rec!r}")
    hbms = list(dict.fromkeys(float(h) for h in hbm_list))
    if chain.n == 0 or not hbms or not recs:
        return {(h, r): None for h in hbms for r in recs}
    scen = [(rec, h) for rec in recs for h in hbms]
    lim = [(bound or {}).get((h, rec), INF) for rec, h in scen]
    plans = _solve(chain, devices, batch, scen, links, options, peak_flops, interleaves, lim,
                   hbm_bw_Bps)
    return {(h, rec): pl for (rec, h), pl in zip(scen, plans)}


def best_plan(chain: Chain, devices: int, batch: int, recompute: str = "none", *,
              hbm_bytes: float, links: Links | None = None, options: PlanOptions | None = None,
              peak_flops: float = 0.0, interleaves=(1,), eps=None,
              zero_stages=None, hbm_bw_Bps: float = 0.0) -> dict | None:
    """Best plan for one chain (its t and mbs fixed); None when nothing fits."""
    return best_plans(chain, devices, batch, [hbm_bytes], [recompute], links=links,
                      options=options, peak_flops=peak_flops, interleaves=interleaves,
                      eps=eps, zero_stages=zero_stages,
                      hbm_bw_Bps=hbm_bw_Bps)[(float(hbm_bytes), recompute)]
