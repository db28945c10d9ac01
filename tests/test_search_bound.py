"""The pruning bound is valid: the placement DP's time per batch is monotone
non-decreasing in every layer latency (so lower bounds on layer times give an upper
bound on throughput). Property-tested with hypothesis on the real DP."""


import pytest
from hypothesis import given, settings, strategies as st

from phaze.place import refdp  # noqa: E402
from phaze.place.instance import parse_instance  # noqa: E402


@st.composite
def instances(draw):
    n = draw(st.integers(2, 7))
    widths = draw(st.sampled_from([(1,), (1, 2), (1, 2, 4)]))
    L = draw(st.integers(1, n))
    layers = []
    for i in range(n):
        layers.append(dict(param=draw(st.floats(0, 50)), act=draw(st.floats(0, 50)),
                           fw=draw(st.floats(0.01, 10)), bw=draw(st.floats(0.01, 20)),
                           tp=(i == 1) or (bool(i % 2) and draw(st.booleans()))))
    edges = [draw(st.floats(0, 40)) for _ in range(n - 1)]
    base = dict(
        maxMemoryPerDevice=draw(st.floats(20, 400)), maxDevices=draw(st.integers(1, 16)),
        bandwidth=draw(st.floats(1, 100)), mbsInBatch=draw(st.integers(1, 12)),
        activationRecomputation=draw(st.booleans()),
        optimizerAlgorithm=draw(st.sampled_from(["SGD", "Adam"])),
        fixedPP=draw(st.integers(1, n)), fixedTMPC=widths[-1], fixedDP=1,
        numTransformerLayers=L)
    # latencies grow by a factor >= 1 on a random subset of (layer, width, pass)
    bumps = [[(draw(st.sampled_from([1.0, 1.0, 1.5, 3.0])), draw(st.sampled_from([1.0, 1.0, 2.0])))
              for _ in widths] for _ in range(n)]
    return base, widths, layers, edges, bumps


def build(base, widths, layers, edges, scale):
    nodes, es = {}, {}
    for wi, t in enumerate(widths):
        nodes[str(t)] = [dict(id=i, parameterSize=l["param"] / t if l["tp"] else l["param"],
                              activationSize=l["act"],
                              optimalLatencyFw=l["fw"] / t * scale[i][wi][0],
                              optimalLatencyBw=l["bw"] / t * scale[i][wi][1],
                              isTensorParallelized=bool(l["tp"] and t > 1))
                         for i, l in enumerate(layers)]
        es[str(t)] = [dict(sourceId=i, destId=i + 1, communicationCost=c) for i, c in enumerate(edges)]
    return parse_instance(dict(base, nodes=nodes, edges=es))


def _le(a, b):
    return a <= b * (1 + 1e-12) + 1e-12


# found by this test: width 2 with no tensor-parallel layer on 3 devices makes refdp
# crash in plan reconstruction (IndexError); the generator above always has a TP layer
# (layer 1), so this case is its own regression test
_REGRESSION = (dict(maxMemoryPerDevice=20.0, maxDevices=3, bandwidth=1.0, mbsInBatch=1,
                    activationRecomputation=False, optimizerAlgorithm="SGD", fixedPP=1,
                    fixedTMPC=2, fixedDP=1, numTransformerLayers=1),
               (1, 2), [dict(param=0.0, act=0.0, fw=1.0, bw=1.0, tp=False)] * 6, [0.0] * 5,
               [[(1.0, 1.0), (1.0, 1.0)]] * 6)


def test_refdp_width_without_tp_layer():
    base, widths, layers, edges, _ = _REGRESSION
    out = refdp.solve_reference(build(base, widths, layers, edges, [[(1.0, 1.0)] * 2] * 6))
    # 6 chained layers, free edges, one microbatch (d = 1), 3 devices, no memory. build()
    # divides latencies by t, so at t = 2 a layer's fw + bw is 1 (not tensor-parallel, so
    # each stage uses 1 device): s stages give (6 / s) * (1 + s - 1) = 6 for s = 1, 2, 3;
    # at t = 1 it is 12. Best: 6.
    assert out["feasible"]
    assert out["finalTimePerBatch"] == pytest.approx(6.0)
    assert out["tensorParallelDegree"] == 2


