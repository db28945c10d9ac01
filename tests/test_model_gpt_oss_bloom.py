"""gpt-oss (attention sinks, router and expert biases, clamped SwiGLU, alternating sliding
windows) and BLOOM (ALiBi, embedding LayerNorm): published parameter counts, the graph's
sink and ALiBi ops against closed forms, TP 1 vs 2 (and sequence parallel) invariants,
context parallelism refused, config fields refused naming the field. The exact match with
transformers (params, forward GEMM FLOPs) is in test_model_crosscheck_families.py."""

import pytest

from phaze.cost.api import op_latencies
from phaze.cost.params import CostParams
from phaze.errors import UserError
from phaze.hw.arch import Network
from phaze.hw.presets import PRESETS
from phaze.model.graph import build_graph
from phaze.model.hf import spec_from_hf_dict
from phaze.model.zoo import ZOO

SMALL_OSS = dict(model_type="gpt_oss", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, intermediate_size=48, vocab_size=101,
                 max_position_embeddings=256, num_local_experts=4, num_experts_per_tok=2,
                 sliding_window=16)
SMALL_BLOOM = dict(model_type="bloom", n_embed=64, n_layer=2, n_head=4, vocab_size=101)


def _blocks(g):
    return [lg for lg in g.layers if lg.kind.startswith("block")]


def _gemm_flops(g, phase, prefix=""):
    return sum(o.flops * lg.repeat for lg in g.layers for o in getattr(lg, phase)
               if o.kind == "gemm" and o.name.startswith(prefix))


# --- published parameter counts ---------------------------------------------------------
def test_gpt_oss_120b_total_and_active_as_openai_counts_them():
    """OpenAI's model card: 116.83B total, 5.13B active (top-4 of 128 experts, the
    unembedding counted, the embedding table not). Per layer: q, k, v, o with biases, 64
    sinks, the router with bias, 128 experts of gate_up (2880 x 5760 + 5760) and down
    (2880 x 2880 + 2880), two RMSNorms."""
    sp = ZOO["gpt-oss-120b"]
    g = build_graph(sp, 256, 1)
    h, a, kv, d, f, E, k, V, l = 2880, 64, 8, 64, 2880, 128, 4, 201088, 36
    attn = h * a * d + a * d + 2 * (h * kv * d + kv * d) + a * d * h + h + a
    expert = h * 2 * f + 2 * f + f * h + h
    layer = attn + h * E + E + E * expert + 2 * h
    assert g.params_total == l * layer + 2 * V * h + h == 116_829_156_672
    experts = sum(o.param_bytes for lg in _blocks(g) for o in lg.fwd if o.experts) / g.dtype_bytes
    assert experts == E * expert   # one block's routed experts, all on the device at ep 1
    active = g.params_total - l * (E - k) * expert - V * h
    assert active == 5_132_849_472
    assert round(g.params_total / 1e9, 2) == 116.83 and round(active / 1e9, 2) == 5.13
    small = build_graph(ZOO["gpt-oss-20b"], 256, 1).params_total
    assert round(small / 1e9, 2) == 20.91
    assert round((small - 24 * (32 - 4) * expert - V * h) / 1e9, 2) == 3.61


@pytest.mark.parametrize("name,published", [("bloom-176b", 176_247_271_424), ("bloom-7b1", 7_069_016_064)])
def test_bloom_published_parameter_counts(name, published):
    # l (12 h^2 + 13 h) + V h + 4 h: no position table (ALiBi), a LayerNorm after the embedding
    sp = ZOO[name]
    h, l, V = sp.hidden, sp.layers, sp.vocab
    assert build_graph(sp, 256, 1).params_total == l * (12 * h * h + 13 * h) + V * h + 4 * h == published
    assert sp.position == "alibi" and sp.embed_norm and sp.tied_embeddings and sp.seq == 2048


# --- attention sinks -----------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["eager", "flash"])
@pytest.mark.parametrize("t", [1, 2])
def test_attention_sinks_are_one_parameter_per_head(attention, t):
    sp = spec_from_hf_dict(SMALL_OSS)
    s = 64
    g = build_graph(sp, s, 1, t, attention=attention)
    g0 = build_graph(sp.with_(attn_sinks=False), s, 1, t, attention=attention)
    assert g.params_total - g0.params_total == sp.heads * sp.layers
    for lg, lg0 in zip(_blocks(g), _blocks(g0)):
        assert lg.param_count - lg0.param_count == sp.heads // t   # split over TP with the heads
    ops = {o.name: o for o in _blocks(g)[0].fwd}
    owner = ops["attn.sinks"] if attention == "eager" else ops["attn.core"]
    assert owner.param_bytes == sp.heads // t * g.dtype_bytes
    # the sinks add no GEMM work
    for phase in ("fwd", "bwd"):
        assert _gemm_flops(g, phase) == _gemm_flops(g0, phase)


