"""Hugging Face families read exactly (the values of the issue), memory counted once, eager
and flash attention against closed forms, MoE, vocabulary padding, the --seq bound."""

import json
import re

import pytest

from phaze.cli import main
from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.hf import spec_from_hf_dict
from phaze.model.spec import ModelSpec
from phaze.model.zoo import ZOO

# Llama-3.2-1B config.json (published values)
LLAMA32_1B = dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                  max_position_embeddings=131072, tie_word_embeddings=True, hidden_act="silu",
                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Qwen2-0.5B config.json
QWEN2_05B = dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                 max_position_embeddings=131072, tie_word_embeddings=True, use_sliding_window=False,
                 sliding_window=131072, max_window_layers=24)


def _blocks(g):
    return [lg for lg in g.layers if lg.kind not in ("prologue", "epilogue")]


def _params(cfg, **kw):
    return build_graph(spec_from_hf_dict({**cfg, **kw})).params_total


def test_llama_mlp_gated_whatever_the_activation():
    # l (4h^2 - 2h(h - kv d)... written out: q,o h^2 each, k,v h*kv*d each, gate/up/down 3 h f,
    # two RMSNorms 2h) + V h (tied) + h = 1,235,814,400 for Llama-3.2-1B
    h, l, kvd, f, V = 2048, 16, 512, 8192, 128256
    ref = l * (2 * h * h + 2 * h * kvd + 3 * h * f + 2 * h) + V * h + h
    assert ref == 1_235_814_400
    assert _params(LLAMA32_1B) == ref
    assert _params(LLAMA32_1B, hidden_act="gelu_pytorch_tanh") == ref  # GeGLU: still 3 matrices


def test_attention_bias_is_qkvo_only():
    # + l (h + 2 kv d + h): biases of q, k, v, o; the MLP has mlp_bias
    assert _params(LLAMA32_1B, attention_bias=True) == 1_235_814_400 + 16 * (2048 + 2 * 512 + 2048) \
        == 1_235_896_320
    assert _params(LLAMA32_1B, mlp_bias=True) == 1_235_814_400 + 16 * (2 * 8192 + 2048)


def test_qwen2_qkv_bias_no_o_bias_tied():
    # l (2h^2 + 2 h kv d + (h + 2 kv d) + 3 h f + 2h) + V h + h = 494,032,768 (Qwen2-0.5B card)
    h, l, kvd, f, V = 896, 24, 128, 4864, 151936
    assert l * (2 * h * h + 2 * h * kvd + h + 2 * kvd + 3 * h * f + 2 * h) + V * h + h == 494_032_768
    assert _params(QWEN2_05B) == 494_032_768


