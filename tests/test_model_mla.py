"""Multi-head latent attention (DeepSeek-V2/V3): spec validation, the hf reader's refusals,
tensor parallelism as Megatron-Core runs MLA (FLOPs and parameters against t = 1), the
flash core's dims, context-parallel K/V bytes, and the model FLOPs against Megatron-LM's
MLA formula (megatron/training/training.py num_floating_point_operations)."""

import pytest

from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.hf import spec_from_hf_dict
from phaze.model.spec import ModelSpec
from phaze.model.zoo import HF_ZOO_CONFIGS, ZOO

MLA = ModelSpec(name="mla", hidden=256, layers=3, heads=8, ffn=512, vocab=1000, seq=128,
                activation="swiglu", norm="rmsnorm", position="rope", bias=False, dropout=False,
                fused_qkv=False, tied_embeddings=False, q_lora_rank=96, kv_lora_rank=64,
                qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=24, experts=8, top_k=2,
                moe_ffn=128, shared_ffn=128, router="sigmoid", ffn_types=("dense", "moe", "moe"))
NOQ = MLA.with_(q_lora_rank=0)
DUPLICATED = ("attn.q_down", "attn.kv_down")   # TELinear parallel_mode="duplicated"


def _gemm(g, pass_="fwd", names=None):
    return sum(o.flops * lg.repeat for lg in g.layers for o in lg.ops(pass_)
               if o.kind == "gemm" and (names is None or o.name.split(".d")[0] in names))


def _block_params(g):
    return sum(lg.param_count * lg.repeat for lg in g.layers)


@pytest.mark.parametrize("field,value", [("q_lora_rank", 8), ("qk_rope_head_dim", 8),
                                         ("v_head_dim", 8), ("qk_nope_head_dim", 8)])
def test_mla_fields_need_kv_lora_rank(field, value):
    base = MLA.with_(q_lora_rank=0, kv_lora_rank=0, qk_nope_head_dim=0, qk_rope_head_dim=0,
                     v_head_dim=0)
    base.validate()
    with pytest.raises(UserError) as e:
        base.with_(**{field: value}).validate()
    assert e.value.field == field


@pytest.mark.parametrize("kw,field", [
    (dict(v_head_dim=0), "v_head_dim"), (dict(qk_rope_head_dim=0), "qk_rope_head_dim"),
    (dict(qk_rope_head_dim=15), "qk_rope_head_dim"), (dict(position="learned"), "position"),
    (dict(kv_heads=4), "kv_heads"), (dict(head_dim=32), "head_dim"), (dict(qk_norm=True), "qk_norm"),
    (dict(sliding_window=16), "sliding_window"), (dict(kv_lora_rank=-1), "kv_lora_rank"),
    (dict(router="top1"), "router")])
def test_mla_spec_refusals_name_the_field(kw, field):
    with pytest.raises(UserError) as e:
        MLA.with_(**kw).validate()
    assert e.value.field == field


def test_hidden_need_not_split_into_heads_under_mla():
    MLA.with_(hidden=250).validate()


@pytest.mark.parametrize("spec", [MLA, NOQ], ids=["q_lora", "no_q_lora"])
@pytest.mark.parametrize("attention", ["eager", "flash"])
def test_tp_with_sp_splits_every_gemm(spec, attention):
    """t = 2 with sequence parallelism: the duplicated down projections run on the device's
    T / t tokens and everything else is split over heads / columns / experts, so each
    device's GEMM FLOPs are exactly 1 / t of t = 1's, forward and backward. The model's
    parameters are the same; a device holds 1 / t of the split ones and all of the
    duplicated ones (down projections, their norms, the router, the block norms)."""
    one = build_graph(spec, 128, 2, attention=attention)
    two = build_graph(spec, 128, 2, tp=2, sequence_parallel=True, attention=attention)
    for p in ("fwd", "bwd"):
        assert 2 * _gemm(two, p) == _gemm(one, p), p
    assert two.params_total == one.params_total
    blk1 = [lg for lg in one.layers if lg.kind.startswith("block")]
    blk2 = [lg for lg in two.layers if lg.kind.startswith("block")]
    for a, b in zip(blk1, blk2):
        dup = sum(o.param_bytes for o in a.fwd if o.tp_rule in ("replicated", "sharded")) / 2
        assert b.param_count == pytest.approx((a.param_count - dup) / 2 + dup, rel=1e-12)
    names = [o.name for o in blk2[0].fwd]
    for coll in ("attn.q.all_gather", "attn.kv.all_gather", "attn.k_rope.all_gather",
                 "attn.reduce_scatter"):
        assert coll in names or (coll == "attn.q.all_gather" and not spec.q_lora_rank)


