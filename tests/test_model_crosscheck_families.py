"""Every supported Hugging Face family against transformers itself: the config.json read by
phaze.model.hf, and the transformers model built from the same fields on the meta device,
must have the same parameter count and the same forward GEMM FLOPs (FlopCounterMode, eager
attention; exact equality). One small config (bias flags, tied/untied, GQA, sliding window
shorter than the sequence, MoE) and one real-size config per family.

MoE: transformers' default ("eager") experts loop only runs the experts that tokens were
routed to, which on meta tensors is undefined (no data). The "batched_mm" experts
implementation computes, for each of the T x top_k (token, expert) pairs, that expert's
gate/up and down products: exactly the routed FLOPs, top_k / E of all experts' dense FLOPs,
so it is counted on meta with no closed form needed.
"""

import pytest

from phaze.model.graph import build_graph
from phaze.model.hf import spec_from_hf_dict
from phaze.model.zoo import HF_ZOO_CONFIGS

pytestmark = pytest.mark.crosscheck

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             vocab_size=101, max_position_embeddings=256)
CASES = {
    # --- small configs: the flags that change shapes ---
    "llama-gelu-bias-tied": dict(SMALL, model_type="llama", num_key_value_heads=2, attention_bias=True,
                                 mlp_bias=True, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True),
    "llama-headdim": dict(SMALL, model_type="llama", num_key_value_heads=1, head_dim=32,
                          tie_word_embeddings=False),
    "mistral-window": dict(SMALL, model_type="mistral", num_key_value_heads=2, sliding_window=16),
    "mixtral-small": dict(SMALL, model_type="mixtral", num_key_value_heads=2, num_local_experts=4,
                          num_experts_per_tok=2, sliding_window=16),
    "qwen2-window": dict(SMALL, model_type="qwen2", num_key_value_heads=2, use_sliding_window=True,
                         sliding_window=16, max_window_layers=1, tie_word_embeddings=True),
    "qwen2_moe-small": dict(SMALL, model_type="qwen2_moe", num_key_value_heads=2, num_experts=6,
                            num_experts_per_tok=3, moe_intermediate_size=32,
                            shared_expert_intermediate_size=48),
    "qwen3_moe-small": dict(SMALL, model_type="qwen3_moe", num_key_value_heads=2, head_dim=16,
                            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32),
    "qwen3_moe-defaults": dict(SMALL, model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2,
                               moe_intermediate_size=32),   # kv heads and head_dim as defaulted
    "qwen3-bias": dict(SMALL, model_type="qwen3", num_key_value_heads=2, head_dim=8, attention_bias=True),
    "gemma-small": dict(SMALL, model_type="gemma", num_key_value_heads=1, head_dim=32),
    "gemma2-small": dict(SMALL, model_type="gemma2", num_key_value_heads=2, head_dim=16, sliding_window=16,
                         num_hidden_layers=3),
    "phi3-window": dict(SMALL, model_type="phi3", num_key_value_heads=2, sliding_window=16,
                        pad_token_id=0),  # the default pad id 32000 is outside the small vocab
    "nemotron-small": dict(SMALL, model_type="nemotron", num_key_value_heads=2, head_dim=16,
                           partial_rotary_factor=0.5),
    "nemotron-bias": dict(SMALL, model_type="nemotron", num_key_value_heads=4, attention_bias=True,
                          mlp_bias=True,
                          tie_word_embeddings=True),
    "gpt_neox-small": dict(SMALL, model_type="gpt_neox", use_parallel_residual=True, attention_bias=False),
    "gpt_neox-seq": dict(SMALL, model_type="gpt_neox", use_parallel_residual=False,
                         tie_word_embeddings=True),
    "falcon-mq": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=101,
                      model_type="falcon", multi_query=True, parallel_attn=True, bias=True),
    "falcon-new": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=101,
                       model_type="falcon", new_decoder_architecture=True, num_kv_heads=2,
                       ffn_hidden_size=96, tie_word_embeddings=False),
    "falcon-seq": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=101,
                       model_type="falcon", multi_query=False, parallel_attn=False),
    # gpt_oss: head_dim 32 != 64 / 4, sinks, q/k/v/o biases, router and expert biases, the
    # default alternation (layer 0 slides) with a window (16) shorter than the sequence
    "gpt_oss-small": dict(SMALL, model_type="gpt_oss", num_key_value_heads=2, head_dim=32,
                          num_local_experts=4, num_experts_per_tok=2, sliding_window=16,
                          num_hidden_layers=3),
    # GptOssConfig's defaults: 8 kv heads, head_dim 64 (hidden / heads = 8); no attention bias,
    # all layers full, tied head
    "gpt_oss-defaults": dict(SMALL, model_type="gpt_oss", num_attention_heads=8, num_local_experts=6,
                             num_experts_per_tok=1, attention_bias=False, tie_word_embeddings=True,
                             layer_types=["full_attention"] * 2),
    "bloom-small": dict(model_type="bloom", n_embed=64, n_layer=2, n_head=4, vocab_size=101),
    "bloom-untied-dropout": dict(model_type="bloom", hidden_size=64, n_layer=3, num_attention_heads=8,
                                 vocab_size=101, tie_word_embeddings=False, hidden_dropout=0.1,
                                 attention_dropout=0.1),
    "gpt2-small": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=101, n_positions=128),
    "opt-small": dict(model_type="opt", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      ffn_dim=96, vocab_size=101, max_position_embeddings=128, enable_bias=False),
    # MLA + MoE: q compression or not, dense first blocks, shared experts, biased MLA linears
    "deepseek_v3-small": dict(SMALL, model_type="deepseek_v3", num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16,
                              qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
                              n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                              moe_intermediate_size=32, n_shared_experts=2, first_k_dense_replace=1,
                              num_hidden_layers=3),
    "deepseek_v3-noq-bias": dict(SMALL, model_type="deepseek_v3", num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16,
                                 qk_nope_head_dim=16, qk_rope_head_dim=4, v_head_dim=16,
                                 n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                                 moe_intermediate_size=32, n_shared_experts=1,
                                 first_k_dense_replace=0, attention_bias=True,
                                 tie_word_embeddings=True),
    "deepseek_v2-small": dict(SMALL, model_type="deepseek_v2", num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16,
                              qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=16,
                              n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=24,
                              n_shared_experts=2, first_k_dense_replace=1,
                              topk_method="group_limited_greedy", n_group=3, topk_group=2),
    # --- real sizes (published config.json values) ---
    "Llama-3.2-1B": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "Qwen2-0.5B": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                       max_position_embeddings=131072, tie_word_embeddings=True),
    "Qwen1.5-MoE-A2.7B": dict(model_type="qwen2_moe", hidden_size=2048, num_hidden_layers=24,
                              num_attention_heads=16, num_key_value_heads=16, intermediate_size=5632,
                              moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                              num_experts=60, num_experts_per_tok=4, vocab_size=151936,
                              max_position_embeddings=8192, tie_word_embeddings=False),
    "Qwen3-0.6B": dict(model_type="qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=151936,
                       max_position_embeddings=40960, tie_word_embeddings=True),
    # (Qwen/Qwen3-30B-A3B config.json: the zoo's qwen3-30b-a3b, from HF_ZOO_CONFIGS below)
    "gemma-2b": dict(model_type="gemma", hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
                     num_key_value_heads=1, head_dim=256, intermediate_size=16384, vocab_size=256000,
                     max_position_embeddings=8192),
    "Phi-3-mini-4k": dict(model_type="phi3", hidden_size=3072, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, intermediate_size=8192, vocab_size=32064,
                          max_position_embeddings=4096, sliding_window=2047, tie_word_embeddings=False),
    "pythia-160m": dict(model_type="gpt_neox", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, vocab_size=50304, max_position_embeddings=2048,
                        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False),
    "falcon-7b": dict(model_type="falcon", hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                      vocab_size=65024, multi_query=True, parallel_attn=True, bias=False,
                      new_decoder_architecture=False, alibi=False),
    # Nemotron-4 15B (nvidia/Nemotron-4-15B's shapes: h 6144, 32 layers, 48 heads, 8 kv heads,
    # ffn 24576, 256k vocabulary)
    "Nemotron-4-15B": dict(model_type="nemotron", hidden_size=6144, num_hidden_layers=32,
                           num_attention_heads=48, num_key_value_heads=8, intermediate_size=24576,
                           vocab_size=256000, max_position_embeddings=4096,
                           tie_word_embeddings=False),
    # bigscience/bloom-560m (559,214,592 parameters)
    "bloom-560m": dict(model_type="bloom", n_embed=1024, n_layer=24, num_attention_heads=16,
                       vocab_size=250880),
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    "opt-125m": dict(model_type="opt", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     ffn_dim=3072, vocab_size=50272, max_position_embeddings=2048, do_layer_norm_before=True),
    # (nemotron_h: tests/test_model_mamba.py, which counts the Mamba scan apart)
    **{name: cfg for name, (_, _, _, cfg) in HF_ZOO_CONFIGS.items()
       if name != "llama3-70b" and cfg["model_type"] != "nemotron_h"},
}
SEQ = 64  # > the small configs' windows (16): eager attention computes s x s and masks


