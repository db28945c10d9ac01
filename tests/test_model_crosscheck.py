"""Cross-check against model code nobody here wrote: Hugging Face transformers models built
from their published configs on the meta device (no weights), FLOPs counted by torch's
FlopCounterMode. Needs the `crosscheck` extra (torch + transformers); skipped without it."""

import pytest

from phaze.model.graph import build_graph
from phaze.model.zoo import ZOO

pytestmark = pytest.mark.crosscheck

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# name -> (config class, model class, published config.json fields, block module path)
CASES = {
    "gpt2-xl": ("GPT2Config", "GPT2LMHeadModel",
                dict(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024,
                     activation_function="gelu_new"), "transformer.h.0"),
    "bert-large": ("BertConfig", "BertForPreTraining",
                   dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, vocab_size=30522, max_position_embeddings=512,
                        type_vocab_size=2), "bert.encoder.layer.0"),
    "opt-350m": ("OPTConfig", "OPTForCausalLM",
                 dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
                      vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=512,
                      do_layer_norm_before=False, activation_function="relu"), "model.decoder.layers.0"),
    "llama2-7b": ("LlamaConfig", "LlamaForCausalLM",
                  dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, intermediate_size=11008, vocab_size=32000,
                       max_position_embeddings=4096, tie_word_embeddings=False), "model.layers.0"),
}


def _hf_model(name):
    cfg_cls, model_cls, fields, block = CASES[name]
    cfg = getattr(transformers, cfg_cls)(**fields)
    cfg._attn_implementation = "eager"  # plain matmuls, counted by FlopCounterMode
    with torch.device("meta"):
        model = getattr(transformers, model_cls)(cfg)
    return model, block


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_flops_and_params_match_huggingface(name):
    from torch.utils.flop_counter import FlopCounterMode

    model, block_path = _hf_model(name)
    spec = ZOO[name]
    s, b = spec.seq, 1
    ids = torch.zeros(b, s, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids)
    counts = counter.get_flop_counts()
    key = next(k for k in counts if k.endswith("." + block_path))
    hf_block_flops = sum(counts[key].values())
    hf_total_flops = sum(counts["Global"].values())

    g = build_graph(spec, s, b, 1)
    blk = next(lg for lg in g.layers if lg.kind == "block")
    # FlopCounterMode counts matrix products only: compare the graph's GEMM FLOPs
    ours_block = sum(o.flops for o in blk.fwd if o.kind == "gemm")
    ours_total = sum(o.flops * lg.repeat for lg in g.layers for o in lg.fwd if o.kind == "gemm")
    assert abs(ours_block / hf_block_flops - 1) < 0.01, (ours_block, hf_block_flops)
    assert abs(ours_total / hf_total_flops - 1) < 0.01, (ours_total, hf_total_flops)

    block_mod = model.get_submodule(block_path)
    hf_block_params = sum(p.numel() for p in block_mod.parameters())
    assert abs(blk.param_count / hf_block_params - 1) < 0.01, (blk.param_count, hf_block_params)
    hf_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert abs(g.params_total / hf_params - 1) < 0.01, (g.params_total, hf_params)
