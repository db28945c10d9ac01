"""A DP-free upper bound on samples/s: the pruned search's gate before the DP bound
(phaze.search.waves). It must never be below the placement DP's best samples/s for the
same layer times (tests/test_search_bound.py checks it against the real DP).

For a chain (phaze.place.chain) and the sweep's placement axes (driver.context: devices,
global batch B, links, PlanOptions, interleave depths, ep sizes, ZeRO stages, largest HBM
size), every plan the DP or its interleaved evaluation can return has (phaze.place.plan.
evaluate_plan) time per batch

    T = (M + (p - 1) / v) Lmax + max over ranks of (the DP sync + the optimizer step)
        + [ZeRO-2/3 per-microbatch exposed gathers inside Lmax]

(the step, >= 0 and set by each arch's HBM bandwidth, is left out: the tables here are
arch-independent, and the floor stays below every plan's time)

with M = ceil(B / (mbs d)), d a data-parallel degree of dp.d_candidates, p <= min(n,
devices / (t cp d)). Each term is bounded from below:
  Lmax    >= max(W / p, max over c of ceil(n_c / p) c): a rank's load per microbatch is
          its layers' fwd + recompute + bwd plus p2p and exposed communication (all >= 0);
          W = the sum of that compute over the chain, n_c = the layer instances whose
          compute is >= c (p ranks hold them, so one holds >= ceil(n_c / p) of them;
          c = the largest layer gives L); expert parallelism adds its all-to-alls,
          4 x a2a per MoE layer, to W (plan.expert_parallel_chain);
  bubble  (p - 1) / v with v the deepest interleave the plan may use (v >= 2 needs p >= 2
          and M divisible by p; else v = 1);
  sync    a P + b, P >= the busiest rank's params >= max(total / p, max over q of
          ceil(n_q / p) q) with n_q the layer instances of >= q params (p = 1: the total
          less a tied head's shared copy), (a, b) = plan.dp_sync_coeffs
          (the DP's own per-batch sync: ring or hierarchical all-reduce; with ZeRO-1 a
          reduce-scatter + all-gather; ZeRO-2 the per-batch all-gather; ZeRO-3 nothing,
          its per-microbatch gathers are dropped, >= 0); with expert parallelism the
          routed experts' share syncs over the expert-data-parallel group
          (plan.grad_groups), so (a, b) is the lesser of the dense and expert rates;
  memory  a (d, p) is admitted only when static_bytes_per_param(d) x P <= the largest HBM
          size (weights + gradients + optimizer state with the ZeRO stage's sharding;
          activations and buffers only add; a routed-expert parameter keeps at least the dense
          bytes, its group being smaller), the memory every plan must fit.
T_floor = min over ep (the chain's own when its graph was built for one: plan.chain_eps, as
the DP searches it), ZeRO stage, (d, p) of the above; samples/s <= B / T_floor (0 when no
(d, p) fits). Recompute modes enter through the compute of each layer: the least over the
configured modes (none: 0, selective: the recompute pass, full: the forward).
"""

from __future__ import annotations

import math

import numpy as np

SLACK = 1e-12        # relative: the floor is computed by other float operations than the DP


