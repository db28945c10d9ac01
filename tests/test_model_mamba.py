"""Nemotron-H (hf family `nemotron_h`): Mamba-2 mixers mixed with attention, MLP and MoE
blocks (spec.mixer_types "mamba"; graph._mamba).

Against transformers on the meta device (eager attention, batched_mm experts): the same
parameter count, and forward FLOPs equal part by part. FlopCounterMode does run the Mamba
path on meta (transformers falls back to its PyTorch reference code without mamba_ssm /
causal_conv1d); per Mamba layer it counts
  * aten.mm (aten.addmm with use_bias): in_proj and out_proj, exactly the graph's two linears;
  * aten.convolution: the depthwise conv1d over the padded output, 2 b (s + K - 1) C K
    (C = d_inner + 2 G N channels; the graph's `mamba.conv1d` is a vector op, not a GEMM);
  * aten.bmm: the reference chunked scan's five einsums (`hf_reference_scan` below): CB per
    head (not per group as the Triton kernel), the intra-chunk output, the chunk states, the
    inter-chunk recurrence as a dense (nc + 1)^2 einsum, and C x states. The graph counts
    the Triton kernels instead (`ssd_kernel_flops`), so the scan is compared by formula.
Megatron's hybrid FLOPs formula (megatron/training/training.py, num_floating_point_operations
-> hybrid_flops) is the independent second route for model FLOPs.
"""

import math

import pytest

from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.hf import spec_from_hf_dict
from phaze.model.zoo import HF_ZOO_CONFIGS, ZOO

SEQ = 64
SMALL = dict(model_type="nemotron_h", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=96, vocab_size=101, max_position_embeddings=256,
             mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4,
             chunk_size=16)
MOE = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
           moe_shared_expert_intermediate_size=48)
CASES = {
    # every pattern character, chunks of 16 over 64 tokens
    "all-kinds": dict(SMALL, hybrid_override_pattern="M*-E", **MOE),
    # transformers 5's list form, no conv / with projection biases, a chunk longer than the
    # sequence (padded), MLP biases, one group
    "block-list": dict(SMALL, layers_block_type=["mamba", "mlp", "mamba", "attention", "mlp"],
                       use_conv_bias=False, use_bias=True, chunk_size=128, mlp_bias=True,
                       n_groups=1),
    # (every case has an attention layer: transformers asks the cache for the sequence length)
    "moe": dict(SMALL, hybrid_override_pattern="MEM*E", conv_kernel=2, chunk_size=32, **MOE),
    # real size: nvidia/Nemotron-H-8B-Base-8K
    "nemotron-h-8b": HF_ZOO_CONFIGS["nemotron-h-8b"][3],
    # real size, MoE with a shared expert: NVIDIA Nemotron 3 Nano 30B-A3B
    "nemotron-3-nano": HF_ZOO_CONFIGS["nemotron-3-nano"][3],
}


def _dims(cfg):
    spec = spec_from_hf_dict(cfg)
    return spec, spec.mamba_num_heads, spec.mamba_head_dim, spec.ssm_state_size, spec.mamba_n_groups


def hf_reference_scan(b, s, Q, H, P, N):
    """FLOPs FlopCounterMode counts for transformers' reference mamba2_chunk_scan (its einsums
    as bmm): G = C B^T per head, Y_diag, chunk states, the (nc + 1)^2 inter-chunk einsum, C x
    states."""
    nc = -(-s // Q)
    intra = 2 * b * nc * Q * Q * H * (N + P)
    return intra + 2 * 2 * b * nc * Q * H * P * N + 2 * b * H * (nc + 1) ** 2 * P * N


def ssd_kernel_flops(b, s, Q, H, P, N, G):
    """mamba_ssm's Triton kernels: bmm_chunk (per group), chunk_state, chunk_scan (k = Q + N)."""
    nc = -(-s // Q)
    return 2 * b * nc * (G * Q * Q * N + H * P * N * Q + H * Q * P * (Q + N))


def _hf_model(fields):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**fields)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "batched_mm"
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.mark.crosscheck
@pytest.mark.parametrize("case", list(CASES))
def test_nemotron_h_matches_transformers(case):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    fields = CASES[case]
    model = _hf_model(fields)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=torch.zeros(1, SEQ, dtype=torch.long, device="meta"))
    spec, H, P, N, G = _dims(fields)
    g = build_graph(spec, SEQ, 1)
    assert g.params_total == sum(p.numel() for p in model.parameters())

    K, Q, C = spec.conv_kernel, spec.chunk_size, H * P + 2 * G * N
    n_mamba = spec.mixer_types.count("mamba")
    counts = counter.get_flop_counts()
    mamba_layers = [i for i, m in enumerate(spec.mixer_types) if m == "mamba"]
    for i in mamba_layers:   # each Mamba layer, op by op
        per = {str(k): v for k, v in counts[f"NemotronHForCausalLM.model.layers.{i}"].items()}
        assert per["aten.convolution"] == 2 * (SEQ + K - 1) * C * K
        assert per["aten.bmm"] == hf_reference_scan(1, SEQ, Q, H, P, N)
    block = next(lg for lg in g.layers if lg.kind.startswith("block.mamba"))
    gemms = {o.name: o.flops for o in block.fwd if o.kind == "gemm"}
    assert gemms["mamba.in_proj"] + gemms["mamba.out_proj"] == per.get("aten.mm", 0) + per.get("aten.addmm", 0)
    ssd = sum(f for n, f in gemms.items() if n.startswith("mamba.ssd."))
    assert ssd == ssd_kernel_flops(1, SEQ, Q, H, P, N, G)

    # the whole model: the graph's GEMMs with the scan counted as transformers' reference
    # code runs it, plus its convolutions, are transformers' total
    ours = sum(o.flops * lg.repeat for lg in g.layers for o in lg.fwd if o.kind == "gemm")
    ref = ours + n_mamba * (hf_reference_scan(1, SEQ, Q, H, P, N) - ssd
                            + 2 * (SEQ + K - 1) * C * K)
    assert ref == counter.get_total_flops()


