"""Expert tensor parallelism (Megatron-Core --expert-tensor-parallel-size, "MoE parallel
folding"): the routed experts get their own TP x EP x DP grid over a stage's t x cp x d
devices. Checked against closed forms: FLOPs do not depend on the expert TP size et, the
expert weights per device go as 1 / et, the expert-data-parallel group is
t d cp / (et ep) devices stride et ep, the EP all-to-all runs over ep members stride et,
and evaluate refuses what Megatron refuses."""

import numpy as np
import pytest

from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.spec import ModelSpec
from phaze.place.chain import chain_from_graph
from phaze.place.plan import Links, PlanOptions, evaluate_plan, grad_groups

MOE = ModelSpec(name="moe32", hidden=1024, layers=4, heads=16, kv_heads=8, ffn=2048, vocab=4096,
                seq=1024, activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                tied_embeddings=False, dropout=False, experts=32, top_k=4, moe_ffn=512)


def _blocks(g):
    return [lg for lg in g.layers if lg.kind.startswith("block")]


@pytest.mark.parametrize("t,et", [(2, 1), (4, 1), (4, 2), (1, 2), (2, 4)])
def test_folded_moe_flops_weights_and_collectives(t, et):
    """Per device: the same GEMM FLOPs as with et = t (every token's k slots computed once
    over the t devices of a TP group; element-wise gradient adds follow the layout), expert weights E x 3 h f / et, the expert TP
    all-gather / reduce-scatter of et Ts k h on group "etp" only when et > 1, and the
    dispatch writing the device's own Ts k h slots (the EP all-to-all payload)."""
    sp = t > 1
    ref = build_graph(MOE, mbs=2, tp=t, sequence_parallel=sp, attention="flash")
    g = build_graph(MOE, mbs=2, tp=t, sequence_parallel=sp, attention="flash", expert_tp=et)
    assert g.expert_tp == et and g.collective_groups == {"tp": t, "etp": et}
    def gemm_flops(graph, ps):
        return sum(o.flops * lg.repeat for lg in graph.layers for o in lg.ops(ps) if o.kind == "gemm")

    for ps in ("fwd", "bwd"):
        assert gemm_flops(g, ps) == pytest.approx(gemm_flops(ref, ps), rel=1e-12)
    h, f, E, k = MOE.hidden, MOE.expert_ffn, MOE.experts, MOE.top_k
    Ts = 2 * MOE.seq // t
    blk = _blocks(g)[0]
    assert sum(o.param_bytes for o in blk.fwd if o.experts) / 2 == E * 3 * h * f / et
    etp = [o for o in (*blk.fwd, *blk.bwd) if o.kind == "collective" and o.group == "etp"]
    assert len(etp) == (4 if et > 1 else 0)
    for o in etp:
        assert o.comm_bytes == et * Ts * k * h * 2
    disp = next(o for o in blk.fwd if o.name == "moe.dispatch")
    assert disp.bytes_written == Ts * k * h * 2
    assert chain_from_graph(g, op_latency_s=lambda o: 1e-6).a2a_bytes[1] == Ts * k * h * 2


@pytest.mark.parametrize("t,d,cp,ep,et", [(2, 8, 1, 16, 1), (4, 4, 2, 8, 2), (8, 2, 1, 8, 1),
                                          (2, 4, 1, 4, 2), (1, 8, 2, 4, 1)])