def test_tp_without_sp_repeats_the_down_projections():
    """Without SP every rank runs the duplicated down projections on all T tokens (the same
    result on each), like the MoE router, the rest is split: t x a device's FLOPs = t = 1's +
    (t - 1) x those of the down projections and router; the compressed latents enter the column-parallel up projections through
    Megatron's f (backward all-reduce), and no collective is spent on the rope key."""
    one = build_graph(MLA, 128, 2)
    two = build_graph(MLA, 128, 2, tp=2)
    for p in ("fwd", "bwd"):
        assert 2 * _gemm(two, p) == _gemm(one, p) + _gemm(one, p, DUPLICATED + ("moe.router",))
    blk = [lg for lg in two.layers if lg.kind == "block"][0]
    bwd = {o.name: o for o in blk.bwd}
    assert bwd["attn.q.f.bwd"].collective == bwd["attn.kv.f.bwd"].collective == "all_reduce"
    assert bwd["attn.kv.f.bwd"].comm_bytes == 128 * 2 * 64 * 2
    assert not any("k_rope" in o.name and o.kind == "collective" for o in blk.fwd + blk.bwd)


def test_eager_and_flash_core_dims():
    """Scores are nope + rope deep, P V value-head wide; the flash op carries the same
    forward FLOPs and a backward of S, dQ, dK (q/k deep) and dV, dP (v deep)."""
    s, b, a, dq, dv = 128, 2, 8, 48, 24
    eag = [lg for lg in build_graph(MLA, s, b).layers if lg.kind == "block"][0]
    ops = {o.name: o for o in eag.fwd}
    assert (ops["attn.scores"].gemm.k, ops["attn.scores"].gemm.n) == (dq, s)
    assert (ops["attn.context"].gemm.n, ops["attn.context"].gemm.k) == (dv, s)
    fl = [lg for lg in build_graph(MLA, s, b, attention="flash").layers if lg.kind == "block"][0]
    core = {o.name: o for o in fl.fwd}["attn.core"]
    core_b = {o.name: o for o in fl.bwd}["attn.core.bwd"]
    assert core.flops == ops["attn.scores"].flops + ops["attn.context"].flops \
        == 2 * b * a * s * s * (dq + dv)
    assert core_b.flops == core_b.gemm.flops == 2 * b * a * s * s * (3 * dq + 2 * dv)
    assert core.bytes_written == b * a * s * dv * 2
    # flash keeps Q, K, V and the fp32 log-sum-exp; eager Q, K, V and the probabilities
    assert fl.activation_bytes["none"] - fl.activation_bytes["selective"] == b * a * s * 4
    assert eag.activation_bytes["none"] - eag.activation_bytes["selective"] == b * a * s * s * 2