def megatron_hybrid_flops(spec, batch, seq):
    """Megatron-LM's hybrid_flops (training.py): 3 x forward, causal attention core halved,
    Mamba in_proj + 7 T d_in N scan + out_proj, no conv, no router."""
    T, h = batch * seq, spec.hidden
    kinds = [(spec.mixer_type(i), spec.ffn_type(i)) for i in range(spec.layers)]
    p = spec.d_head * spec.heads / h
    attn = 4 * T * h * p * (h + h * spec.n_kv_heads / spec.heads) + 2 * batch * seq ** 2 * h * p
    d_in, H, G, N = spec.mamba_inner, spec.mamba_num_heads, spec.mamba_n_groups, spec.ssm_state_size
    mamba = 2 * T * h * (2 * d_in + 2 * G * N + H) + 7 * T * d_in * N + 2 * T * d_in * h
    mlp = 4 * T * h * spec.ffn
    moe = 4 * T * h * spec.expert_ffn * spec.top_k + 4 * T * h * spec.shared_ffn
    fwd = (kinds.count(("attention", "none")) * attn + kinds.count(("mamba", "none")) * mamba
           + kinds.count(("none", "dense")) * mlp + kinds.count(("none", "moe")) * moe
           + 2 * T * h * spec.vocab)
    return 3 * fwd


def test_8b_model_flops_against_megatron():
    """Nemotron-H-8B at seq 8192: the graph's GEMM FLOPs (forward + backward; what phaze
    reports as model FLOPs, place.plan._flop_metrics, sums the graph's FLOPs) against
    Megatron's formula. Equal once the two stated differences are taken out: phaze's eager
    attention core computes the whole s x s square (Megatron counts the causal half), and
    the scan is the Triton kernels' count where Megatron writes 7 T d_in N (the kernels'
    count is 0.89 of it here; ~1 % of the model)."""
    spec, seq, b = ZOO["nemotron-h-8b"], 8192, 1
    g = build_graph(spec, seq, b)
    ours = sum(sum(o.flops for o in lg.fwd + lg.bwd if o.kind == "gemm") * lg.repeat
               for lg in g.layers)
    n_attn, n_mamba = spec.mixer_types.count("attention"), spec.mixer_types.count("mamba")
    core = 4 * b * seq ** 2 * spec.heads * spec.d_head      # eager QK^T + PV, forward
    d_in, N = spec.mamba_inner, spec.ssm_state_size
    ssd = ssd_kernel_flops(b, seq, spec.chunk_size, spec.mamba_num_heads, spec.mamba_head_dim, N,
                           spec.mamba_n_groups)
    meg = megatron_hybrid_flops(spec, b, seq)
    adjusted = meg + 3 * n_attn * core / 2 + 3 * n_mamba * (ssd - 7 * b * seq * d_in * N)
    assert ours == pytest.approx(adjusted, rel=1e-12)
    assert ssd / (7 * b * seq * d_in * N) == pytest.approx(0.893, abs=1e-3)
    assert ours / meg == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("tp,sp", [(2, True), (2, False), (4, True)])
