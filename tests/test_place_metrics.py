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