def test_block_saved_bytes_each_tensor_once():
    """t = 1, eager, no dropout: the block keeps its input x (ln1), the attention input
    (once, for both down projections), both latents before and after their norms, Q, K, V
    (the scores keep Q, K; the context V), the softmax output and the projection input."""
    s, b, h, a, dq, dv, qr, kr = 128, 1, 256, 8, 48, 24, 96, 64
    blk = [lg for lg in build_graph(NOQ.with_(q_lora_rank=qr, ffn_types=("dense",) * 3,
                                               experts=0, top_k=0, moe_ffn=0, shared_ffn=0),
                                    s, b).layers if lg.kind == "block"][0]
    T, dt, ffn = s * b, 2, 512
    attn = (T * h                       # ln1 input
            + T * h                     # q_down / kv_down input
            + T * qr + T * qr           # q_norm input, q_up input
            + T * kr + T * kr           # kv_norm input, kv_up input
            + T * a * dq * 2            # Q and K (scores)
            + b * a * s * s             # softmax output (read by the context GEMM)
            + T * a * dv                # V (context)
            + T * a * dv) * dt          # projection input
    mlp = (T * h + T * h + 2 * T * ffn + T * ffn) * dt   # ln2, gate/up input, act, down input
    assert blk.activation_bytes["none"] == attn + mlp


def test_context_parallel_kv_bytes_are_per_head_k_and_v():
    """A ring step sends this device's K (heads / t x (nope + rope)) and V (heads / t x v)
    of its seq / cp tokens: Transformer Engine's p2p ring concatenates k and v as the core
    attends them (not the compressed latent)."""
    g = build_graph(MLA, 128, 2, tp=2, sequence_parallel=True, attention="flash", cp=2)
    assert g.kv_bytes == 2 * 64 * 4 * (48 + 24) * 2
    with pytest.raises(UserError):
        build_graph(MLA, 128, 2, cp=2)      # eager attention cannot run a CP ring


def test_router_sigmoid_same_gemm_own_vector_cost():
    soft = build_graph(MLA.with_(router="softmax"), 128, 1)
    sig = build_graph(MLA, 128, 1)
    assert _gemm(sig) == _gemm(soft)
    route = [o for lg in sig.layers for o in lg.fwd if o.name == "moe.route"][0]
    assert route.vclass == "sigmoid_topk" and route.elements == 128 * 8


def _megatron_mla_flops(sp, seq, batch):
    """Megatron-LM's num_floating_point_operations for an MLA MoE model (training.py,
    transformer_flops with multi_latent_attention, swiglu, moe_layer_freq as the spec's
    dense/moe pattern, no MTP), written out for one global batch."""
    h, n, V = sp.hidden, sp.heads, sp.vocab
    if sp.q_lora_rank:
        q_term = sp.q_lora_rank * (h + n * (sp.qk_nope_head_dim + sp.qk_rope_head_dim) + 1)
    else:
        q_term = h * n * (sp.qk_nope_head_dim + sp.qk_rope_head_dim)
    attn = 3 * 2 * (q_term + sp.kv_lora_rank * (h + n * (sp.qk_nope_head_dim + sp.v_head_dim) + 1)
                    + h * sp.qk_rope_head_dim + n * sp.v_head_dim * h)
    core = 3 * 2 * (n * (sp.qk_nope_head_dim + sp.qk_rope_head_dim) / 2 + n * sp.v_head_dim / 2)
    kinds = [sp.ffn_type(i) for i in range(sp.layers)]
    dense, moe = kinds.count("dense"), kinds.count("moe")
    ffn = 3 * 2 * 3 * h * (dense * sp.ffn + moe * (sp.expert_ffn * sp.top_k + sp.shared_ffn))
    tokens = batch * seq
    return tokens * (sp.layers * attn + ffn + 3 * 2 * h * V) + sp.layers * core * batch * seq * seq


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2-lite"])
def test_model_flops_against_megatron_mla_formula(name):
    """The graph's GEMM FLOPs (eager: backward = 2 x forward) against Megatron-LM's formula,
    once its conventions are matched: it counts the causal half of the core (x 1/2; the
    graph computes the full s x s), one FLOP per latent element for each RMSNorm (the "+ 1"
    terms: vector ops in the graph) and no router GEMM. Equal to 1e-12; and the plan's
    model FLOPs (phaze.place, all ops incl. vector ones) within 1 % of Megatron's figure
    with the full core."""
    from phaze.place.chain import chain_from_graph
    from phaze.place.plan import evaluate_plan

    sp, seq, mbs = ZOO[name], 1024, 1
    g = build_graph(sp, seq, mbs)
    core = _gemm(g, "fwd", ("attn.scores", "attn.context"))
    router = _gemm(g, "fwd", ("moe.router",))
    norms = 3 * 2 * g.seq * mbs * sp.layers * (sp.q_lora_rank + sp.kv_lora_rank)
    ours = 3 * (_gemm(g, "fwd") - router - core / 2)
    assert _gemm(g, "bwd") == 2 * _gemm(g, "fwd")
    assert ours == pytest.approx(_megatron_mla_flops(sp, seq, mbs) - norms, rel=1e-12)
    full_core = _megatron_mla_flops(sp, seq, mbs) + 3 * core / 2
    ch = chain_from_graph(g, op_latency_s=lambda o: 1e-6 + o.flops / 1e14)
    plan = evaluate_plan(ch, 1, 1, 8, "none", peak_flops=1e15)
    assert plan["model_flops"] == pytest.approx(8 * full_core, rel=1e-2)