def test_tensor_parallel_splits_heads_and_groups(tp, sp):
    """Heads and groups split over TP: GEMM FLOPs x t (the MoE router apart: without SP every
    device routes all tokens) and parameters summed over the shards are t = 1's; the Mamba block's TP traffic is the attention block's (one all-gather /
    reduce-scatter pair with SP, one all-reduce without)."""
    spec = spec_from_hf_dict(dict(CASES["all-kinds"], num_attention_heads=8, num_key_value_heads=4,
                                  n_groups=4, vocab_size=128), name="tp")
    one, g = build_graph(spec, SEQ, 2), build_graph(spec, SEQ, 2, tp=tp, sequence_parallel=sp)

    def gemm(graph, pass_):
        return sum(o.flops * lg.repeat for lg in graph.layers for o in lg.ops(pass_)
                   if o.kind == "gemm" and (sp or not o.name.startswith("moe.router")))

    for pass_ in ("fwd", "bwd"):
        assert gemm(g, pass_) * tp == pytest.approx(gemm(one, pass_), rel=1e-12)
    assert g.params_total == one.params_total
    m1 = next(lg for lg in one.layers if lg.kind.startswith("block.mamba"))
    mt = next(lg for lg in g.layers if lg.kind.startswith("block.mamba"))
    norms = m1.param_count - mt.param_count * tp   # the block's RMSNorm (h) is replicated
    assert norms == -(tp - 1) * spec.hidden
    colls = sorted(o.collective for o in mt.fwd if o.kind == "collective")
    assert colls == (["all_gather", "reduce_scatter"] if sp else ["all_reduce"])
    if sp:   # saved activations: every tensor is split over heads or over the sequence
        assert mt.activation_bytes["none"] * tp == m1.activation_bytes["none"]


def test_saved_activations_counted_once():
    """The Mamba block keeps its norm input, the in_proj input, zxbcdt (kept once, by the
    conv), the scan output out_x, the gated norm input with its fp32 rstd, the out_proj input."""
    spec = spec_from_hf_dict(CASES["all-kinds"], name="acts")
    b, dt = 2, 2
    g = build_graph(spec, SEQ, b)
    blk = next(lg for lg in g.layers if lg.kind.startswith("block.mamba"))
    T, h, H, P, N, G = b * SEQ, 64, 8, 16, 16, 2
    di, proj = H * P, 2 * H * P + 2 * G * N + H
    want = T * dt * (h + h + proj + 3 * di) + T * G * 4
    assert blk.activation_bytes["none"] == want
    assert blk.activation_bytes["selective"] == want


def test_nemotron_h_8b_params_and_refusals():
    spec = ZOO["nemotron-h-8b"]
    assert spec.position == "none" and spec.mixer_types.count("mamba") == 24
    assert build_graph(spec, 4096, 1).params_total == 8_100_852_736      # model card: 8B
    assert build_graph(ZOO["nemotron-h-56b"], 4096, 1).params_total == 56_324_350_464   # 56B
    spec.check_tp(8)
    with pytest.raises(UserError, match="8 Mamba groups"):
        spec.with_(kv_heads=16).check_tp(16)
    with pytest.raises(UserError) as e:
        build_graph(spec, 4096, 1, cp=2, attention="flash")
    assert e.value.field == "cp" and "Mamba" in str(e.value)
    base = CASES["all-kinds"]
    for bad, field in ((dict(hybrid_override_pattern="M*G"), "hybrid_override_pattern"),
                       (dict(num_hidden_layers=5), "num_hidden_layers"),
                       (dict(moe_latent_size=32), "moe_latent_size"),
                       (dict(attention_bias=True), "attention_bias"),
                       (dict(num_nextn_predict_layers=1), "num_nextn_predict_layers"),
                       (dict(mamba_hidden_act="gelu"), "mamba_hidden_act"),
                       (dict(mlp_bias=True), "mlp_bias"),
                       (dict(tie_word_embeddings=True), "tie_word_embeddings"),
                       (dict(n_groups=3), "n_groups"),
                       (dict(ssm_state_size=0), "ssm_state_size")):
        with pytest.raises(UserError) as e:
            spec_from_hf_dict({**base, **bad})
        assert e.value.field == field, bad


def test_mamba_ops_are_costed():
    """Every op of a Mamba block gets a finite positive latency from the cost model on the
    h100 preset (the SSD kernels as tensor-core GEMMs, conv and recurrence as vector ops)."""
    import numpy as np

    from phaze.cost.api import op_latencies
    from phaze.cost.params import preset_params
    from phaze.hw.presets import get_preset

    g = build_graph(ZOO["nemotron-h-8b"], 4096, 1, tp=2, sequence_parallel=True)
    blk = next(lg for lg in g.layers if lg.kind.startswith("block.mamba"))
    arch = get_preset("h100")
    net = arch.network
    for pass_ in ("fwd", "bwd"):
        ops = [o for o in blk.ops(pass_)]
        lat = op_latencies(ops, arch, net, tp=2, params=preset_params("h100")).lat_all_s
        assert np.all(np.isfinite(lat)) and np.all(lat > 0)
    assert math.isclose(sum(o.flops for o in blk.bwd if o.name.startswith("mamba.ssd.")
                            and o.kind == "gemm"),
                        2 * sum(o.flops for o in blk.fwd if o.name.startswith("mamba.ssd.")
                                and o.kind == "gemm"))