def test_eager_sinks_widen_the_softmax_by_one_column():
    sp = spec_from_hf_dict(SMALL_OSS)
    s, b, t, dt = 64, 2, 2, 2
    a = sp.heads // t
    g = build_graph(sp, s, b, t)
    g0 = build_graph(sp.with_(attn_sinks=False), s, b, t)
    blk, blk0 = _blocks(g)[0], _blocks(g0)[0]
    ops = {o.name: o for o in blk.fwd}
    assert ops["attn.sinks"].vclass == "copy" and ops["attn.sinks"].elements == b * a * s * (s + 1)
    assert ops["attn.softmax"].elements == b * a * s * (s + 1)
    assert ops["attn.context"].deps == ("attn.softmax", "attn.qkv" if sp.fused_qkv else "attn.v")
    assert "attn.sinks.bwd" in {o.name for o in blk.bwd}
    # the softmax output kept for the backward is one column wider (no dropout in gpt-oss);
    # selective recomputation drops it whole
    for mode in ("none", "selective"):
        extra = b * a * s * dt if mode == "none" else 0
        assert blk.activation_bytes[mode] - blk0.activation_bytes[mode] == extra


# --- ALiBi ---------------------------------------------------------------------------------
def test_alibi_is_an_add_over_the_eager_scores_and_free_under_flash():
    sp = spec_from_hf_dict(SMALL_BLOOM)
    s, b, t, dt = 64, 2, 2, 2
    a = sp.heads // t
    g = build_graph(sp, s, b, t)
    blk = _blocks(g)[0]
    ops = {o.name: o for o in blk.fwd}
    al = ops["attn.alibi"]
    assert al.vclass == "add" and al.elements == b * a * s * s and al.deps == ("attn.scores",)
    # baddbmm: the bias written at the scores' size then read back by the GEMM: one read and
    # one write of b a/t s^2 (+ the b a/t x s slopes x positions)
    assert al.bytes_read == (b * a * s * s + b * a * s) * dt and al.bytes_written == b * a * s * s * dt
    assert ops["attn.softmax"].deps == ("attn.alibi",)
    assert not any(o.name.startswith("attn.alibi") for o in blk.bwd)   # the gradient passes through
    learned = sp.with_(position="learned", max_positions=s)
    gl = build_graph(learned, s, b, t)
    assert _blocks(gl)[0].activation_bytes == blk.activation_bytes   # nothing kept
    assert g.params_total == gl.params_total - s * sp.hidden      # no position table
    # fused epilogues: the add rides in the scores GEMM (beta = 1)
    fused = {o.name: o for o in _blocks(build_graph(sp, s, b, t, fused=True))[0].fwd}
    assert "attn.alibi" not in fused and "add" in fused["attn.scores"].fused
    # flash: an in-kernel bias, the same fused op as without ALiBi
    fl = _blocks(build_graph(sp, s, b, t, attention="flash"))[0]
    fl0 = _blocks(build_graph(learned, s, b, t, attention="flash"))[0]
    assert [(o.name, o.flops) for o in fl.fwd] == [(o.name, o.flops) for o in fl0.fwd]


# --- TP invariants ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [SMALL_OSS, SMALL_BLOOM], ids=["gpt_oss", "bloom"])
@pytest.mark.parametrize("attention", ["eager", "flash"])
@pytest.mark.parametrize("seqp", [False, True])
def test_tp2_splits_the_work_of_tp1(cfg, attention, seqp):
    sp = spec_from_hf_dict({**cfg, "vocab_size": 128})   # an even vocabulary: no padded row
    s = 64
    one = build_graph(sp, s, 2, 1, attention=attention)
    two = build_graph(sp, s, 2, 2, seqp, attention=attention)
    assert two.params_total == one.params_total
    # without SP the MoE router is replicated: every TP rank routes all tokens
    router = (lambda g, phase: _gemm_flops(g, phase, "moe.router")) if not seqp else (lambda g, p: 0.0)
    for phase in ("fwd", "bwd"):
        assert router(two, phase) == router(one, phase)
        assert (_gemm_flops(two, phase) - router(two, phase)) * 2 == pytest.approx(
            _gemm_flops(one, phase) - router(one, phase), rel=1e-12)
    for lg in two.layers:
        for ops in (lg.fwd, lg.bwd):
            seen = set()
            for o in ops:
                assert all(d in seen for d in o.deps), (o.name, o.deps)
                seen.add(o.name)
    if seqp and sp.experts:   # MoE under TP + SP: Megatron-Core's alltoall dispatcher
        names = {o.name for lg in _blocks(two) for o in lg.fwd}
        assert {"moe.sp2hp", "moe.hp2sp", "moe.router"} <= names