def test_deepseek_v3_sizes():
    """671.0B parameters as the zoo counts them (the report's 671B without the MTP module),
    37.6B of them used per token (routed experts at top_k / E; embedding and head included)."""
    sp = ZOO["deepseek-v3"]
    g = build_graph(sp, 4096, 1)
    assert g.params_total == 671_026_404_352
    experts = sum(o.param_bytes / 2 * lg.repeat for lg in g.layers for o in lg.fwd if o.experts)
    active = g.params_total - experts * (1 - sp.top_k / sp.experts)
    assert active == pytest.approx(37.55e9, rel=1e-3)
    assert [(lg.kind, lg.repeat) for lg in g.layers[1:-1]] == [("block.dense_ffn", 3), ("block", 58)]
    assert sp.shared_ffn == 2048 and not sp.shared_gate and sp.router == "sigmoid"


BASE_V3 = HF_ZOO_CONFIGS["deepseek-v3"][3]


@pytest.mark.parametrize("change,field", [
    (dict(scoring_func="softmax"), "scoring_func"), (dict(topk_method="greedy"), "topk_method"),
    (dict(moe_layer_freq=2), "moe_layer_freq"), (dict(num_key_value_heads=64), "num_key_value_heads"),
    (dict(n_group=7), "n_group"), (dict(attention_dropout=0.1), "attention_dropout"),
    (dict(q_lora_rank=0), "q_lora_rank"), (dict(kv_lora_rank=0), "kv_lora_rank"),
    (dict(v_head_dim="128"), "v_head_dim")])
def test_deepseek_v3_reader_refusals(change, field):
    with pytest.raises(UserError) as e:
        spec_from_hf_dict({**BASE_V3, **change})
    assert e.value.field == field


def test_deepseek_v2_reader_refusals():
    cfg = HF_ZOO_CONFIGS["deepseek-v2-lite"][3]
    for change, field in ((dict(topk_method="noaux_tc"), "topk_method"),
                          (dict(mlp_bias=True), "mlp_bias"), (dict(scoring_func="sigmoid"), "scoring_func")):
        with pytest.raises(UserError) as e:
            spec_from_hf_dict({**cfg, **change})
        assert e.value.field == field


def test_all_dense_deepseek_has_no_experts():
    sp = spec_from_hf_dict({**BASE_V3, "num_hidden_layers": 2, "first_k_dense_replace": 2})
    assert sp.experts == 0 and sp.ffn_types == () and sp.shared_ffn == 0


def test_mla_spec_roundtrip():
    assert ModelSpec.from_dict(MLA.to_dict()) == MLA