def pair_tables(chain, ctx: dict) -> list[tuple]:
    """The arch-independent part for one chain (its t, mbs, params, all-to-all bytes; its
    layer times are not read): a list over (ep, ZeRO stage) of (a2a_s, Mb, p, S) with
    a2a_s the all-to-all time expert parallelism adds to W (s per microbatch), and per
    admitted (d, p) pair: Mb = M + bubble, p, S = the sync lower bound (s). `ctx`: the
    keys of phaze.place.driver.context (devices, batch, links, options, interleaves, eps,
    zero_stages, hbm_bytes)."""
    from phaze.place.dp import d_candidates
    from phaze.place.plan import chain_eps, dp_sync_coeffs, expert_parallel_chain, with_axes

    devices, batch, links = ctx["devices"], ctx["batch"], ctx["links"]
    hbm = max(ctx["hbm_bytes"])
    deep = [v for v in ctx["interleaves"] if v >= 2]
    eps = sorted(set(chain_eps(chain, ctx.get("eps") or None, ctx["options"])))
    zs = ctx.get("zero_stages") or (None,)
    out = []
    for ep in eps:
        for z in zs:
            o = with_axes(ctx["options"], int(ep), z)
            ch = expert_parallel_chain(chain, o.ep, links, o)
            a2a_s = float(np.sum(ch.extra.get("ep_a2a_s", 0.0)))
            ptot = float(ch.param_count.sum()) - ch.shared_param_count
            mb, pp, ss = [], [], []
            for d in d_candidates(ch, devices, batch, o):
                pmax = min(ch.n, devices // (ch.t * o.cp * d))
                if pmax < 1:
                    continue
                M = -(-batch // (ch.mbs * d))
                ps = np.arange(1, pmax + 1)
                big = np.where(ps == 1, ptot, np.maximum(ptot / ps, rank_floor(
                    *np.unique(ch.param_count, return_counts=True), ps)))
                fits = big * o.static_bytes_per_param(d) <= hbm
                if not fits.any():
                    continue
                try:
                    a, b = dp_sync_coeffs(o, links, ch.t, d)[:2]
                    if o.ep > 1 and ch.expert_param_count.any():
                        # routed experts sync over their own (expert-data-parallel) group,
                        # at another rate: the busiest rank's P mixes both, so only the
                        # lesser rate (and constant) of the two bounds its sync
                        ae, be = dp_sync_coeffs(o, links, ch.t, d, expert=True)[:2]
                        a, b = min(a, ae), min(b, be)
                except ValueError:        # terms the DP refuses: no sync term charged
                    a = b = 0.0
                sync = a * big + b if ptot > 0 else np.zeros(len(ps))
                bub = ps - 1.0
                for v in deep:
                    bub = np.where((ps >= 2) & (M % ps == 0), np.minimum(bub, (ps - 1) / v), bub)
                mb.append((M + bub)[fits])
                pp.append(ps[fits].astype(float))
                ss.append(sync[fits])
            if mb:
                out.append((a2a_s, np.concatenate(mb), np.concatenate(pp), np.concatenate(ss)))
    return out


def rank_floor(values, counts, p) -> np.ndarray:
    """Per p (array): max over v of ceil(n_v / p) v, n_v = sum of `counts` of values >= v:
    a lower bound on the largest sum any split of the multiset into p groups has (one
    group holds >= ceil(n_v / p) of the n_v items >= v). 0 for no values."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return np.zeros(len(p))
    order = np.argsort(-v)
    v, n = v[order], np.cumsum(np.asarray(counts, dtype=float)[order])
    return (np.ceil(n[None, :] / np.asarray(p, dtype=float)[:, None]) * v[None, :]).max(axis=1)


def time_floor(tables: list, work_s: float, comp_s, counts) -> float:
    """Least time per batch (s) any plan can reach when the chain's layer instances have
    per-microbatch compute `comp_s` (`counts` instances each) summing to `work_s` (module
    docstring); inf when no (d, p) fits in memory."""
    best = math.inf
    keep = np.asarray(counts) > 0
    comp_s, counts = np.asarray(comp_s, dtype=float)[keep], np.asarray(counts)[keep]
    for a2a_s, mb, p, s in tables:
        load = np.maximum(rank_floor(comp_s, counts, p), (work_s + a2a_s) / p)
        best = min(best, float(np.min(mb * load + s)))
    return best * (1 - SLACK)


def min_recompute(fwd, rec_sel, recompute, blocks) -> np.ndarray:
    """Per layer, the least recomputation time over the modes `recompute` (none: 0,
    selective: rec_sel, full: fwd on the transformer blocks, `blocks` 1.0 / 0.0 per layer:
    Chain.block_mask)."""
    opts = {"none": np.zeros_like(fwd), "selective": rec_sel, "full": fwd * blocks}
    return np.min(np.stack([opts[r] for r in recompute]), axis=0)


def chain_samples_per_s(chain, ctx: dict) -> float:
    """Upper bound on the samples/s of the DP on `chain` with the axes of `ctx` (the
    chain's own layer times; for tests and as the second route of PlanFloor)."""
    r = min_recompute(chain.fwd_s, chain.recompute_selective_s, ctx["recompute"],
                      chain.block_mask)
    comp = chain.fwd_s + chain.bwd_s + r
    t = time_floor(pair_tables(chain, ctx), float(comp.sum()), comp, np.ones(chain.n))
    return ctx["batch"] / t if t > 0 else math.inf


class PlanFloor:
    """The bound for every arch of a sweep (phaze.search.pipeline.SweepProblem): the pair
    tables of each graph built once, then per arch only its summed and largest layer
    compute. `samples_per_s(times)` -> {mbs: samples/s bound}."""

    def __init__(self, sp):
        from dataclasses import replace

        from phaze.place.chain import chain_from_graph
        from phaze.place.driver import context

        self.ctx = context(sp.spec.settings, None)
        self.batch = self.ctx["batch"]
        self.graphs = sp.graphs
        self.tables = {}
        for key, g in sp.graphs.items():
            zero = {li: (0.0, 0.0, 0.0) for li in range(len(g.layers))}
            # a graph of cp > 1: its plans use t cp d p devices (the ring's time only adds)
            ctx = {**self.ctx, "options": replace(self.ctx["options"], cp=g.cp)}
            self.tables[key] = pair_tables(chain_from_graph(g, layer_latency=zero), ctx)

    def samples_per_s(self, times: dict) -> dict:
        """{mbs: upper bound on samples/s} from layer times {(mbs, tp, sp, cp, ep,
        layer_index, pass): s} (pipeline.SweepProblem.lower_times's keys); 0 when nothing
        fits."""
        recs = self.ctx["recompute"]
        best: dict = {}
        for key, g in self.graphs.items():
            mbs = key[0]
            n = len(g.layers)
            f = np.array([times[(*key, li, "fwd")] for li in range(n)])
            b = np.array([times[(*key, li, "bwd")] for li in range(n)])
            rs = np.array([times[(*key, li, "recompute")] for li in range(n)])
            blocks = np.array([0.0 if layer.kind in ("prologue", "epilogue") else 1.0
                               for layer in g.layers])
            comp = f + b + min_recompute(f, rs, recs, blocks)
            rep = np.array([layer.repeat for layer in g.layers], dtype=float)
            t = time_floor(self.tables[key], float((comp * rep).sum()), comp, rep)
            s = self.batch / t if t > 0 else math.inf
            best[mbs] = max(best.get(mbs, 0.0), s)
        return best
