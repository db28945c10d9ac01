"""MoE layers as Megatron-Core and Transformer Engine launch their kernels, checked against
closed forms of the cost model's own single-kernel latencies:

- grouped expert GEMMs (Op.groups): a device's token slots split over its E / ep local
  experts, one cuBLAS GEMM each on TE's 4 streams (phaze.cost.api.grouped_gemm_split,
  TE_GEMM_STREAMS); FLOPs and bytes unchanged."""

import math
from dataclasses import replace

import pytest

from phaze.cost.api import TE_GEMM_STREAMS, op_latencies
from phaze.cost.params import preset_params
from phaze.errors import UserError
from phaze.hw.presets import get_preset
from phaze.model.graph import build_graph
from phaze.model.ops import GemmDims, Op
from phaze.model.spec import ModelSpec

H = get_preset("h100")
MOE = ModelSpec(name="moe32", hidden=1024, layers=2, heads=16, kv_heads=8, ffn=2048, vocab=4096,
                seq=1024, activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                tied_embeddings=False, dropout=False, experts=32, top_k=4, moe_ffn=512)


def _lat(ops, params):
    return op_latencies(ops, H, H.network, params=params).lat_all_s[0]


@pytest.mark.parametrize("groups,dim", [(1, "m"), (3, "m"), (8, "m"), (16, "k"), (5, "k")])
def test_grouped_gemm_is_groups_gemms_of_one_share(groups, dim):
    """latency(op of G groups) = G x latency(one expert's GEMM, no overhead)
    + ceil(G / 4) overheads; the one-expert GEMM has ceil(slots / G) slots in `dim`."""
    p = preset_params("h100")
    slots, n, k = 6000, 1536, 2048
    dims = GemmDims(1, slots, n, k) if dim == "m" else GemmDims(1, n, k, slots)
    op = Op("moe.expert.fc1", "gemm", gemm=dims, flops=dims.flops, groups=groups, group_dim=dim)
    share = math.ceil(slots / groups)
    one = GemmDims(1, share, n, k) if dim == "m" else GemmDims(1, n, k, share)
    bare = replace(p, op_overhead_s=0.0)
    single = _lat([Op("g", "gemm", gemm=one, flops=one.flops)], bare)[0]
    want = groups * single + math.ceil(groups / TE_GEMM_STREAMS) * p.op_overhead_s
    assert _lat([op], p)[0] == pytest.approx(want, rel=1e-12)
    if groups == 1:   # one group: the plain GEMM's cost
        plain = Op("g", "gemm", gemm=dims, flops=dims.flops)
        assert _lat([op], p)[0] == pytest.approx(_lat([plain], p)[0], rel=1e-12)


@pytest.mark.parametrize("tp,sp,et,ep", [(1, False, 0, 8), (2, True, 0, 4), (2, True, 1, 16),
                                         (1, False, 0, 1)])