@settings(max_examples=300, deadline=None)
@given(instances())
def test_dp_time_per_batch_monotone_in_layer_latencies(args):
    base, widths, layers, edges, bumps = args
    ones = [[(1.0, 1.0) for _ in widths] for _ in layers]
    lo = refdp.solve_reference(build(base, widths, layers, edges, ones))
    hi = refdp.solve_reference(build(base, widths, layers, edges, bumps))
    # feasibility depends on memory only, never on times
    assert lo["feasible"] == hi["feasible"]
    if lo["feasible"]:
        assert _le(lo["finalTimePerBatch"], hi["finalTimePerBatch"])
    assert (lo["fixedStrategyTimePerBatch"] is None) == (hi["fixedStrategyTimePerBatch"] is None)
    if lo["fixedStrategyTimePerBatch"] is not None:
        assert _le(lo["fixedStrategyTimePerBatch"], hi["fixedStrategyTimePerBatch"])


# ---- the default-mode DP (phaze.place.dp.best_plan), which phaze search uses -----------
from phaze.place import dp  # noqa: E402
from phaze.place.plan import Links, PlanOptions  # noqa: E402
from phaze.place.synthetic import gpt_chain  # noqa: E402


@st.composite
def chains(draw):
    layers = draw(st.integers(1, 6))
    t = draw(st.sampled_from([1, 2]))
    ch = gpt_chain(layers=layers, hidden=draw(st.sampled_from([256, 1024])), heads=8,
                   seq=draw(st.sampled_from([128, 512])), vocab=1000, mbs=draw(st.sampled_from([1, 2])),
                   t=t)
    n = ch.n
    f = [draw(st.sampled_from([1.0, 1.0, 1.3, 4.0])) for _ in range(n)]
    b = [draw(st.sampled_from([1.0, 1.0, 2.0])) for _ in range(n)]
    return ch, f, b


@settings(max_examples=150, deadline=None)
@given(chains(), st.sampled_from([4, 8, 16]), st.sampled_from([16, 64]),
       st.sampled_from(["none", "full"]), st.sampled_from([0.05, 0.5, 80.0]),
       st.sampled_from(["sgd", "adam"]))
def test_default_dp_monotone_in_layer_latencies(ch_f_b, devices, batch, rec, hbm_gib, opt):
    import dataclasses

    import numpy as np

    ch, f, b = ch_f_b
    slow = dataclasses.replace(ch, fwd_s=ch.fwd_s * np.array(f), bwd_s=ch.bwd_s * np.array(b))
    kw = dict(hbm_bytes=hbm_gib * 2**30, links=Links(), options=PlanOptions(optimizer=opt))
    lo = dp.best_plan(ch, devices, batch, rec, **kw)
    hi = dp.best_plan(slow, devices, batch, rec, **kw)
    assert (lo is None) == (hi is None)          # memory decides feasibility, not times
    if lo is not None:
        assert _le(lo["time_per_batch_s"], hi["time_per_batch_s"])


@settings(max_examples=60, deadline=None)
@given(chains(), st.sampled_from([4, 8, 16]), st.sampled_from([16, 64]),
       st.sampled_from(["none", "selective", "full"]),
       st.lists(st.sampled_from([0.05, 0.2, 0.5, 2.0, 80.0]), min_size=2, max_size=3,
                unique=True), st.sampled_from(["sgd", "adam"]))
def test_default_dp_best_over_hbm_sizes_is_the_largest(ch_f_b, devices, batch, rec, gibs, opt):
    """SweepProblem.bound places the largest HBM size only: HBM size is the DP's memory
    limit and nothing else, so every plan that fits a smaller one fits the largest."""
    ch, _f, _b = ch_f_b
    kw = dict(links=Links(), options=PlanOptions(optimizer=opt))
    best = {g: dp.best_plan(ch, devices, batch, rec, hbm_bytes=g * 2**30, **kw) for g in gibs}
    top = best[max(gibs)]
    for g, plan in best.items():
        if plan is not None:
            assert top is not None and _le(top["time_per_batch_s"], plan["time_per_batch_s"])


