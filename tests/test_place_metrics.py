"""Memory counts a tied embedding once, and every throughput metric comes from the graph's
model FLOPs (tflops = mfu x peak), hardware FLOPs apart."""

import pytest

from phaze.model.graph import build_graph
from phaze.model.zoo import resolve_model
from phaze.place.chain import chain_from_graph
from phaze.place.plan import PlanOptions, evaluate_plan


def _chain(model, seq=1024, tp=1):
    g = build_graph(resolve_model(model), seq=seq, mbs=1, tp=tp)
    return g, chain_from_graph(g, op_latency_s=lambda o: 1e-6 + o.flops / 1e14)


@pytest.mark.parametrize("model", ["gpt2-xl", "gpt3-175b"])
def test_tied_embedding_counted_once_on_one_stage(model):
    """t = p = d = 1: the weights are the model's unique parameters (params_total, which
    counts the tied head once), as Megatron keeps one copy when embedding and head share a
    stage; with p = 2 each stage holds its own copy."""
    g, ch = _chain(model, seq=256)
    assert ch.shared_param_count > 0
    opt = PlanOptions(optimizer="adam")
    one = evaluate_plan(ch, 1, 1, 8, "full", options=opt)
    assert one["memory_weights_bytes"] == pytest.approx(g.params_total * opt.weight_bytes,
                                                        rel=1e-12)
    per_param = opt.weight_bytes + opt.grad_bytes + opt.adam_state_bytes
    static = one["memory_weights_bytes"] + one["memory_grads_bytes"] + one["memory_optimizer_bytes"]
    assert static == pytest.approx(g.params_total * per_param, rel=1e-12)
    two = evaluate_plan(ch, 2, 1, 8, "full", options=opt)
    assert sum(s["weights"] for s in two["stage_memory"]) == pytest.approx(
        (g.params_total + ch.shared_param_count) * opt.weight_bytes, rel=1e-12)


@pytest.mark.parametrize("rec", ["none", "selective", "full"])
def test_throughput_metrics_from_model_flops(rec):
    g, ch = _chain("llama2-7b", seq=1024, tp=2)
    peak = 400e12
    plan = evaluate_plan(ch, 4, 2, 64, rec, peak_flops=peak)
    model = (g.flops("fwd") + g.flops("bwd")) * g.tp * 64      # per microbatch x replicas
    assert plan["model_flops"] == pytest.approx(model, rel=1e-12)
    devices = 4 * 2 * 2
    assert plan["mfu"] == pytest.approx(model / (plan["time_per_batch_s"] * devices * peak))
    assert plan["tflops_per_device"] == pytest.approx(plan["mfu"] * peak / 1e12, rel=1e-12)
    # full recomputation re-runs the transformer blocks' forward (not embedding or head)
    blocks_fwd = sum(lg.flops("fwd") * lg.repeat for lg in g.layers
                     if lg.kind not in ("prologue", "epilogue"))
    redo = {"none": 0.0, "full": blocks_fwd,
            "selective": sum(o.flops * lg.repeat for lg in g.layers
                             for o in lg.selective_recompute_ops())}[rec] * g.tp * 64
    assert plan["hardware_flops"] == pytest.approx(model + redo, rel=1e-12)
    assert plan["hfu"] >= plan["mfu"]


@pytest.mark.parametrize("window, cp", [(0, 1), (0, 4), (256, 1)])
def test_hardware_flops_skip_the_causal_kernels_masked_blocks(window, cp):
    """A fused causal attention kernel runs the causal band of its queries x keys rectangle
    (half the square; s w - w^2/2 of s w for a window of w keys), which model FLOPs count
    whole: hardware FLOPs are model FLOPs less the other part of every core's FLOPs, the
    same under CP (each device 1/cp of the band), so HFU may be below MFU."""
    from dataclasses import replace

    spec = resolve_model("llama2-7b")
    if window:
        spec = replace(spec, sliding_window=window, layer_types=("sliding",) * spec.layers)
    seq = 2048
    g = build_graph(spec, seq=seq, mbs=1, tp=1, cp=cp, attention="flash")
    lat = (lambda o: 1e-6 + o.flops / 1e14)
    flat = chain_from_graph(g, op_latency_s=lat)
    causal = chain_from_graph(g, op_latency_s=lat, causal_cores=True)
    plan = {c: evaluate_plan(ch, 1, 1, 4, "none", options=PlanOptions(cp=cp), peak_flops=4e14)
            for c, ch in (("flat", flat), ("causal", causal))}
    w = window or seq
    kept = (seq * w - w * w / 2) / (seq * w)          # the band's share of the rectangle
    cores = [(o, lg.repeat) for lg in g.layers for o in (*lg.fwd, *lg.bwd)
             if o.name.split(".bwd")[0].endswith("attn.core")]
    core = sum(o.flops * r for o, r in cores)                      # what the kernels run
    rerun = sum(o.rerun_flops * r for o, r in cores)               # the backward's S = Q K^T
    fwd = sum(o.flops * r for o, r in cores if not o.name.endswith(".bwd"))
    assert rerun == pytest.approx(fwd / 2, rel=1e-12)   # one of the forward's two GEMMs
    per = cp * cp * 4               # the ring's cores (cp) x the CP group x 4 microbatches
    assert plan["causal"]["model_flops"] == pytest.approx(plan["flat"]["model_flops"], rel=1e-12)
    assert plan["flat"]["hardware_flops"] == pytest.approx(
        plan["flat"]["model_flops"] + rerun * per, rel=1e-12)
    assert plan["causal"]["hardware_flops"] == pytest.approx(
        plan["flat"]["model_flops"] + rerun * per - (1 - kept) * core * per, rel=1e-9)
    if not window:       # half the square skipped outweighs the re-computed scores
        assert plan["causal"]["hfu"] < plan["causal"]["mfu"]


def test_model_flops_count_a_fused_attention_backward_as_twice_its_forward():
    """Megatron counts the attention core's backward as twice its forward whatever the kernel;
    the fused backward's fifth GEMM re-computes S = Q K^T (Op.rerun_flops): executed, so in
    hardware FLOPs, not in model FLOPs. Eager and fused attention then give the same model
    FLOPs up to the eager softmax and dropout's element-wise FLOPs."""
    from phaze.place.chain import _model_flops

    spec = resolve_model("llama2-7b")
    for model in ("llama2-7b", "deepseek-v2-lite"):   # MLA: Q K's head dim apart from V's
        graph = build_graph(resolve_model(model), seq=1024, mbs=1, tp=1, attention="flash")
        block = next(lg for lg in graph.layers if lg.kind.startswith("block"))
        fwd = [o for o in block.fwd if o.name.endswith("attn.core")]
        bwd = [o for o in block.bwd if o.name.endswith("attn.core.bwd")]
        assert fwd and bwd and bwd[0].rerun_flops > 0
        assert _model_flops(bwd, 1.0) == pytest.approx(2 * _model_flops(fwd, 1.0), rel=1e-12)
    flops = {a: evaluate_plan(_chain_of(spec, a), 1, 1, 4, "none")["model_flops"]
             for a in ("eager", "flash")}
    assert flops["flash"] == pytest.approx(flops["eager"], rel=5e-3)


def _chain_of(spec, attention):
    return chain_from_graph(build_graph(spec, seq=1024, mbs=1, tp=1, attention=attention),
                            op_latency_s=lambda o: 1e-6 + o.flops / 1e14)