def test_graph_expert_ops_carry_local_experts(tp, sp, et, ep):
    """build_graph(ep=...) marks each routed-expert GEMM (fwd, dX: slots in m; dW: in k)
    with E / ep groups, whose weights (read forward and by dX, written by dW) are the E / ep
    local experts' only; FLOPs, activation bytes and every other op are those of the graph
    built without ep (which holds all E experts)."""
    ref = build_graph(MOE, mbs=1, tp=tp, sequence_parallel=sp, expert_tp=et, attention="flash")
    # flex: no sort by local expert (test_alltoall_dispatcher_sorts_by_local_expert)
    g = build_graph(MOE, mbs=1, tp=tp, sequence_parallel=sp, expert_tp=et, attention="flash", ep=ep,
                    moe_dispatcher="flex")
    assert g.ep == ep and ref.ep == 0
    seen = 0
    for lr, lg in zip(ref.layers, g.layers):
        for ps in ("fwd", "bwd"):
            for a, b in zip(lr.ops(ps), lg.ops(ps)):
                if b.experts and b.kind == "gemm":
                    seen += 1
                    assert b.groups == MOE.experts // ep
                    assert b.group_dim == ("k" if b.name.endswith(".dW") else "m")
                    # one expert's weight: the GEMM's two non-slot dims (per device shard)
                    g = b.gemm
                    w = (g.m * g.n if b.name.endswith(".dW") else g.n * g.k) * 2
                    drop = w * (MOE.experts - MOE.experts // ep)     # the remote experts'
                    if b.name.endswith(".dW"):
                        assert a.bytes_written - b.bytes_written == drop, b.name
                        assert a.bytes_read == b.bytes_read
                    else:
                        assert a.bytes_read - b.bytes_read == drop, b.name
                        assert a.bytes_written == b.bytes_written
                else:
                    assert b.groups == 0
                    assert (a.bytes_read, a.bytes_written) == (b.bytes_read, b.bytes_written)
                assert (a.flops, a.gemm) == (b.flops, b.gemm)
    assert seen == 3 * 3    # one block kind: (gate, up, down) x (fwd, dX, dW)


@pytest.mark.parametrize("tp,sp,et,ep", [(1, False, 0, 8), (2, True, 0, 4), (2, True, 1, 16),
                                         (1, False, 0, 1), (2, True, 0, 32)])
def test_alltoall_dispatcher_sorts_by_local_expert(tp, sp, et, ep):
    """Megatron-Core's alltoall dispatcher with several local experts (E / ep > 1): the
    flex graph plus moe.sort_chunks after the experts' input arrives (after the expert-TP
    all-gather) and moe.unsort_chunks before their output leaves, each one copy of the
    experts' token slots (et x T / t x top_k of width h, 2 B read and written per element)
    and its inverse in the backward; one local expert (ep = E): none."""
    kw = dict(mbs=1, tp=tp, sequence_parallel=sp, expert_tp=et, attention="flash", ep=ep)
    flex = build_graph(MOE, moe_dispatcher="flex", **kw)
    a2a = build_graph(MOE, **kw)
    assert a2a.moe_dispatcher == "alltoall" and flex.moe_dispatcher == "flex"
    blk_f = next(lg for lg in flex.layers if lg.kind.startswith("block"))
    blk_a = next(lg for lg in a2a.layers if lg.kind.startswith("block"))
    extra = {ps: [o for o in blk_a.ops(ps) if o.name not in {x.name for x in blk_f.ops(ps)}]
             for ps in ("fwd", "bwd")}
    if MOE.experts // ep == 1:
        assert extra == {"fwd": [], "bwd": []}
        return
    et = et or tp
    slots = et * (MOE.seq // tp if sp else MOE.seq) * MOE.top_k
    assert [o.name for o in extra["fwd"]] == ["moe.sort_chunks", "moe.unsort_chunks"]
    # the experts' input gradient is summed where it fans out: after the sort now
    def gaccs(blk):
        return sorted(o.elements for o in blk.bwd if o.name.endswith(".gacc"))
    assert gaccs(blk_a) == gaccs(blk_f)
    extra["bwd"] = [o for o in extra["bwd"] if not o.name.endswith(".gacc")]
    assert sorted(o.name for o in extra["bwd"]) == ["moe.sort_chunks.bwd", "moe.unsort_chunks.bwd"]
    for o in extra["fwd"] + extra["bwd"]:
        assert o.vclass.startswith("permute") and o.elements == slots * MOE.hidden
        assert o.bytes_read == o.bytes_written == 2 * slots * MOE.hidden
    # the experts read the sorted slots; the unsort reads their output
    assert any(o.experts and o.kind == "gemm" and "moe.sort_chunks" in o.deps for o in blk_a.fwd)
    unsort = next(o for o in blk_a.fwd if o.name == "moe.unsort_chunks")
    assert all(next(o for o in blk_a.fwd if o.name == d).experts for d in unsort.deps)
    assert blk_a.param_count == blk_f.param_count


@pytest.mark.parametrize("ep", [1, 8, 32])
def test_chain_and_options_agree_on_the_dispatcher(ep):
    """A chain whose layer times hold the alltoall sort (more than one local expert) runs
    only under the alltoall dispatcher (plan.check_built_for, via axes_chain and
    evaluate_plan); with one local expert (ep = E) either dispatcher runs it."""
    from phaze.place.chain import chain_from_graph
    from phaze.place.plan import Links, PlanOptions, axes_chain, evaluate_plan

    g = build_graph(MOE, mbs=1, ep=ep)
    ch = chain_from_graph(g, layer_latency={i: (1e-3, 2e-3, 0.0) for i in range(len(g.layers))})
    links = Links.of(H.network)
    flex = PlanOptions(ep=ep, moe_token_dispatcher="flex")
    if MOE.experts // ep > 1:
        with pytest.raises(ValueError, match="dispatcher"):
            axes_chain(ch, links, flex)
        with pytest.raises(ValueError, match="dispatcher"):
            evaluate_plan(ch, 1, ep, 8 * ep, links=links, options=flex)
    else:
        assert axes_chain(ch, links, flex).n == ch.n
    assert axes_chain(ch, links, PlanOptions(ep=ep)).fwd_s.sum() >= ch.fwd_s.sum()


def test_graph_ep_must_divide_experts():
    with pytest.raises(UserError):
        build_graph(MOE, mbs=1, ep=3)
    with pytest.raises(UserError):
        build_graph(MOE, mbs=1, ep=-1)


def test_unfused_softmax_router_kernels():
    """Megatron-Core's unfused softmax top-k routing: moe.route is ROUTE_KERNELS
    ["softmax"] = (9, 5) eager kernels (forward, backward); its latency is the same op as
    one kernel plus (kernels - 1) eager-kernel launches (CostParams.eager_kernel_s, the h100
    preset's measured 9.5 us; without it op_overhead_s); the sigmoid router's eager path
    (DeepSeek-V3's) is 26 / 13."""
    from phaze.model.graph import ROUTE_KERNELS

    p = preset_params("h100")
    g = build_graph(MOE, mbs=1, ep=8)
    blk = next(lg for lg in g.layers if lg.kind.startswith("block"))
    fwd = next(o for o in blk.fwd if o.name == "moe.route")
    bwd = next(o for o in blk.bwd if o.name == "moe.route.bwd")
    assert (fwd.kernels, bwd.kernels) == ROUTE_KERNELS["softmax"] == (9, 5)
    for o in (fwd, bwd):
        single = replace(o, kernels=0)
        assert _lat([o], p)[0] == pytest.approx(
            _lat([single], p)[0] + (o.kernels - 1) * p.eager_kernel_s, rel=1e-12)
    # the sigmoid path as DeepSeek-V3 runs it (expert bias, group-limited top-k, scaling):
    # 26 / 13 eager kernels, one each fused
    for fusion, want in ((False, ROUTE_KERNELS["sigmoid"]), (True, (0, 0))):
        sig = build_graph(MOE.with_(router="sigmoid"), mbs=1, moe_router_fusion=fusion)
        blk = next(lg for lg in sig.layers if lg.kind.startswith("block"))
        assert (next(o for o in blk.fwd if o.name == "moe.route").kernels,
                next(o for o in blk.bwd if o.name == "moe.route.bwd").kernels) == want
    assert ROUTE_KERNELS["sigmoid"] == (26, 13)
    # no eager_kernel_s (the a100 preset, a searched chip): each kernel pays op_overhead_s
    q = replace(p, eager_kernel_s=0.0)
    assert _lat([fwd], q)[0] == pytest.approx(
        _lat([replace(fwd, kernels=0)], q)[0] + (fwd.kernels - 1) * q.op_overhead_s, rel=1e-12)
    assert p.eager_kernel_s == pytest.approx(9.5e-6) and p.eager_kernel_s < p.op_overhead_s


@pytest.mark.parametrize("tp,sp,et", [(1, False, 0), (2, True, 1), (2, True, 0)])
def test_fused_router_is_one_kernel_per_pass(tp, sp, et):
    """--moe-router-fusion (Transformer Engine's fused top-k with score function): the
    route op of every MoE layer form (plain, folded expert TP, all-to-all SP) is one kernel
    per pass, the same bytes as the eager routing, so the layer is (9 - 1) + (5 - 1)
    per-kernel overheads faster; the graph records the switch; a dense model has no router
    to fuse."""
    p = preset_params("h100")
    kw = dict(mbs=1, tp=tp, sequence_parallel=sp, expert_tp=et, ep=4)
    eager, fused = build_graph(MOE, **kw), build_graph(MOE, moe_router_fusion=True, **kw)
    assert (eager.moe_router_fusion, fused.moe_router_fusion) == (False, True)
    for e_l, f_l in zip(eager.layers, fused.layers):
        if not e_l.kind.startswith("block"):
            continue
        for ps in ("fwd", "bwd"):
            eo, fo = list(e_l.ops(ps)), list(f_l.ops(ps))
            r_e = [o for o in eo if o.name in ("moe.route", "moe.route.bwd")]
            r_f = [o for o in fo if o.name in ("moe.route", "moe.route.bwd")]
            assert len(r_e) == 1
            assert [o.kernels for o in r_f] == [0] * len(r_e)
            assert [(o.bytes_read, o.bytes_written) for o in r_f] == \
                [(o.bytes_read, o.bytes_written) for o in r_e]
            extra = sum(max(o.kernels, 1) - 1 for o in r_e)
            assert extra == (8 if ps == "fwd" else 4)
            assert _lat(eo, p).sum() == pytest.approx(
                _lat(fo, p).sum() + extra * p.eager_kernel_s, rel=1e-12)
    assert not build_graph(MOE.with_(experts=0, top_k=0), mbs=1,
                           moe_router_fusion=True).moe_router_fusion


@pytest.mark.parametrize("fusion", [False, True])
def test_load_balancing_and_forced_routing_kernels(fusion):
    """The load-balancing loss adds its own scores over all experts (as many kernels as the
    routing's: fused one per pass, eager 9 / 5) and the loss's 4 / 3 kernels (routing_map
    .sum, the fused loss, the tracker's two; the autoscaler's two and the loss backward);
    forced balancing its random logits (clone, normal_) to the forward only. Each extra
    kernel costs one per-kernel overhead: the bytes are the routing op's."""
    from phaze.errors import UserError

    p = preset_params("h100")

    def route(**kw):
        g = build_graph(MOE, mbs=1, ep=4, moe_router_fusion=fusion, **kw)
        blk = next(lg for lg in g.layers if lg.kind.startswith("block"))
        return g, [next(o for o in blk.ops(ps) if o.name in ("moe.route", "moe.route.bwd"))
                   for ps in ("fwd", "bwd")]

    _, (f0, b0) = route()
    g, (f1, b1) = route(moe_router_load_balancing_type="aux_loss",
                        moe_router_force_load_balancing=True)
    assert (g.moe_router_load_balancing_type, g.moe_router_force_load_balancing) == ("aux_loss", True)
    base = (1, 1) if fusion else (9, 5)
    assert (max(f1.kernels, 1), max(b1.kernels, 1)) == (2 * base[0] + 4 + 2, 2 * base[1] + 3)
    for a, b in ((f0, f1), (b0, b1)):
        assert (a.bytes_read, a.bytes_written) == (b.bytes_read, b.bytes_written)
        assert _lat([b], p)[0] == pytest.approx(
            _lat([a], p)[0] + (max(b.kernels, 1) - max(a.kernels, 1)) * p.eager_kernel_s, rel=1e-12)
    _, (f2, b2) = route(moe_router_load_balancing_type="seq_aux_loss")
    assert (f2.kernels, b2.kernels) == (f1.kernels - 2, b1.kernels)
    _, (f3, b3) = route(moe_router_load_balancing_type="global_aux_loss")
    assert (f3.kernels, b3.kernels) == (f2.kernels + 3, b2.kernels)
    with pytest.raises(UserError, match="load-balancing"):
        build_graph(MOE, mbs=1, moe_router_load_balancing_type="sinkhorn")
