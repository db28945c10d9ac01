"""Selective recomputation by Megatron-Core's --recompute-modules (graph.RECOMPUTE_MODULES):
what each module re-runs and drops, against closed forms per block (bf16, one microbatch,
t = 2 with sequence parallelism: a device keeps the sharded T / t x h input of a column-
parallel linear and re-gathers it)."""

import pytest

from phaze.errors import UserError
from phaze.model.graph import RECOMPUTE_MODULES, build_graph
from phaze.model.spec import ModelSpec
from phaze.model.zoo import get_model

DENSE = ModelSpec(name="dense", hidden=1024, layers=2, heads=16, kv_heads=4, ffn=2816, vocab=1000,
                  seq=2048, activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                  tied_embeddings=False, dropout=False, fused_gate_up=True)
MOE = DENSE.with_(name="moe", experts=8, top_k=2, moe_ffn=1408)
T, H, DT, t = 2048, 1024, 2, 2


def _block(spec, mods, attention="flash"):
    g = build_graph(spec, tp=t, sequence_parallel=True, attention=attention, recompute_modules=mods)
    return next(lg for lg in g.layers if lg.kind == "block")


def _drop(spec, mods, attention="flash"):
    b = _block(spec, mods, attention)
    return b.activation_bytes["none"] - b.activation_bytes["selective"]


@pytest.mark.parametrize("name", ["gpt3-175b", "llama3-8b", "mixtral-8x7b", "gemma2-9b"])
@pytest.mark.parametrize("attention", ["eager", "flash"])
def test_default_is_the_attention_core(name, attention):
    """recompute_modules None (the historical selective mode) = Megatron's default
    ("core_attn",): same bytes kept and the same re-run ops, for every block kind."""
    sp = get_model(name)
    a = build_graph(sp, seq=2048, tp=2, sequence_parallel=True, attention=attention)
    b = build_graph(sp, seq=2048, tp=2, sequence_parallel=True, attention=attention,
                    recompute_modules=("core_attn",))
    for la, lb in zip(a.layers, b.layers):
        assert la.activation_bytes == lb.activation_bytes
        assert [o.name for o in la.selective_recompute_ops()] == \
            [o.name for o in lb.selective_recompute_ops()]


def test_dense_block_closed_forms():
    """layernorm (outputs discarded): the two norm outputs the QKV and fc1 keep, 2 T/t h;
    mlp (a checkpoint of the MLP): fc1's gate+up output kept by the SwiGLU (2 T f / t) and
    the SwiGLU output kept by fc2 (T f / t), not the MLP's input (the checkpoint's);
    together the sum; nothing: no drop and no re-run."""
    f = DENSE.ffn // t
    assert _drop(DENSE, ("layernorm",)) == 2 * T // t * H * DT
    assert _drop(DENSE, ("mlp",)) == 3 * T * f * DT
    assert _drop(DENSE, ("layernorm", "mlp")) == 2 * T // t * H * DT + 3 * T * f * DT
    assert _drop(DENSE, ()) == 0 and not _block(DENSE, ()).selective_recompute_ops()
    ran = {o.name for o in _block(DENSE, ("mlp",)).selective_recompute_ops()}
    assert {"mlp.fc1", "mlp.act", "mlp.fc2"} <= ran and "ln2" not in ran
    # MoE-only modules would re-run nothing in a dense model: refused (Megatron-Core
    # refuses mla_up_proj without MLA alike)
    from phaze.errors import UserError
    for m in ("moe", "moe_act", "shared_experts", "mla_up_proj"):
        with pytest.raises(UserError, match=f"{m}.*re-runs nothing"):
            _drop(DENSE, (m,))


def test_moe_block_closed_forms():
    """moe_act (output discarded): the expert SwiGLU's output the down projection keeps,
    the alltoall layout's T k slots (all-gathered over TP) x f_e / t;
    mlp does nothing to an MoE block; moe drops everything inside the MoE layer but its
    input (the router's, the checkpoint's)."""
    fe = MOE.expert_ffn // t
    k = MOE.top_k
    assert _drop(MOE, ("moe_act",)) == T * k * fe * DT
    from phaze.errors import UserError
    with pytest.raises(UserError, match="no dense MLP block"):   # every block is MoE
        _drop(MOE, ("mlp",))
    b = _block(MOE, ("moe",))
    kept = {o.name: o.saved_bytes for o in b.fwd if o.name.startswith("moe.")}
    assert _drop(MOE, ("moe",)) == sum(kept.values()) - kept["moe.router"]
    assert kept["moe.router"] == T // t * H * DT


def test_unknown_module_is_one_clear_error():
    with pytest.raises(UserError, match="recompute_modules"):
        build_graph(DENSE, recompute_modules=("attn",))
    assert set(RECOMPUTE_MODULES) >= {"core_attn", "layernorm", "mlp", "moe", "moe_act",
                                      "mla_up_proj", "shared_experts"}


def test_evaluate_uses_the_modules():
    """On the preset route more modules keep less and re-run more: memory falls, time
    rises, against selective with the core alone."""
    from phaze.hw.presets import get_preset
    from phaze.place.evaluate import evaluate_model

    kw = dict(tp=2, pp=1, dp=4, mbs=1, batch=32, seq=4096, sequence_parallel=True,
              recompute="selective", framework="nemo-2024")
    sp, h100 = get_model("llama3-8b"), get_preset("h100")
    core = evaluate_model(sp, h100, **kw)
    more = evaluate_model(sp, h100, recompute_modules=("core_attn", "layernorm", "mlp"), **kw)
    assert more["memory_activations_bytes"] < core["memory_activations_bytes"]
    assert more["time_per_batch_s"] > core["time_per_batch_s"]
    with pytest.raises(ValueError, match="recompute modules"):
        evaluate_model(sp, h100, **{**kw, "recompute": "full"}, recompute_modules=("mlp",))
