"""The model zoo: every model of the PHAZE paper (docs/reference.md#models), the GPT models
of Narayanan et al. SC'21 Table 1 and Korthikanti et al. MLSys'23 Tables 3/5, plus
Llama-2-70B (grouped-query attention), Llama-3-8B/70B, Mistral-7B (sliding window),
Mixtral-8x7B (MoE), Qwen2.5-7B, Gemma-2-9B, gpt-oss-20b/120b (MoE, attention sinks) and
BLOOM-7b1/176B (ALiBi). Sizes are published facts; the Hugging Face
models are the fields of their public config.json files, read by phaze.model.hf like a
user's file (only the training sequence length is ours).

`resolve_model(name_or_path)` returns a zoo spec, or a spec read from a Hugging Face
config.json when given a path to one.
"""

from __future__ import annotations

from pathlib import Path

from phaze.errors import UserError
from phaze.model.spec import ModelSpec

_NARAYANAN = "Narayanan et al. SC'21 Table 1 (V=51200, s=2048, ffn=4h)"
_KORTHIKANTI = "Korthikanti et al. MLSys'23 Table 3 (V=51200, s=2048, ffn=4h)"


def _megatron_gpt(name, layers, hidden, heads, seq=2048, vocab=51200, source=_NARAYANAN):
    # Megatron-LM GPT: pre-LN, learned positions, biases, GELU, tied embeddings, fused QKV;
    # vocabulary padded to 51,200 as in Narayanan's Eq. 2 and 3.
    return ModelSpec(name=name, hidden=hidden, layers=layers, heads=heads, ffn=4 * hidden,
                     vocab=vocab, seq=seq, max_positions=seq, source=source)


NEMOTRON_H_8B_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
NEMOTRON_H_56B_PATTERN = ("M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-"
                          "M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-")
# Nemotron 3 Nano 30B-A3B: 23 Mamba-2 + 23 MoE + 6 attention layers
NEMOTRON_3_NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"


def _alternate(layers: int) -> list[str]:
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]


# the fields gpt-oss-20b and gpt-oss-120b share (their config.json files)
_GPT_OSS = dict(
    model_type="gpt_oss", hidden_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
    intermediate_size=2880, vocab_size=201088, max_position_embeddings=131072, num_experts_per_tok=4,
    sliding_window=128, attention_bias=True, attention_dropout=0.0, hidden_act="silu",
    swiglu_limit=7.0, tie_word_embeddings=False,
    rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                  "original_max_position_embeddings": 4096, "truncate": False})