def _bert_sweep(recompute):
    """A small real sweep (bert-large s128, 24 archs of three core counts, TP 1 and 2, CP 1 and 2,
    microbatches 1 and 4, HBM 16 and 80 GiB) that the bound tests check their bounds on."""
    from dataclasses import replace

    from phaze.hw.grid import enumerate_grid
    from phaze.search.pipeline import SweepProblem, SweepSpec
    from phaze.settings import GraphSettings, PlacementSettings, SweepSettings

    grid = enumerate_grid({"n_tc": [1, 4, 16], "n_vc": [1, 4], "tc_rows": [32, 128],
                           "tc_cols": [32, 128], "glb_mib": [32],
                           "area": {"min_frac": 0.0, "keep_single_core": "all"}})
    st = replace(SweepSettings(), microbatch_sizes=(1, 4), graph=GraphSettings(attention="flash"),
                 placement=PlacementSettings(devices=64, global_batch=256, hbm_gib=(16.0, 80.0),
                                             recompute=recompute, optimizer="sgd"))
    sp = SweepProblem(SweepSpec(model="bert-large", seq=128, tp=(1, 2), settings=st,
                                cp=(1, 2)), grid)
    return sp


@pytest.mark.parametrize("recompute", [("none",), ("selective", "full")])
def test_plan_floor_is_above_the_dp_bound(recompute):
    """waves' DP-free bound (plan_floor.PlanFloor) gates the DP bound, so it must never be
    below it: checked on real archs and graphs, TP widths 1 and 2, every microbatch size
    of the sweep; it equals the chain route (chain_samples_per_s of chain_from_graph) and
    is never looser than the plain work bound. CP sizes 1 and 2 (the ring only adds
    time, so the floor leaves it out)."""
    import math
    from dataclasses import replace

    from phaze.place.chain import chain_from_graph
    from phaze.search.plan_floor import PlanFloor, chain_samples_per_s
    from phaze.search.waves import work_bounds

    sp = _bert_sweep(recompute)
    floor = PlanFloor(sp)
    n_feasible = n_tighter = 0
    for arch_id, _area in sp.archs():
        times = sp.lower_times(arch_id)
        fl, wb = floor.samples_per_s(times), work_bounds(sp, times)
        for mbs in sp.spec.settings.microbatch_sizes:
            b = sp.bound_of(times, sp._peak_of(arch_id), (mbs,))
            assert math.isnan(b) or b <= fl[mbs] * (1 + 1e-12), (arch_id, mbs)
            assert fl[mbs] <= wb[mbs] * (1 + 1e-12)
            n_tighter += fl[mbs] < 0.9 * wb[mbs]
            chains = [(chain_from_graph(g, layer_latency={
                li: tuple(times[(*key, li, ps)] for ps in ("fwd", "bwd", "recompute"))
                for li in range(len(g.layers))}), g.cp) for key, g in sp.graphs.items()
                if key[0] == mbs]
            assert fl[mbs] == pytest.approx(max(chain_samples_per_s(c, {
                **floor.ctx, "options": replace(floor.ctx["options"], cp=cp)})
                for c, cp in chains), rel=1e-9)
            n_feasible += b > 0
    assert n_feasible >= 4 and n_tighter >= 4


@st.composite
def moe_or_dense(draw):
    """A synthetic GPT chain (gpt_chain), its blocks MoE (expert weights, all-to-all bytes)
    when drawn so."""
    import dataclasses

    import numpy as np

    ch, _f, _b = draw(chains())
    if draw(st.booleans()):
        blocks = np.array([k == "block" for k in ch.kinds], dtype=float)
        frac = draw(st.sampled_from([0.5, 0.9]))
        ch = dataclasses.replace(
            ch, expert_param_count=ch.param_count * frac * blocks,
            a2a_bytes=blocks * draw(st.sampled_from([1e5, 1e8])))
    if draw(st.booleans()):     # a selective recompute pass of its own
        ch = dataclasses.replace(ch, recompute_selective_s=0.3 * ch.fwd_s)
    return ch