def test_expert_data_parallel_group(t, d, cp, ep, et):
    """grad_groups: dense d cp devices stride t; experts t d cp / (et ep) stride et ep
    (Megatron-Core's expert rank generator, order tp-ep-dp-pp); et = t reproduces the
    d cp / ep of the unfolded grid."""
    o = PlanOptions(cp=cp, ep=ep, expert_tp=et)
    assert grad_groups(o, t, d) == ((d * cp, t), (t * d * cp // (et * ep), et * ep))
    same = PlanOptions(cp=cp, ep=ep, expert_tp=0)
    if (d * cp) % ep == 0:
        assert grad_groups(same, t, d)[1] == (d * cp // ep, t * ep)


def _chain(t, et):
    g = build_graph(MOE, mbs=1, tp=t, sequence_parallel=t > 1, attention="flash", expert_tp=et)
    return chain_from_graph(g, op_latency_s=lambda o: 1e-6)


def test_folding_lets_ep_span_the_tp_ranks():
    """EP 16 on t 2 x d 8: Megatron refuses it unfolded (ep must divide d cp = 8), runs it
    with expert TP 1 (ep x et = 16 divides t d cp = 16)."""
    opts = dict(collectives="nccl", distributed_optimizer=True)
    unfolded = evaluate_plan(_chain(2, 2), 1, 8, 64, options=PlanOptions(**opts, ep=16))
    assert not unfolded["feasible"] and "must divide d x cp" in unfolded["reason"]
    folded = evaluate_plan(_chain(2, 1), 1, 8, 64,
                           options=PlanOptions(**opts, ep=16, expert_tp=1))
    assert "time_per_batch_s" in folded
    bad = evaluate_plan(_chain(2, 1), 1, 4, 64, options=PlanOptions(**opts, ep=16, expert_tp=1))
    assert not bad["feasible"] and "expert_tp 1 must divide t x d x cp = 8" in bad["reason"]
    with pytest.raises(ValueError, match="expert_tp"):
        evaluate_plan(_chain(2, 2), 1, 8, 64, options=PlanOptions(**opts, ep=16, expert_tp=1))


def test_ep_all_to_all_stride_is_the_expert_tp_size():
    """The EP group's ep members sit et apart: with t 8 and et 1 an EP of 8 stays in one
    8-device node (NVLink), with et = t = 8 it spans 8 nodes."""
    from phaze.cost.collective import collective_time

    links = Links(levels=((8, 400e9, 3e-6), (0, 50e9, 1e-5)))
    for et in (1, 8):
        ch = _chain(8, et)
        pl = evaluate_plan(ch, 1, 8, 64, links=links,
                           options=PlanOptions(collectives="nccl", ep=8, expert_tp=et))
        b = float(ch.a2a_bytes[1])
        want = 4 * collective_time("all_to_all", b, 8, et, links, src_dtype_bytes=1.0,
                                   bw_efficiency=links.bw_efficiency)
        assert pl["ep_a2a_s"] == pytest.approx(want * MOE.layers * 8, rel=1e-9)  # M = 64 / 8
        assert want > 0
    assert collective_time("all_to_all", 1e8, 8, 1, links) < collective_time("all_to_all", 1e8, 8, 8, links)


def test_expert_tp_errors():
    with pytest.raises(UserError, match="sequence parallelism"):
        build_graph(MOE, tp=2, expert_tp=1)
    with pytest.raises(UserError, match="moe_ffn"):
        build_graph(MOE, tp=1, expert_tp=3)
    with pytest.raises(UserError, match="no routed experts"):
        build_graph(MOE.with_(experts=0, top_k=0, moe_ffn=0), tp=2, sequence_parallel=True,
                    expert_tp=1)


def test_evaluate_cli_expert_tp(capsys):
    from phaze.cli import main

    base = ["evaluate", "--model", "mixtral-8x7b", "--arch", "h100", "--framework", "nemo-2024",
            "--tp", "2", "--pp", "4", "--dp", "8", "--mbs", "1", "--seq", "4096", "--json"]
    assert main(base + ["--sequence-parallel", "--ep", "8", "--expert-tp", "1"]) == 0
    assert main(base + ["--ep", "8", "--expert-tp", "1"]) == 2
    assert "sequence parallelism" in capsys.readouterr().err


def test_expected_nodes_hit_against_enumeration():
    """expected_nodes_hit against a brute force over every top-k choice (uniform routing)."""
    import itertools
    from math import comb

    from phaze.cost.collective import expected_nodes_hit

    for E, k, N in ((8, 2, 2), (8, 3, 4), (12, 4, 3), (6, 6, 2)):
        per = E // N
        hits = [len({e // per for e in c}) for c in itertools.combinations(range(E), k)]
        assert expected_nodes_hit(E, k, N) == pytest.approx(sum(hits) / comb(E, k), rel=1e-12)
    assert expected_nodes_hit(256, 8, 1) == 1.0


def test_flex_dispatch_closed_form_and_bounds():
    """dedup_dispatch_time: each token crosses the network once per remote node hit
    (slot bytes / k x (N - 1) / N x nodes hit), NVLink carries the local slots and the
    forwarding, pipelined with it (the slower counts); inside a node it is the all-to-all; never slower across nodes than the
    all-to-all when k >= 2."""
    from phaze.cost.collective import collective_time, dedup_dispatch_time, expected_nodes_hit
    from phaze.hw.presets import NETWORKS

    net = NETWORKS["dgx-h100"]
    S, E, k = 134e6, 128, 8
    assert dedup_dispatch_time(S, 8, 1, net, E, k) == pytest.approx(
        collective_time("all_to_all", S, 8, 1, net, src_dtype_bytes=1.0, bw_efficiency=1.0))
    for ep in (16, 32, 64):
        N = ep // 8
        want = (max(S / k * (N - 1) / N * expected_nodes_hit(E, k, N) / net.inter_bw_Bps,
                    S * (7 / ep + (ep - 8) / ep * 7 / 8) / net.intra_bw_Bps)
                + 7 * net.intra_latency_s + (N - 1) * net.inter_latency_s)
        got = dedup_dispatch_time(S, ep, 1, net, E, k)
        assert got == pytest.approx(want, rel=1e-12)
        assert got < collective_time("all_to_all", S, ep, 1, net, src_dtype_bytes=1.0,
                                     bw_efficiency=1.0)


def test_dispatcher_and_ep_overlap_in_the_plan():
    """The plan charges the flex dispatcher's time, and with the EP overlap only what
    exceeds the other pass: max(0, 2 a2a - bwd) on the forward, max(0, 2 a2a - fwd) on the
    backward (closed form on the chain)."""
    from dataclasses import replace

    from phaze.place.plan import expert_parallel_chain

    links = Links.of(None)
    ch = _chain(1, 1)
    base = PlanOptions(collectives="nccl", ep=16, expert_tp=1)
    plain = expert_parallel_chain(ch, 16, links, base)
    flex = expert_parallel_chain(ch, 16, links, replace(base, moe_token_dispatcher="flex"))
    moe = ch.a2a_bytes > 0
    assert (flex.extra["ep_a2a_s"][moe] < plain.extra["ep_a2a_s"][moe]).all()
    a2a = plain.extra["ep_a2a_s"] / 4
    ov = expert_parallel_chain(ch, 16, links, replace(base, overlap_moe_expert_parallel_comm=True))
    assert ov.fwd_s == pytest.approx(ch.fwd_s + np.maximum(2 * a2a - ch.bwd_s, 0))
    assert ov.bwd_s == pytest.approx(ch.bwd_s + np.maximum(2 * a2a - ch.fwd_s, 0))
    with pytest.raises(ValueError, match="moe_token_dispatcher"):
        expert_parallel_chain(ch, 16, links, replace(base, moe_token_dispatcher="deepep"))


@pytest.mark.parametrize("flex", [False, True])
def test_ep_overlap_charges_the_dispatch_kernels_sms(flex):
    """Under the EP overlap the all-to-all kernels hold a share of the SMs while they run,
    so the compute they hide under slows by it: + share x min(2 a2a, other pass). The
    flex dispatcher's share is options.flex_sm_share (DeepEP's SMs); the alltoall
    dispatcher's NCCL all-to-all takes what a DP collective over the same devices would
    (plan.nccl_sm_share: 16 devices, 2 nodes: 8 members x comm_sm_share_net)."""
    from dataclasses import replace

    from phaze.place.plan import expert_parallel_chain, nccl_sm_share

    links = Links.of(None)
    ch = _chain(1, 1)
    base = PlanOptions(collectives="nccl", ep=16, expert_tp=1, overlap_moe_expert_parallel_comm=True,
                       moe_token_dispatcher="flex" if flex else "alltoall")
    shared = replace(base, flex_sm_share=0.15, comm_sm_share=0.18, comm_sm_share_net=0.015)
    free = expert_parallel_chain(ch, 16, links, replace(base, moe_token_dispatcher="alltoall"))
    a2a = (expert_parallel_chain(ch, 16, links, replace(base, overlap_moe_expert_parallel_comm=False))
           .extra["ep_a2a_s"] / 4)
    share = 0.15 if flex else nccl_sm_share(shared, links, 16, 1)
    assert flex or share == pytest.approx(min(0.18, 0.015 * 8))
    got = expert_parallel_chain(ch, 16, links, shared)
    assert got.fwd_s == pytest.approx(ch.fwd_s + np.maximum(2 * a2a - ch.bwd_s, 0)
                                      + share * np.minimum(2 * a2a, ch.bwd_s))
    assert got.bwd_s == pytest.approx(ch.bwd_s + np.maximum(2 * a2a - ch.fwd_s, 0)
                                      + share * np.minimum(2 * a2a, ch.fwd_s))
    assert flex or (got.fwd_s >= free.fwd_s).all()


@pytest.mark.parametrize("modules,rerun", [(("moe",), True), (("moe_act", "layernorm"), False),
                                           (("core_attn",), False)])
def test_selective_moe_module_reruns_the_all_to_alls(modules, rerun):
    """Megatron-Core's "moe" recompute module checkpoints the whole MoE layer (moe_layer.py
    custom_forward: route, dispatch, experts, combine), so selective recomputation with it
    re-runs the layer's dispatch and combine: 2 a2a more in recompute_selective_s; other
    modules leave the all-to-alls alone."""
    from phaze.place.plan import expert_parallel_chain

    g = build_graph(MOE, mbs=1, tp=1, expert_tp=1, recompute_modules=modules)
    ch = chain_from_graph(g, op_latency_s=lambda o: 1e-6)
    links = Links.of(None)
    out = expert_parallel_chain(ch, 16, links, PlanOptions(collectives="nccl", ep=16, expert_tp=1))
    a2a = out.extra["ep_a2a_s"] / 4
    moe = ch.a2a_bytes > 0
    assert moe.sum() == 4
    want = ch.recompute_selective_s + (2 * a2a if rerun else 0.0)
    assert out.recompute_selective_s == pytest.approx(want)
    assert ((out.recompute_selective_s[moe] > ch.recompute_selective_s[moe]) == rerun).all()


def test_selective_moe_rerun_under_the_ep_overlap_costs_what_the_forward_did():
    """Under --overlap-moe-expert-parallel-comm the forward's dispatch and combine cost only
    their exposed part max(0, 2 a2a - backward); the dispatch and combine that the "moe"
    recompute module re-runs cost the same, as full recomputation (which re-runs fwd_s)
    charges them: never more than the full recomputation's share."""
    from phaze.place.plan import expert_parallel_chain

    g = build_graph(MOE, mbs=1, tp=1, expert_tp=1, recompute_modules=("moe",))
    ch = chain_from_graph(g, op_latency_s=lambda o: 1e-6)
    links = Links.of(None)
    kw = dict(collectives="nccl", ep=16, expert_tp=1)
    plain = expert_parallel_chain(ch, 16, links, PlanOptions(**kw))
    ov = expert_parallel_chain(ch, 16, links, PlanOptions(**kw, overlap_moe_expert_parallel_comm=True))
    moe = ch.a2a_bytes > 0
    add_f = ov.fwd_s - ch.fwd_s
    assert ov.recompute_selective_s == pytest.approx(ch.recompute_selective_s + add_f * moe)
    assert (ov.recompute_selective_s <= plain.recompute_selective_s + 1e-15).all()


def test_options_cannot_override_the_plans_ep_or_cp():
    """evaluate_model builds the graph for its ep and cp arguments: an options dict that
    says otherwise is refused (it used to evaluate a plan the graph was not built for)."""
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    m = get_model("mixtral-8x7b").with_(layers=2)
    kw = dict(tp=1, pp=1, dp=4, mbs=1, batch=8, recompute="full", framework="megatron-core-2024")
    for opts, match in (({"ep": 2}, "ep"), ({"cp": 2}, "cp")):
        with pytest.raises(ValueError, match=match):
            evaluate_model(m, get_preset("h100"), options=opts, **kw)
    same = evaluate_model(m, get_preset("h100"), ep=2, options={"ep": 2}, **kw)
    assert same["ep"] == 2 and same["time_per_batch_s"] == pytest.approx(
        evaluate_model(m, get_preset("h100"), ep=2, **kw)["time_per_batch_s"])