# config.json fields of public Hugging Face models (the published values; fields that change
# no shape, such as rope_theta or token ids, left out)
HF_ZOO_CONFIGS = {
    "llama3-70b": ("meta-llama/Meta-Llama-3-70B", 8192, 70.55e9, dict(
        model_type="llama", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, intermediate_size=28672, vocab_size=128256, max_position_embeddings=8192,
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False)),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", 8192, 7.24e9, dict(
        model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768,
        hidden_act="silu", sliding_window=4096, tie_word_embeddings=False)),
    "mixtral-8x7b": ("mistralai/Mixtral-8x7B-v0.1", 4096, 46.7e9, dict(
        model_type="mixtral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768,
        hidden_act="silu", num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
        tie_word_embeddings=False)),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", 4096, 7.62e9, dict(
        model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, max_position_embeddings=131072,
        hidden_act="silu", use_sliding_window=False, sliding_window=131072, max_window_layers=28,
        tie_word_embeddings=False)),
    "gemma2-9b": ("google/gemma-2-9b", 8192, 9.24e9, dict(
        model_type="gemma2", hidden_size=3584, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8, head_dim=256, intermediate_size=14336, vocab_size=256000,
        max_position_embeddings=8192, hidden_activation="gelu_pytorch_tanh", sliding_window=4096,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
        tie_word_embeddings=True)),
    # DeepSeek-V3 (DeepSeek-AI 2024): 671B without the multi-token-prediction module (685B
    # with it, which neither transformers nor phaze builds), 37B active per token
    "deepseek-v3": ("deepseek-ai/DeepSeek-V3", 4096, 671.03e9, dict(
        model_type="deepseek_v3", hidden_size=7168, num_hidden_layers=61, num_attention_heads=128,
        num_key_value_heads=128, intermediate_size=18432, moe_intermediate_size=2048,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
        first_k_dense_replace=3, moe_layer_freq=1, kv_lora_rank=512, q_lora_rank=1536,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280,
        max_position_embeddings=163840, hidden_act="silu", scoring_func="sigmoid",
        topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=2.5,
        num_nextn_predict_layers=1, attention_bias=False, attention_dropout=0.0,
        rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        tie_word_embeddings=False)),
    # DeepSeek-V2-Lite: MLA without query compression (q_lora_rank null), softmax router
    "deepseek-v2-lite": ("deepseek-ai/DeepSeek-V2-Lite", 4096, 15.71e9, dict(
        model_type="deepseek_v2", hidden_size=2048, num_hidden_layers=27, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=10944, moe_intermediate_size=1408,
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1,
        first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=512, q_lora_rank=None,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400,
        max_position_embeddings=163840, hidden_act="silu", scoring_func="softmax",
        topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
        attention_bias=False, attention_dropout=0.0,
        rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        tie_word_embeddings=False)),
    # Nemotron-H (NVIDIA 2025, arXiv 2504.03624): 24 Mamba-2 + 24 MLP + 4 attention layers;
    # the model card says 8B (published figure here: the model card's round number)
    "nemotron-h-8b": ("nvidia/Nemotron-H-8B-Base-8K", 8192, 8e9, dict(
        model_type="nemotron_h", hidden_size=4096, num_hidden_layers=52,
        hybrid_override_pattern=NEMOTRON_H_8B_PATTERN, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=21504, mlp_hidden_act="relu2",
        vocab_size=131072, max_position_embeddings=8192, mamba_num_heads=128, mamba_head_dim=64,
        ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128, use_conv_bias=True,
        use_bias=False, mamba_proj_bias=False, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=False)),
    # Nemotron-H-56B-Base-8K: 54 Mamba-2 + 54 MLP + 10 attention layers (NVIDIA's project page);
    # pattern and sizes as NeMo's NemotronHConfig56B (mamba heads 2 h / 64 = 256), model card: 56B
    "nemotron-h-56b": ("nvidia/Nemotron-H-56B-Base-8K", 8192, 56e9, dict(
        model_type="nemotron_h", hidden_size=8192, num_hidden_layers=118,
        hybrid_override_pattern=NEMOTRON_H_56B_PATTERN, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, intermediate_size=32768, mlp_hidden_act="relu2",
        vocab_size=131072, max_position_embeddings=8192, mamba_num_heads=256, mamba_head_dim=64,
        ssm_state_size=256, n_groups=8, conv_kernel=4, chunk_size=128, use_conv_bias=True,
        use_bias=False, attention_bias=False, mlp_bias=False, tie_word_embeddings=False)),
    # NVIDIA Nemotron 3 Nano 30B-A3B (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16; its
    # config.json is not at hand offline, so these are NemotronHConfig's field names filled
    # from two independent Megatron configs of the same model, which agree field for field:
    # Megatron-Bridge 067f987d src/megatron/bridge/recipes/nemotronh/h100/nemotron_3_nano.py
    # (HybridModelProvider: pattern, hidden 2688, 32 heads / 2 query groups x kv_channels 128,
    # mamba 64 heads x 64, state 128, 8 groups, 128 experts top-6 of ffn 1856, shared expert
    # 3712, sigmoid router with expert bias, topk scaling 2.5, squared ReLU) and Megatron-LM
    # d98e8a64 examples/post_training/modelopt/conf/nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.sh
    # (the same plus RMSNorm, no biases, untied, no positions). conv kernel 4 and chunk 128:
    # Megatron-Core's / the provider's defaults (neither sets them); vocab 131072: the
    # Nemotron tokenizer (make_vocab_size_divisible_by 128 leaves it). No MTP (Nano 3.5
    # Lightning adds it). Published (the figure here): 30B total, 3.5B active (Megatron-Bridge
    # docs/models/nemotron/nemotron3-nano.md, round figures); counted 31.58B total, 3.58B
    # active, equal to transformers' count (tests/test_model_mamba.py).
    "nemotron-3-nano": ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 8192, 30e9, dict(
        model_type="nemotron_h", hidden_size=2688, num_hidden_layers=52,
        hybrid_override_pattern=NEMOTRON_3_NANO_PATTERN, num_attention_heads=32,
        num_key_value_heads=2, head_dim=128, intermediate_size=1856, mlp_hidden_act="relu2",
        vocab_size=131072, max_position_embeddings=8192, mamba_num_heads=64, mamba_head_dim=64,
        ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128, use_conv_bias=True,
        use_bias=False, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        n_routed_experts=128, num_experts_per_tok=6, moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712, n_shared_experts=1, n_group=1, topk_group=1,
        norm_topk_prob=True, routed_scaling_factor=2.5, num_nextn_predict_layers=0)),
    # openai/gpt-oss-20b and -120b: 4096 is their initial_context_length (YaRN stretches it);
    # layer_types written out in the files alternate sliding / full from layer 0; the files'
    # quantization_config (MXFP4 storage of the expert weights) is left out
    "gpt-oss-20b": ("openai/gpt-oss-20b", 4096, 20.91e9, dict(_GPT_OSS, num_hidden_layers=24,
                    num_local_experts=32, layer_types=_alternate(24))),
    "gpt-oss-120b": ("openai/gpt-oss-120b", 4096, 116.83e9, dict(_GPT_OSS, num_hidden_layers=36,
                     num_local_experts=128, layer_types=_alternate(36))),
    # Llama 3.1 405B (meta-llama/Llama-3.1-405B config.json; Llama 3 report: 405B), trained
    # on 8192-token sequences before the long-context stage
    "llama3.1-405b": ("meta-llama/Llama-3.1-405B", 8192, 405e9, dict(
        model_type="llama", hidden_size=16384, num_hidden_layers=126, num_attention_heads=128,
        num_key_value_heads=8, intermediate_size=53248, vocab_size=128256,
        max_position_embeddings=131072, hidden_act="silu", attention_bias=False, mlp_bias=False,
        tie_word_embeddings=False)),
    # Qwen3 MoE (Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B config.json): 128 experts top-8,
    # no shared expert, every layer MoE (decoder_sparse_step 1, no mlp_only_layers), QK-norm;
    # model cards: 30.5B total / 3.3B active, 235B / 22B. 4096: the pre-training sequence
    # length (the Megatron-Bridge recipes' seq_length; max_position_embeddings 40960)
    "qwen3-30b-a3b": ("Qwen/Qwen3-30B-A3B", 4096, 30.5e9, dict(
        model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
        num_experts=128, num_experts_per_tok=8, vocab_size=151936, max_position_embeddings=40960,
        hidden_act="silu", tie_word_embeddings=False, norm_topk_prob=True)),
    "qwen3-235b-a22b": ("Qwen/Qwen3-235B-A22B", 4096, 235e9, dict(
        model_type="qwen3_moe", hidden_size=4096, num_hidden_layers=94, num_attention_heads=64,
        num_key_value_heads=4, head_dim=128, intermediate_size=12288, moe_intermediate_size=1536,
        num_experts=128, num_experts_per_tok=8, vocab_size=151936, max_position_embeddings=40960,
        hidden_act="silu", tie_word_embeddings=False, norm_topk_prob=True)),
    # BLOOM (BigScience 2022) was trained on 2048-token sequences
    "bloom-7b1": ("bigscience/bloom-7b1", 2048, 7.069e9, dict(
        model_type="bloom", hidden_size=4096, n_layer=30, n_head=32, vocab_size=250880,
        hidden_dropout=0.0, attention_dropout=0.0, apply_residual_connection_post_layernorm=False,
        pretraining_tp=1, slow_but_exact=False)),
    "bloom-176b": ("bigscience/bloom", 2048, 176.247e9, dict(
        model_type="bloom", n_embed=14336, n_layer=70, num_attention_heads=112, vocab_size=250880,
        hidden_dropout=0.0, attention_dropout=0.0, apply_residual_connection_post_layernorm=False,
        pretraining_tp=4, slow_but_exact=False)),
}