@settings(max_examples=150, deadline=None)
@given(moe_or_dense(), st.sampled_from([4, 8, 16]), st.sampled_from([16, 64]),
       st.lists(st.sampled_from(["none", "selective", "full"]), min_size=1, max_size=3,
                unique=True),
       st.sampled_from([0.05, 0.5, 80.0]), st.sampled_from(["sgd", "adam"]),
       st.sampled_from([(1,), (1, 2), (1, 2, 4)]), st.sampled_from([(1,), (1, 2), (1, 2, 4)]),
       st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
       st.sampled_from([2, 8]), st.booleans())
def test_plan_floor_is_above_the_dp_on_every_axis(ch, devices, batch, recs, hbm_gib, opt,
                                                  interleaves, eps, zs, node, levels):
    """plan_floor.chain_samples_per_s >= the DP's best samples/s over every axis the sweep
    searches (ep, ZeRO stages, recompute modes, interleave, optimizer, HBM, networks with
    or without levels; dp.best_plans is the placement jobs' DP)."""
    _floor_above_dp(ch, devices, batch, recs, hbm_gib, opt, interleaves, eps, zs, node, levels)


def test_plan_floor_charges_experts_at_their_own_group_rate():
    """Pinned (found by the property above once the experts got their own data-parallel
    group): a MoE chain with ep 2 on 4 devices, 2 per node; the experts' gradients sync
    over d / ep devices across nodes at a lower rate than the dense ones, so a floor that
    charges every parameter at the dense rate was 1.7 % below the DP's best."""
    import dataclasses

    import numpy as np

    ch = gpt_chain(layers=5, hidden=1024, heads=8, seq=512, vocab=1000, mbs=1, t=1)
    blocks = np.array([k == "block" for k in ch.kinds], dtype=float)
    ch = dataclasses.replace(ch, expert_param_count=ch.param_count * 0.9 * blocks,
                             a2a_bytes=blocks * 1e5)
    _floor_above_dp(ch, 4, 64, ["none"], 0.5, "sgd", (1,), (1, 2), [0], 2, False)


def _floor_above_dp(ch, devices, batch, recs, hbm_gib, opt, interleaves, eps, zs, node, levels):
    from phaze.hw.arch import Network
    from phaze.place.evaluate import plan_options
    from phaze.search.plan_floor import chain_samples_per_s
    from phaze.settings import PlacementSettings

    net = Network(devices_per_node=node, levels=((node, 300e9, 1e-6), (0, 25e9, 5e-6))) \
        if levels else Network(devices_per_node=node)
    pl = PlacementSettings(devices=devices, global_batch=batch, hbm_gib=(hbm_gib,),
                           recompute=tuple(recs), optimizer=opt, interleave=interleaves,
                           ep=eps, zero_stage=tuple(zs))
    links = Links.of(net)
    ctx = {"devices": devices, "batch": batch, "links": links,
           "options": plan_options(pl, net), "interleaves": interleaves, "eps": eps,
           "zero_stages": pl.zero_stages(), "hbm_bytes": pl.hbm_bytes(), "recompute": recs}
    got = dp.best_plans(ch, devices, batch, pl.hbm_bytes(), recs, links=links,
                        options=ctx["options"], interleaves=interleaves, eps=eps,
                        zero_stages=pl.zero_stages())
    best = max((plan["samples_per_s"] for plan in got.values() if plan), default=0.0)
    bound = chain_samples_per_s(ch, ctx)
    assert best <= bound * (1 + 1e-12), (best, bound)


@pytest.mark.parametrize("recompute", [("none",), ("none", "selective", "full")])
def test_work_bound_is_above_the_dp_bound(recompute):
    """waves.work_bound (no DP) gates the DP bound, so it must never be below it: checked
    on real archs and graphs, TP widths 1 and 2, every microbatch size of the sweep."""
    import math

    from phaze.search.waves import work_bound

    sp = _bert_sweep(recompute)
    n_feasible = 0
    for arch_id, _area in sp.archs():
        times = sp.lower_times(arch_id)
        b = sp.bound(arch_id, times)
        assert math.isnan(b) or b <= work_bound(sp, times) * (1 + 1e-12), arch_id
        n_feasible += b > 0
    assert n_feasible >= 4