def _hf(fields):
    # an explicit null is the transformers default except q_lora_rank (null: no q compression)
    fields = {k: v for k, v in fields.items() if v is not None or k == "q_lora_rank"}
    cfg = transformers.AutoConfig.for_model(**fields)
    cfg._attn_implementation = "eager"
    if hasattr(cfg, "_experts_implementation"):
        cfg._experts_implementation = "batched_mm"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_family_matches_transformers(case):
    from torch.utils.flop_counter import FlopCounterMode

    fields = CASES[case]
    model = _hf(fields)
    hf_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    ids = torch.zeros(1, SEQ, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids)
    hf_flops = counter.get_total_flops()

    spec = spec_from_hf_dict(fields, name=case)
    g = build_graph(spec, SEQ, 1)
    ours = sum(o.flops * lg.repeat for lg in g.layers for o in lg.fwd if o.kind == "gemm")
    assert g.params_total == hf_params
    assert ours == hf_flops


@pytest.mark.parametrize("case", ["llama-gelu-bias-tied", "Qwen2-0.5B", "qwen2_moe-small",
                                  "deepseek_v3-small", "deepseek_v2-small"])
def test_flash_graph_matches_sdpa(case):
    """attention="flash" against torch's fused scaled_dot_product_attention, which
    FlopCounterMode counts as its two GEMMs (4 b a s^2 d), like the graph's attn.core
    (no window here: the counter ignores masks)."""
    from torch.utils.flop_counter import FlopCounterMode

    fields = CASES[case]
    cfg = transformers.AutoConfig.for_model(**fields)
    cfg._attn_implementation = "sdpa"
    if hasattr(cfg, "_experts_implementation"):
        cfg._experts_implementation = "batched_mm"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=torch.zeros(1, SEQ, dtype=torch.long, device="meta"))
    g = build_graph(spec_from_hf_dict(fields), SEQ, 1, attention="flash")
    assert sum(o.flops * lg.repeat for lg in g.layers for o in lg.fwd if o.kind == "gemm") == \
        counter.get_total_flops()