def _hf_zoo() -> list[ModelSpec]:
    from phaze.model.hf import spec_from_hf_dict

    out = []
    for name, (repo, seq, published, cfg) in HF_ZOO_CONFIGS.items():
        spec = spec_from_hf_dict(cfg, name=name, where=f"{repo} config.json")
        out.append(spec.with_(seq=seq, source=f"HF {repo} config.json; {published / 1e9:.2f}B"))
    return out


def _build_zoo() -> dict[str, ModelSpec]:
    z: list[ModelSpec] = [
        # BERT-Large (Devlin et al. 2019; HF bert-large-uncased config): post-LN encoder.
        ModelSpec(name="bert-large", hidden=1024, layers=24, heads=16, ffn=4096, vocab=30522,
                  seq=512, max_positions=512, causal=False, pre_norm=False, final_norm=False,
                  fused_qkv=False, token_types=2, embed_norm=True, mlm_head=True, pooler=True,
                  source="HF bert-large-uncased config.json; 335M (Devlin et al.)"),
        # GPT-2 XL (HF gpt2-xl config): 48 x 1600 x 25, vocab 50257, 1024 positions.
        ModelSpec(name="gpt2-xl", hidden=1600, layers=48, heads=25, ffn=6400, vocab=50257,
                  seq=1024, max_positions=1024, source="HF gpt2-xl config.json; 1.558B"),
        # OPT-350M (HF facebook/opt-350m): post-LN, ReLU, 512-wide embeddings projected in/out,
        # 2048 positions + OPT's offset of 2 rows.
        ModelSpec(name="opt-350m", hidden=1024, layers=24, heads=16, ffn=4096, vocab=50272,
                  seq=2048, max_positions=2050, activation="relu", pre_norm=False, final_norm=False,
                  fused_qkv=False, embed_proj_dim=512, attention_dropout=False,   # config: 0.0
                  source="HF facebook/opt-350m config.json; 331M"),
        # Llama-2 (Touvron et al. 2023): RMSNorm, RoPE, SwiGLU, no biases, untied, no dropout.
        ModelSpec(name="llama2-7b", hidden=4096, layers=32, heads=32, ffn=11008, vocab=32000,
                  seq=4096, activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                  tied_embeddings=False, dropout=False, fused_qkv=False,
                  source="HF meta-llama/Llama-2-7b-hf config.json; 6.74B"),
        ModelSpec(name="llama2-70b", hidden=8192, layers=80, heads=64, kv_heads=8, ffn=28672,
                  vocab=32000, seq=4096, activation="swiglu", norm="rmsnorm", position="rope",
                  bias=False, tied_embeddings=False, dropout=False, fused_qkv=False,
                  source="HF meta-llama/Llama-2-70b-hf config.json; 68.98B"),
        ModelSpec(name="llama3-8b", hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336,
                  vocab=128256, seq=8192, activation="swiglu", norm="rmsnorm", position="rope",
                  bias=False, tied_embeddings=False, dropout=False, fused_qkv=False,
                  source="HF meta-llama/Meta-Llama-3-8B config.json; 8.03B"),
        # Megatron-LM (Shoeybi et al. 2019) BERT 336M: pre-LN BERT with tokentypes and pooler.
        ModelSpec(name="megatron-bert", hidden=1024, layers=24, heads=16, ffn=4096, vocab=30522,
                  seq=512, max_positions=512, causal=False, token_types=2, mlm_head=True,
                  pooler=True, source="Shoeybi et al. 2019 (Megatron-LM) BERT 336M"),
        _megatron_gpt("megatron-gpt2-54", 54, 1920, 20, seq=1024,
                      source="Shoeybi et al. 2019 (Megatron-LM) GPT-2 2.5B"),
        _megatron_gpt("megatron-gpt2-72", 72, 3072, 24, seq=1024,
                      source="Shoeybi et al. 2019 (Megatron-LM) GPT-2 8.3B"),
        _megatron_gpt("gpt3-175b", 96, 12288, 96, source="Brown et al. 2020; Narayanan Eq. 2: 174.6B"),
        _megatron_gpt("gpt-1.7b", 24, 2304, 24),
        _megatron_gpt("gpt-3.6b", 30, 3072, 32),
        _megatron_gpt("gpt-7.5b", 36, 4096, 32),
        _megatron_gpt("gpt-18.4b", 40, 6144, 48),
        _megatron_gpt("gpt-39.1b", 48, 8192, 64),
        _megatron_gpt("gpt-76.1b", 60, 10240, 80),
        _megatron_gpt("gpt-145.6b", 80, 12288, 96),
        _megatron_gpt("gpt-310.1b", 96, 16384, 128),
        _megatron_gpt("gpt-529.6b", 105, 20480, 128),
        _megatron_gpt("gpt-1t", 128, 25600, 160),
        _megatron_gpt("gpt-22b", 48, 6144, 64, source=_KORTHIKANTI),
        _megatron_gpt("gpt-530b", 105, 20480, 128, source=_KORTHIKANTI),
        *_hf_zoo(),
    ]
    return {m.name: m.validate() for m in z}


ZOO: dict[str, ModelSpec] = _build_zoo()


def closest_model(name: str) -> str | None:
    """The zoo name closest to `name` (case-blind; difflib), None when none is close: the
    'did you mean' of every unknown-model error."""
    import difflib

    near = difflib.get_close_matches(str(name).lower(), sorted(ZOO), n=1, cutoff=0.6)
    return near[0] if near else None


def get_model(name: str) -> ModelSpec:
    try:
        return ZOO[name]
    except KeyError:
        near = closest_model(name)
        raise UserError(f"unknown model {name!r}", field="model",
                        fix=(f"did you mean {near!r}? " if near else "") +
                        "run `phaze models` for the zoo, pass a path to a Hugging Face "
                        "config.json, or (a sweep's model label) add --config "
                        "results/config.yaml, whose models name its hf_config") from None


def resolve_model(name_or_path: str) -> ModelSpec:
    """A zoo name, or a path to a Hugging Face config.json (file or directory holding one)."""
    if name_or_path in ZOO:
        return ZOO[name_or_path]
    p = Path(name_or_path)
    if name_or_path.endswith(".json") or p.is_dir() or p.is_file():
        from phaze.model.hf import load_hf_config

        return load_hf_config(p)
    return get_model(name_or_path)