def test_gpt_oss_blocks_alternate_under_flash_and_biases_sit_on_the_experts():
    sp = ZOO["gpt-oss-20b"]
    g = build_graph(sp, 1024, 1, attention="flash")
    kinds = [lg.kind for lg in g.layers[1:-1]]
    assert kinds == ["block.sliding", "block"] * 12
    sl = {o.name: o for o in g.layers[1].fwd}
    full = {o.name: o for o in g.layers[2].fwd}
    assert sl["attn.core"].gemm.n == 128 and full["attn.core"].gemm.n == 1024
    h, f, E = sp.hidden, sp.ffn, sp.experts
    assert sl["moe.router"].param_bytes == (h * E + E) * 2
    assert sl["moe.expert.gate"].param_bytes == E * (h * f + f) * 2
    assert sl["moe.expert.down"].param_bytes == E * (f * h + h) * 2
    assert sl["moe.expert.act"].vclass == "clamped_swiglu"


def test_clamped_swiglu_costs_as_swiglu():
    p = CostParams()
    assert p.cpe("clamped_swiglu") == p.cpe("swiglu")
    g = build_graph(ZOO["gpt-oss-20b"], 512, 1)
    ops = [o for o in g.layers[1].fwd if o.kind != "collective"]
    c = op_latencies(ops, [PRESETS["h100"]], Network(), params=p)
    assert (c.lat_all_s > 0).all()


# --- refusals ------------------------------------------------------------------------------
def test_context_parallel_refused_for_alibi_and_sinks_off_a2a():
    """ALiBi: no TE backend under any CP; sinks: only the all-to-all CP (TE's backend
    filter disables FusedAttention for them under p2p and all_gather)."""
    from phaze.model.graph import cp_comm_problem

    bloom = spec_from_hf_dict(SMALL_BLOOM)
    with pytest.raises(UserError) as e:
        build_graph(bloom, 64, 1, attention="flash", cp=2)
    assert e.value.field == "cp"
    build_graph(bloom, 64, 1, attention="flash")
    oss = spec_from_hf_dict({**SMALL_OSS, "layer_types": ["full_attention"] * 4})
    build_graph(oss, 64, 1, attention="flash", cp=2)
    for kind in ("p2p", "allgather"):
        assert "sinks" in cp_comm_problem(oss, 64, 1, 2, kind)
    assert cp_comm_problem(oss, 64, 1, 2, "a2a") is None


@pytest.mark.parametrize("cfg,field", [
    ({**SMALL_OSS, "attention_dropout": 0.1}, "attention_dropout"),
    ({**SMALL_OSS, "swiglu_limit": "7"}, "swiglu_limit"),
    ({**SMALL_OSS, "layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({**SMALL_OSS, "rope_scaling": {"rope_type": "weird"}}, "rope_scaling"),
    ({**SMALL_BLOOM, "apply_residual_connection_post_layernorm": True},
     "apply_residual_connection_post_layernorm"),
    ({**SMALL_BLOOM, "hidden_dropout": 0.1}, "attention_dropout"),
    ({**SMALL_BLOOM, "n_head": 4.0}, "n_head"),
])
def test_unmodelled_values_refused_naming_the_field(cfg, field):
    with pytest.raises(UserError) as e:
        spec_from_hf_dict(cfg)
    assert e.value.field == field


def test_spec_validation_of_the_new_fields():
    sp = spec_from_hf_dict(SMALL_BLOOM)
    for f in ("router_bias", "expert_bias"):
        with pytest.raises(UserError) as e:
            sp.with_(**{f: True}).validate()
        assert e.value.field == f
    assert ZOO["gpt-oss-120b"].to_dict()["attn_sinks"] is True