def test_nemotron_3_nano_sizes():
    """Nemotron 3 Nano 30B-A3B (zoo `nemotron-3-nano`, sources in phaze/model/zoo.py): the
    per-block pattern (23 Mamba-2, 23 MoE, 6 attention), the counts (transformers' own
    count is test_nemotron_h_matches_transformers[nemotron-3-nano]) against the round
    published figures, and Megatron-Bridge's own FLOPs per token for these sizes against
    what its performance summary reports for the model (so the sizes, vocabulary
    included, are those Bridge ran)."""
    spec = ZOO["nemotron-3-nano"]
    pat = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
    from phaze.model.hf import NEMOTRON_H_PATTERN
    assert list(zip(spec.mixer_types, spec.ffn_types)) == [NEMOTRON_H_PATTERN[c] for c in pat]
    assert (spec.mixer_types.count("mamba"), spec.ffn_types.count("moe"),
            spec.mixer_types.count("attention")) == (23, 23, 6)
    assert (spec.experts, spec.top_k, spec.expert_ffn, spec.shared_ffn, spec.router,
            spec.activation, spec.n_kv_heads, spec.d_head, spec.mamba_inner) == \
        (128, 6, 1856, 3712, "sigmoid", "relu2", 2, 128, 4096)
    g = build_graph(spec, 8192, 1)
    total = g.params_total
    h, E, k, n_moe = spec.hidden, spec.experts, spec.top_k, 23
    active = total - n_moe * (E - k) * 2 * h * spec.expert_ffn   # up + down per idle expert
    assert (total, active) == (31_577_937_344, 3_580_073_408)
    # Megatron-Bridge docs/models/nemotron/nemotron3-nano.md: "3.5B active parameters
    # and 30B parameters in total" (the name's 30B is the round figure)
    assert abs(active / 3.5e9 - 1) < 0.03 and 30e9 <= total < 32e9
    # Bridge's flop_utils.hybrid_flops (its Mamba term takes d_in = 2 h, not heads x
    # head_dim; core attention full s^2): per token, against the perf summary's
    # Model TFLOP/s / tokens/s of the DGX-H100 rows (331 / 14890 ... 321 / 14336)
    s, V, d_in = 8192, spec.vocab, 2 * h
    p = spec.heads * spec.d_head / h
    attn = 4 * s * h * p * (h + h * spec.n_kv_heads / spec.heads) + 2 * s * h * p * s
    mamba = (2 * s * h * (2 * d_in + 2 * 8 * 128 + 64) + 7 * s * d_in * 128 + 2 * s * d_in * h)
    moe = 4 * s * h * 1856 * 6 + 4 * s * h * 3712
    per_token = 3 * (6 * attn + 23 * mamba + 23 * moe + 2 * s * h * V) / s
    for tflops, tok in ((331, 14890), (323, 14507), (321, 14336), (328, 14719)):
        assert per_token == pytest.approx(tflops * 1e12 / tok, rel=0.006)


def test_nemotron_3_nano_evaluates():
    """A small plan of the zoo model as Megatron-Bridge's H100 recipe runs it (EP 8, expert
    TP 1, flex dispatcher, FP8, selective recompute of moe / layernorm / core_attn /
    moe_act): evaluable, with the EP all-to-alls inside compute."""
    from phaze.hw.presets import get_preset
    from phaze.place.evaluate import dtype_options, evaluate_model

    opts = dict(dtype_options("nemo-2024", grad_sync_dtype="bf16"), moe_token_dispatcher="flex")
    r = evaluate_model(ZOO["nemotron-3-nano"], get_preset("h100"), tp=1, pp=1, dp=8, mbs=1,
                       batch=8, seq=1024, recompute="selective",
                       recompute_modules=("moe", "layernorm", "core_attn", "moe_act"), ep=8,
                       expert_tp=1, framework="nemo-2024", fp8=True, cross_entropy_fusion=True,
                       options=opts)
    assert r["feasible"] and r["time_per_batch_s"] > 0 and r["ep_a2a_s"] > 0
    assert r["model_flops"] > 0 and "tflops_per_gpu_eq3" not in r