@pytest.mark.parametrize("field,value,msg", [
    ("hidden_size", "2048", "must be an integer"),
    ("tie_word_embeddings", "false", "must be a boolean"),
    ("num_key_value_heads", 8.0, "must be an integer"),
    ("attention_bias", 1, "must be a boolean"),
    ("rope_scaling", "llama3", "must be an object"),
])
def test_wrong_types_name_the_field(tmp_path, capsys, field, value, msg):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({**LLAMA32_1B, field: value}))
    with pytest.raises(UserError) as e:
        spec_from_hf_dict({**LLAMA32_1B, field: value})
    assert e.value.field == field and msg in str(e.value)
    rc = main(["graph", "--model", str(f)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and field in err


@pytest.mark.parametrize("cfg,field", [
    ({"model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "vocab_size": 100, "alibi": True}, "alibi"),
    ({**QWEN2_05B, "model_type": "qwen2_moe", "num_experts": 4, "num_experts_per_tok": 2,
      "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "mlp_only_layers": [0]},
     "mlp_only_layers"),
    ({**LLAMA32_1B, "attention_dropout": 0.1}, "attention_dropout"),
    ({**LLAMA32_1B, "hidden_act": "relu"}, "hidden_act"),
    ({**LLAMA32_1B, "rope_scaling": {"rope_type": "weird"}}, "rope_scaling"),
    ({"model_type": "t5"}, "model_type"),
])
def test_unsupported_values_refused_naming_the_field(cfg, field):
    with pytest.raises(UserError) as e:
        spec_from_hf_dict(cfg)
    assert e.value.field == field


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=101,
            max_position_embeddings=256)
MIXTRAL = dict(TINY, model_type="mixtral", intermediate_size=96, num_key_value_heads=2,
               num_local_experts=8, num_experts_per_tok=2)
NEMOTRON_H = dict(TINY, model_type="nemotron_h", num_key_value_heads=2, head_dim=16,
                  intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16,
                  n_groups=2, conv_kernel=4, chunk_size=16, hybrid_override_pattern="M*")


@pytest.mark.parametrize("cfg,key,says,fix", [
    ({**LLAMA32_1B, "num_key_value_heads": 5}, "num_key_value_heads",
     "32 attention heads are not a multiple of 5 key/value heads",
     "give num_key_value_heads dividing 32"),
    ({**LLAMA32_1B, "num_hidden_layers": 0}, "num_hidden_layers",
     "must be a positive integer, got 0", "give num_hidden_layers as an integer >= 1"),
    ({**LLAMA32_1B, "hidden_size": 2047}, "num_attention_heads",
     "hidden size 2047 is not a multiple of 32 attention heads", "pick num_attention_heads "),
    ({**MIXTRAL, "num_experts_per_tok": 16}, "num_experts_per_tok",
     "16 experts per token is not in 1..8", "give num_experts_per_tok in 1..8"),
    ({k: v for k, v in MIXTRAL.items() if k != "num_key_value_heads"}, "num_key_value_heads",
     "4 attention heads are not a multiple of 8 key/value heads (num_key_value_heads is not "
     "set in the file: the default)", "give num_key_value_heads dividing 4"),
    ({**TINY, "model_type": "gpt2", "n_layer": 0, "n_positions": 64}, "n_layer",
     "must be a positive integer, got 0", "give n_layer as"),
    ({**TINY, "model_type": "falcon", "new_decoder_architecture": True, "num_kv_heads": 3},
     "num_kv_heads", "4 attention heads are not a multiple of 3 key/value heads", "num_kv_heads"),
    ({**TINY, "model_type": "qwen3", "intermediate_size": 96, "num_attention_heads": 0},
     "num_attention_heads", "must be a positive integer, got 0", "give num_attention_heads"),
    ({**NEMOTRON_H, "n_groups": 3}, "n_groups", "8 Mamba heads are not a multiple of 3 groups",
     "give n_groups dividing 8"),
])
def test_spec_errors_name_the_config_json_key_and_file(tmp_path, capsys, cfg, key, says, fix):
    """A value the spec refuses is reported under the config.json key it came from (not
    phaze's ModelSpec field), in the file's words, with the file named."""
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(cfg))
    assert main(["graph", "--model", str(f)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"phaze: error: {key}: {f}: {says}"), err
    assert fix in err.split("; fix: ")[1], err
    assert not re.search(r"\b(kv_heads|top_k|mamba_n_groups)\b", err), err  # phaze's names


def test_sliding_window_null_and_absent():
    base = dict(LLAMA32_1B, model_type="mistral", tie_word_embeddings=False)
    base.pop("rope_scaling")
    assert spec_from_hf_dict({**base, "sliding_window": None}).sliding_window == 0  # v0.2: no window
    assert spec_from_hf_dict(base).sliding_window == 4096  # MistralConfig's default
    assert spec_from_hf_dict({**base, "sliding_window": 1024}).sliding_window == 1024
    with pytest.raises(UserError) as e:
        spec_from_hf_dict({**base, "sliding_window": "4096"})
    assert e.value.field == "sliding_window"


def test_hf_seq_defaults_and_the_size_bound(tmp_path, capsys):
    f = tmp_path / "config.json"
    f.write_text(json.dumps(LLAMA32_1B))
    spec = spec_from_hf_dict(LLAMA32_1B)
    assert spec.seq == 4096 and spec.max_positions == 131072  # min(max positions, DEFAULT_SEQ)
    rc = main(["graph", "--model", str(f), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["seq"] == 4096
    # 131,072 tokens, eager: 2 a s^2 b = 1 TiB of probabilities per layer -> refused, naming --seq
    rc = main(["graph", "--model", str(f), "--seq", "131072"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "error: seq: 131072" in err and "--seq" in err
    rc = main(["graph", "--model", str(f), "--seq", "131072", "--attention", "flash", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["attention"] == "flash"


# --- activation memory per block ---------------------------------------------------------
def test_llama3_8b_softmax_output_counted_once():
    # no dropout: ln1 in, qkv in, q (after RoPE), proj in, ln2 in, MLP in: 12 s b h; k, v:
    # 4 s b kv d; softmax output, read by the softmax backward and the context GEMM: 2 a s^2 b;
    # gate out, up out, down in: 6 s b ffn  = 5,435,817,984 bytes at s = 8192, b = 1
    s, b, h, kvd, a, f = 8192, 1, 4096, 1024, 32, 14336
    ref = 12 * s * b * h + 4 * s * b * kvd + 2 * a * s * s * b + 6 * s * b * f
    assert ref == 5_435_817_984
    blk = _blocks(build_graph(ZOO["llama3-8b"], s, b))[0]
    assert blk.activation_bytes["none"] == ref
    # selective recomputation drops exactly the probabilities (2 a s^2 b)
    assert blk.activation_bytes["selective"] == ref - 2 * a * s * s * b
    # flash: no s^2 tensor; the fp32 log-sum-exp per query row (4 a s b) instead
    fl = _blocks(build_graph(ZOO["llama3-8b"], s, b, attention="flash"))[0]
    assert fl.activation_bytes["none"] == ref - 2 * a * s * s * b + 4 * a * s * b


@pytest.mark.parametrize("b", [1, 2])
def test_korthikanti_with_dropout_eager_and_flash(b):
    # Korthikanti et al. 2023 Eq. (1): s b h (34 + 5 a s / h); flash keeps no s^2 tensor
    # and no attention-dropout mask (the kernel regenerates it from the RNG state): 34 s b h + 4 a s b
    sp, s = ZOO["gpt-22b"], 2048
    h, a = sp.hidden, sp.heads
    e = _blocks(build_graph(sp, s, b))[0].activation_bytes
    f = _blocks(build_graph(sp, s, b, attention="flash"))[0].activation_bytes
    assert e["none"] == 34 * s * b * h + 5 * a * s * s * b
    assert e["selective"] == 34 * s * b * h
    assert f["none"] == 34 * s * b * h + 4 * a * s * b
    # with t = 8 and SP everything is divided by t (Korthikanti Eq. 5), the lse by t too
    ft = _blocks(build_graph(sp, s, b, 8, True, attention="flash"))[0].activation_bytes
    assert ft["none"] == (34 * s * b * h + 4 * a * s * b) / 8


def test_gemma2_softcap_and_sandwich_memory():
    # Gemma2, no dropout, eager: ln1 in, qkv in, ln2 in, MLP in, and the inputs of the two
    # post-norms (attention and MLP outputs): 12 s b h; q and proj input (width a d): 4 s b a d;
    # k, v: 4 s b kv d; soft-cap tanh output and softmax output: 4 a s^2 b; gate, up, down in: 6 s b ffn
    sp = ZOO["gemma2-9b"]
    s, b, h, a, d, kv, f = 1024, 1, sp.hidden, sp.heads, sp.d_head, sp.n_kv_heads, sp.ffn
    ref = 12 * s * b * h + 4 * s * b * a * d + 4 * s * b * kv * d + 4 * a * s * s * b + 6 * s * b * f
    blk = _blocks(build_graph(sp, s, b))[0]
    assert blk.activation_bytes["none"] == ref
    assert blk.activation_bytes["selective"] == ref - 4 * a * s * s * b


# --- flash attention structure, sliding windows -------------------------------------------
def test_flash_ops_and_sliding_window():
    sp = ZOO["mistral-7b"]  # window 4096
    s, b = 8192, 1
    a, d = sp.heads, sp.d_head
    eager = build_graph(sp, s, b)
    flash = build_graph(sp, s, b, attention="flash")
    assert [lg.kind for lg in eager.layers] == ["prologue", "block", "epilogue"]  # a mask only
    assert [lg.kind for lg in flash.layers] == ["prologue", "block.sliding", "epilogue"]
    blk = flash.layers[1]
    core = next(o for o in blk.fwd if o.name == "attn.core")
    # the fused kernel visits s x min(s, w) keys: 2 GEMMs forward, 5 backward (recomputes QK^T)
    assert core.kind == "gemm" and core.flops == 4 * b * a * s * 4096 * d and core.fused == ("softmax",)
    bwd = next(o for o in blk.bwd if o.name == "attn.core.bwd")
    assert bwd.kind == "gemm" and bwd.flops == 2.5 * core.flops
    assert not any(o.vclass in ("softmax", "softmax_bwd") for o in blk.fwd + blk.bwd)
    ecore = sum(o.flops for o in eager.layers[1].fwd if o.name in ("attn.scores", "attn.context"))
    assert ecore == 4 * b * a * s * s * d
    # within the window nothing changes
    assert build_graph(sp, 4096, 1, attention="flash").layers[1].kind == "block"


def test_gemma2_alternates_sliding_and_full_under_flash():
    g = build_graph(ZOO["gemma2-9b"], 8192, 1, attention="flash")
    kinds = [lg.kind for lg in g.expanded()]
    assert kinds[1:-1] == ["block.sliding", "block"] * 21
    assert build_graph(ZOO["gemma2-9b"], 8192, 1).layers[1].repeat == 42  # eager: one kind


# --- selective recomputation marks --------------------------------------------------------
SELECTIVE = {
    "eager": {"attn.scores", "attn.softmax", "attn.context"},
    "flash": {"attn.core"},
}


@pytest.mark.parametrize("attention", ["eager", "flash"])
@pytest.mark.parametrize("name", ["gpt-22b", "bert-large", "llama3-8b", "mixtral-8x7b", "gemma2-9b",
                                  "qwen2.5-7b", "mistral-7b"])
def test_selective_recompute_marks(name, attention):
    sp = ZOO[name]
    for blk in _blocks(build_graph(sp, 512, 1, attention=attention)):
        want = set(SELECTIVE[attention])
        if attention == "eager" and sp.dropout:
            want.add("attn.dropout")
        if attention == "eager" and sp.attn_softcap:
            want.add("attn.softcap")
        got = blk.selective_recompute_ops()
        assert {o.name for o in got} == want
        names = {o.name for o in got}
        assert all(d in names for o in got for d in o.deps)


# --- MoE -----------------------------------------------------------------------------------
def test_mixtral_routed_flops_and_expert_ops():
    sp = ZOO["mixtral-8x7b"]
    s, b, h, f, E, k = 512, 1, sp.hidden, sp.ffn, sp.experts, sp.top_k
    blk = build_graph(sp, s, b).layers[1]
    experts = [o for o in blk.fwd if o.name.startswith("moe.expert.") and o.kind == "gemm"]
    assert {o.name for o in experts} == {"moe.expert.gate", "moe.expert.up", "moe.expert.down"}
    assert all(o.experts == E for o in experts)
    # each token goes to k of E experts: top_k / E of the dense FLOPs of all E experts
    dense_all = 3 * 2 * s * b * h * f * E
    assert sum(o.flops for o in experts) == dense_all * k / E
    assert next(o for o in blk.fwd if o.name == "moe.router").flops == 2 * s * b * h * E
    # every expert's weights are parameters of the block
    assert blk.param_count == 3 * E * h * f + h * E + 2 * h + 2 * h * h + 2 * h * 1024


def test_vocab_padding_megatron():
    # Megatron: V padded to a multiple of 128 t (_vocab_size_with_padding)
    sp = ZOO["llama3-8b"]
    for t in (1, 8):
        g = build_graph(sp, 256, 1, t, vocab_pad_multiple=128)
        head = next(o for o in g.layers[-1].fwd if o.name == "lm_head")
        Vp = -(-128256 // (128 * t)) * 128 * t
        assert head.gemm.n == Vp // t
        assert g.params_total == build_graph(sp, 256, 1, t).params_total + 2 * (Vp - 128256) * sp.hidden
    assert build_graph(ZOO["gpt2-xl"], 256, vocab_pad_multiple=128).params_total - \
        build_graph(ZOO["gpt2-xl"], 256).params_total == (50304 - 50257) * 1600  # tied: one table


@pytest.mark.parametrize("name", sorted(ZOO))
def test_shared_param_bytes_tied_heads(name):
    sp = ZOO[name]
    t = 2 if sp.heads % 2 == 0 and sp.n_kv_heads % 2 == 0 and sp.ffn % 2 == 0 else 1
    g = build_graph(sp, 128, 1, t)
    epi = g.layers[-1]
    head = next(o for o in epi.fwd if o.name == "lm_head")
    vt = -(-sp.vocab // t)
    if sp.tied_embeddings:
        assert epi.shared_param_bytes == vt * sp.embed_dim * 2
        assert g.layers[0].param_bytes >= epi.shared_param_bytes
    else:
        assert epi.shared_param_bytes == 0 and head.param_bytes == vt * sp.embed_dim * 2


def test_spec_roundtrip_with_layer_types():
    sp = ZOO["gemma2-9b"]
    assert ModelSpec.from_dict(json.loads(json.dumps(sp.to_dict()))) == sp
