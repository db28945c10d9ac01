"""Regressions found by adversarial testing: folded expert grids with ep = 1, the folded
MoE's biases and unique parameter count, mla_up_proj with core_attn, JSON provenance."""
import pytest

from phaze.hw.presets import get_preset
from phaze.model.graph import build_graph
from phaze.model.zoo import get_model
from phaze.place.evaluate import evaluate_model


def _ev(model, **kw):
    base = dict(tp=2, pp=1, dp=8, mbs=1, batch=64, recompute="selective",
                sequence_parallel=True, framework="megatron-core-2024")
    return evaluate_model(get_model(model), get_preset("h100"), **{**base, **kw})


def test_folded_ep1_shards_expert_optimizer_over_expert_dp_group():
    # tp 2, expert_tp 1, ep 1: the experts are whole on every device and their optimizer
    # state is sharded over the t d / (et ep) = 16-device expert-DP group, not d = 8
    sp = get_model("mixtral-8x7b")
    h, f, E, L = sp.hidden, sp.expert_ffn, sp.experts, sp.layers
    a = _ev("mixtral-8x7b", ep=1, expert_tp=1)
    W = a["memory_weights_bytes"] / 2
    expert = L * E * 3 * h * f
    assert W - expert > 0
    hand = (W - expert) * 12 / 8 + expert * 12 / 16
    assert a["memory_optimizer_bytes"] == pytest.approx(hand, rel=1e-9)
    # ep 2 halves the experts per device and the expert-DP group alike: same bytes
    b = _ev("mixtral-8x7b", ep=2, expert_tp=1)
    assert a["memory_optimizer_bytes"] == pytest.approx(b["memory_optimizer_bytes"], rel=1e-9)


@pytest.mark.parametrize("model", ["gpt-oss-20b", "mixtral-8x7b", "deepseek-v2-lite"])
def test_folded_moe_keeps_the_model_parameter_count(model):
    sp = get_model(model)
    ref = build_graph(sp, seq=1024, tp=1).params_total
    for tp, et in [(2, 1), (2, 4), (1, 2), (4, 2)]:
        g = build_graph(sp, seq=1024, tp=tp, sequence_parallel=True, expert_tp=et)
        assert g.params_total == ref, (tp, et)


def test_folded_moe_keeps_gpt_oss_router_and_expert_biases():
    sp = get_model("gpt-oss-20b")
    g1 = build_graph(sp, seq=1024, tp=1)
    g2 = build_graph(sp, seq=1024, tp=1, expert_tp=2)
    per = lambda g: sum(x.param_count * x.repeat for x in g.layers)  # noqa: E731
    w = sp.layers * sp.experts * 3 * sp.hidden * sp.expert_ffn
    fc1_bias = sp.layers * sp.experts * 2 * sp.expert_ffn
    # half the expert weights and gate/up biases go; router and down biases stay
    assert per(g1) - per(g2) == w // 2 + fc1_bias // 2


@pytest.mark.parametrize("attention", ["eager", "flash"])
def test_mla_up_proj_with_core_attn_drops_no_less_than_either(attention):
    sp = get_model("deepseek-v2-lite")

    def kept(mods):
        g = build_graph(sp, seq=2048, tp=2, sequence_parallel=True, attention=attention,
                        recompute_modules=mods)
        return next(x for x in g.layers if x.kind == "block").activation_bytes["selective"]

    both = kept(("core_attn", "mla_up_proj"))
    assert both <= kept(("mla_up_proj",))
    assert both <= kept(("core_attn",))
    assert both < kept(("core_attn",))


def test_evaluate_records_recompute_modules():
    a = _ev("deepseek-v2-lite", pp=3, dp=1, batch=8, ep=1,
            recompute_modules=("mla_up_proj", "core_attn"))
    assert a["recompute_modules"] == ["core_attn", "mla_up_proj"]
    # what ran, written out: selective without modules re-runs the attention core
    # (Megatron-Core's default), the same figures as naming it; no selective: none
    plain, named = _ev("mixtral-8x7b", ep=2), _ev("mixtral-8x7b", ep=2,
                                                  recompute_modules=("core_attn",))
    assert plain["recompute_modules"] == named["recompute_modules"] == ["core_attn"]
    assert plain["time_per_batch_s"] == named["time_per_batch_s"]
    assert _ev("mixtral-8x7b", ep=2, recompute="full")["recompute_modules"] is None
