"""Read a Hugging Face config.json into a ModelSpec.

Plain JSON parsing: no torch, no transformers, no download. Field names, defaults and the
way each family turns them into tensors follow the transformers configuration and modeling
code of each family (the table in docs/model.md lists, per family, the fields read and
those deliberately ignored). Every field that changes a shape or a FLOP count is read; a
value the graph cannot express is refused naming the field; a value of the wrong JSON type
is refused naming the field (never coerced: "false" is not a boolean).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from phaze.errors import UserError
from phaze.model.spec import ModelSpec

# default training sequence of a spec read from a config.json: the config only says how far
# the positions reach (max_position_embeddings, 131,072 for Llama-3.1), not what one trains on
DEFAULT_SEQ = 4096

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
            "gemma2", "phi3", "gpt_oss", "deepseek_v2", "deepseek_v3",
            "nemotron", "nemotron_h", "gpt_neox", "falcon", "bloom", "gpt2", "opt", "bert")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
# ModelSpec field -> the config.json keys the readers take it from. A spec error is reported
# under the first of these that the reader consulted (a field absent here: its own name).
SPEC_KEYS = {
    "hidden": ("hidden_size", "n_embd", "n_embed"), "layers": ("num_hidden_layers", "n_layer"),
    "heads": ("num_attention_heads", "n_head"), "kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "ffn": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"), "vocab": ("vocab_size",),
    "seq": ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx"),
    "head_dim": ("head_dim", "attention_head_dim"), "embed_proj_dim": ("word_embed_proj_dim",),
    "token_types": ("type_vocab_size",),
    "experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "top_k": ("num_experts_per_tok",), "moe_ffn": ("moe_intermediate_size",),
    "shared_ffn": ("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size",
                   "n_shared_experts"),
    "attn_softcap": ("attn_logit_softcapping",), "final_softcap": ("final_logit_softcapping",),
    "ssm_state_size": ("ssm_state_size", "mamba_d_state"),
    "mamba_n_groups": ("n_groups", "mamba_n_groups"), "conv_kernel": ("conv_kernel", "mamba_d_conv"),
    "chunk_size": ("chunk_size", "mamba_chunk_size"),
}


def load_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"no such file {str(path)!r}", field="model",
                        fix="pass a zoo name (`phaze models`) or an existing config.json")
    from phaze.files import read_json

    cfg = read_json(path, "model")
    if name is None and path.name != "config.json":    # a renamed file: its own name
        name = path.stem
    return spec_from_hf_dict(cfg, name=name, where=str(path))


def spec_from_hf_dict(cfg: dict, name: str | None = None, where: str = "config") -> ModelSpec:
    """A ModelSpec from the fields of a config.json (already parsed)."""
    get = _Getter(cfg, where)
    mt = cfg.get("model_type")
    if mt is None:
        raise UserError(f"{where}: missing field 'model_type'", field="model_type",
                        fix=f"add \"model_type\": one of {', '.join(FAMILIES)}")
    if mt not in _READERS:
        raise UserError(f"{where}: unsupported model_type {mt!r}", field="model_type",
                        fix=f"supported families: {', '.join(FAMILIES)}")
    nm = name or get.str("_name_or_path", "") or Path(where).parent.name or mt
    spec = _READERS[mt](get, nm).with_(source=f"Hugging Face config {where}")
    try:
        return spec.validate()
    except UserError as e:
        raise _as_config_error(e, get) from None


def _as_config_error(e: UserError, get) -> UserError:
    """A spec validation error restated for the config.json: the field the reader took the
    value from (SPEC_KEYS), also in the fix, and the file."""
    key = next((k for k in SPEC_KEYS.get(e.field, (e.field,)) if k in get.read), e.field)
    fix = e.fix and re.sub(rf"\b{re.escape(e.field)}\b", key, e.fix)
    absent = f" ({key} is not set in the file: the default)" if get.cfg.get(key) is None \
        and key in get.read else ""
    return UserError(f"{get.where}: {e.message}{absent}", field=key, fix=fix)


class _Getter:
    """Typed access to config fields; a wrong type or a missing required field is a UserError."""

    def __init__(self, cfg: dict, where: str):
        self.cfg, self.where = cfg, where
        self.read = set()      # the keys consulted (found, or defaulted under `key`)

    def raw(self, key: str, default=..., alt: tuple[str, ...] = ()):
        for k in (key, *alt):
            if k in self.cfg and self.cfg[k] is not None:
                self.read.add(k)
                return k, self.cfg[k]
        self.read.add(key)
        if default is ...:
            raise UserError(f"{self.where}: missing field {key!r}", field=key,
                            fix=f"add \"{key}\" to the config (see the Hugging Face "
                                f"{self.cfg.get('model_type')} configuration)")
        return key, default

    def _bad(self, k, v, what):
        raise UserError(f"{self.where}: must be {what}, got {v!r} ({type(v).__name__})", field=k,
                        fix=f"write \"{k}\" as a JSON {what.split(' ', 1)[-1]}")

    def int(self, key, default=..., alt=()) -> int:
        k, v = self.raw(key, default, alt)
        if isinstance(v, bool) or not isinstance(v, int):
            self._bad(k, v, "an integer")
        return v

    def count(self, key, default=..., alt=()) -> int:
        """A size or count (heads, layers, widths): an integer >= 1. Hugging Face has no
        "0 = default" convention (phaze's ModelSpec reads kv_heads 0 as heads): a 0 in a
        config.json is a mistake, refused rather than read as something else."""
        v = self.int(key, default, alt)
        if v < 1 and (key in self.cfg or any(a in self.cfg for a in alt)):
            k = next(x for x in (key, *alt) if x in self.cfg)
            raise UserError(f"{self.where}: must be a positive integer, got {v!r}", field=k,
                            fix=f"give {k} as an integer >= 1")
        return v

    def bool(self, key, default=..., alt=()) -> bool:
        k, v = self.raw(key, default, alt)
        if not isinstance(v, bool):
            self._bad(k, v, "a boolean (true or false)")
        return v

    def float(self, key, default=..., alt=()) -> float:
        k, v = self.raw(key, default, alt)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._bad(k, v, "a number")
        return float(v)

    def str(self, key, default=..., alt=()) -> str:
        k, v = self.raw(key, default, alt)
        if not isinstance(v, str):
            self._bad(k, v, "a string")
        return v

    def list(self, key, default=..., alt=()) -> list:
        k, v = self.raw(key, default, alt)
        if not isinstance(v, list):
            self._bad(k, v, "a list")
        return v

    def refuse(self, key, default, why: str):
        """Refuse a field whose value (other than `default`) the graph cannot express."""
        if key in self.cfg and self.cfg[key] is not None and self.cfg[key] != default:
            raise UserError(f"{self.where}: {key} = {self.cfg[key]!r} is not supported ({why})", field=key,
                            fix=f"remove it or set it to {json.dumps(default)}")

    def zero_dropout(self, *keys):
        for k in keys:
            if self.float(k, 0.0) != 0.0:
                raise UserError(f"{self.where}: {k} = {self.cfg[k]!r} is not supported (the graph puts "
                                "no dropout in this family; its public configs use 0.0)", field=k,
                                fix=f"set \"{k}\": 0.0")

    def dropout_all_or_none(self, *keys, default=0.0) -> bool:
        vals = [self.float(k, default) for k in keys]
        if any(vals) and not all(vals):
            k = keys[vals.index(0.0)]
            raise UserError(f"{self.where}: dropout on some sites only ({', '.join(keys)}) is not "
                            "supported", field=k, fix="set all of them to 0.0 or all non-zero")
        return all(vals)


def _seq(get, key="max_position_embeddings", default=...) -> tuple[int, int]:
    """(default training seq, positions): min(max positions, DEFAULT_SEQ)."""
    n = get.int(key, default)
    return min(n, DEFAULT_SEQ), n


def _act(get, key, default, gated: bool, alt=()) -> str:
    k, _ = get.raw(key, default, alt)
    a = get.str(key, default, alt).lower()
    if a.startswith("gelu"):  # gelu, gelu_new, gelu_pytorch_tanh, gelu_fast: same shapes
        return "geglu" if gated else "gelu"
    if a in ("silu", "swish"):
        return "swiglu" if gated else "silu"
    if a in ("relu", "relu2") and not gated:
        return a
    raise UserError(f"unsupported activation {a!r}", field=k,
                    fix="gelu*, silu" + ("" if gated else ", relu or relu2"))


def _rope(get):
    """Rope scaling changes the rotation angles only (no shape, no FLOP): validated, not used."""
    for key in ("rope_scaling", "rope_parameters"):
        k, v = get.raw(key, None)
        if v is None:
            continue
        if not isinstance(v, dict):
            get._bad(k, v, "an object")
        t = v.get("rope_type", v.get("type", "default"))
        if t not in ROPE_TYPES:
            raise UserError(f"{get.where}: unknown rope type {t!r}", field=key,
                            fix=f"one of {', '.join(ROPE_TYPES)}")


def _layer_types(get, layers: int, sliding: bool, window: int) -> tuple[str, ...]:
    """transformers' `layer_types` ("full_attention" | "sliding_attention" per layer)."""
    k, v = get.raw("layer_types", None)
    if v is None:
        return ()
    lt = get.list("layer_types")
    m = {"full_attention": "full", "sliding_attention": "sliding"}
    if len(lt) != layers or any(x not in m for x in lt):
        raise UserError(f"{get.where}: expected {layers} entries of full_attention / sliding_attention",
                        field="layer_types",
                        fix=f"give layer_types {layers} entries, each full_attention or sliding_attention")
    out = tuple(m[x] for x in lt)
    if "sliding" in out and not window:
        raise UserError(f"{get.where}: sliding layers without a sliding_window", field="sliding_window",
                        fix="give sliding_window, or make every layer full_attention")
    return out


def _window(get, default=None) -> int:
    """sliding_window; an explicit null means no window (Mistral-7B-v0.2), absent = default."""
    if "sliding_window" in get.cfg and get.cfg["sliding_window"] is None:
        return 0
    k, v = get.raw("sliding_window", default)
    return 0 if v is None else get.int("sliding_window", default)


def _head_dim(h: int, heads: int, hd: int) -> int:
    """head_dim where hidden / heads does not give it, else 0 (heads 0: validate refuses it)."""
    return hd if hd and (not heads or h % heads or hd != h // heads) else 0


def _common(get, name, *, kv_default=None, head_dim_default=0, tie_default=False):
    heads = get.count("num_attention_heads")
    h = get.count("hidden_size")
    hd = get.int("head_dim", head_dim_default or 0)
    seq, npos = _seq(get)
    _rope(get)
    return dict(name=name, hidden=h, layers=get.count("num_hidden_layers"), heads=heads,
                kv_heads=get.count("num_key_value_heads", kv_default or heads),
                ffn=get.count("intermediate_size"), vocab=get.count("vocab_size"), seq=seq, max_positions=npos, norm="rmsnorm", position="rope",
                bias=False, dropout=False, fused_qkv=False,
                head_dim=_head_dim(h, heads, hd),
                tied_embeddings=get.bool("tie_word_embeddings", tie_default))


def _llama(get, name):
    """LlamaForCausalLM: q/k/v/o carry `attention_bias`, gate/up/down `mlp_bias`; the MLP is
    gated whatever `hidden_act` is (down(act(gate(x)) * up(x)))."""
    get.zero_dropout("attention_dropout")
    ab = get.bool("attention_bias", False)
    return ModelSpec(**_common(get, name), activation=_act(get, "hidden_act", "silu", True),
                     qkv_bias=ab, out_bias=ab, mlp_bias=get.bool("mlp_bias", False))


def _mistral(get, name, kind="mistral"):
    get.zero_dropout("attention_dropout")
    w = _window(get, 4096 if kind == "mistral" else None)
    return ModelSpec(**_common(get, name, kv_default=8), activation=_act(get, "hidden_act", "silu", True),
                     sliding_window=w)


def _mixtral(get, name):
    base = _mistral(get, name, "mixtral")
    return base.with_(experts=get.int("num_local_experts", 8), top_k=get.count("num_experts_per_tok", 2))


def _qwen_window(get, layers):
    """Qwen2/3: layer i slides iff use_sliding_window and i >= max_window_layers (or `layer_types`)."""
    w = _window(get, 4096)
    lt = _layer_types(get, layers, False, w)
    if not lt and get.bool("use_sliding_window", False):
        mw = get.int("max_window_layers", 28)
        lt = tuple("sliding" if i >= mw else "full" for i in range(layers))
    if "sliding" not in lt:
        return 0, ()
    return w, lt


def _qwen2(get, name):
    """Qwen2: q/k/v with bias, o and the MLP without."""
    get.zero_dropout("attention_dropout")
    c = _common(get, name)
    w, lt = _qwen_window(get, c["layers"])
    return ModelSpec(**c, activation=_act(get, "hidden_act", "silu", True), qkv_bias=True, out_bias=False,
                     mlp_bias=False, sliding_window=w, layer_types=lt)


def _qwen2_moe(get, name):
    """Qwen2-MoE: Qwen2 attention (`qkv_bias`), every block sparse: router, top-k of
    `num_experts` experts of width moe_intermediate_size, a shared expert of width
    shared_expert_intermediate_size scaled by sigmoid(shared_expert_gate(x))."""
    get.zero_dropout("attention_dropout")
    get.refuse("decoder_sparse_step", 1, "dense blocks between sparse ones are not modelled")
    if get.list("mlp_only_layers", []):
        raise UserError(f"{get.where}: mlp_only_layers is not supported (dense blocks between sparse "
                        "ones are not modelled)", field="mlp_only_layers", fix="set it to []")
    c = _common(get, name)
    w, lt = _qwen_window(get, c["layers"])
    qb = get.bool("qkv_bias", True)
    sh = get.int("shared_expert_intermediate_size")
    return ModelSpec(**c, activation=_act(get, "hidden_act", "silu", True), qkv_bias=qb, out_bias=False,
                     mlp_bias=False, sliding_window=w, layer_types=lt, experts=get.int("num_experts"),
                     top_k=get.count("num_experts_per_tok"), moe_ffn=get.count("moe_intermediate_size"),
                     shared_ffn=sh, shared_gate=sh > 0)


def _qwen3(get, name):
    """Qwen3: Llama layout with q/k RMSNorm over head_dim, head_dim 128 by default."""
    get.zero_dropout("attention_dropout")
    c = _common(get, name, head_dim_default=128)
    w, lt = _qwen_window(get, c["layers"])
    ab = get.bool("attention_bias", False)
    return ModelSpec(**c, activation=_act(get, "hidden_act", "silu", True), qkv_bias=ab, out_bias=ab,
                     mlp_bias=False, qk_norm=True, sliding_window=w, layer_types=lt)


def _qwen3_moe(get, name):
    """Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3 attention (q/k RMSNorm, head_dim
    128 by default), every block sparse: router, top-k of `num_experts` experts of width
    moe_intermediate_size, no shared expert (norm_topk_prob rescales the top-k weights:
    element-wise, not modelled)."""
    get.zero_dropout("attention_dropout")
    get.refuse("decoder_sparse_step", 1, "dense blocks between sparse ones are not modelled")
    if get.list("mlp_only_layers", []):
        raise UserError(f"{get.where}: mlp_only_layers is not supported (dense blocks between sparse "
                        "ones are not modelled)", field="mlp_only_layers", fix="set it to []")
    # transformers' Qwen3MoeConfig defaults: 4 key/value heads, head_dim hidden / heads
    c = _common(get, name, kv_default=4)
    w, lt = _qwen_window(get, c["layers"])
    ab = get.bool("attention_bias", False)
    return ModelSpec(**c, activation=_act(get, "hidden_act", "silu", True), qkv_bias=ab, out_bias=ab,
                     mlp_bias=False, qk_norm=True, sliding_window=w, layer_types=lt,
                     experts=get.int("num_experts", alt=("num_local_experts",)),
                     top_k=get.count("num_experts_per_tok"), moe_ffn=get.count("moe_intermediate_size"))


def _gemma(get, name, v2=False):
    """Gemma: gated GELU (GeGLU), head_dim 256, tied head, embeddings scaled by sqrt(h) (an
    element-wise op, not modelled). Gemma2 adds norms after attention and after the MLP,
    soft-capping of scores (50) and logits (30), and alternate sliding (4096) / full layers."""
    get.zero_dropout("attention_dropout")
    if get.bool("use_bidirectional_attention", False):
        raise UserError(f"{get.where}: use_bidirectional_attention is not supported", field=
                        "use_bidirectional_attention", fix="set it to false")
    c = _common(get, name, head_dim_default=256, tie_default=True)
    ab = get.bool("attention_bias", False)
    act = _act(get, "hidden_activation", "gelu_pytorch_tanh", True, alt=("hidden_act",))
    spec = ModelSpec(**c, activation=act, qkv_bias=ab, out_bias=ab, mlp_bias=False)
    if not v2:
        return spec
    w = _window(get, 4096)
    lt = _layer_types(get, c["layers"], True, w) or tuple(
        "sliding" if (i + 1) % 2 else "full" for i in range(c["layers"]))
    return spec.with_(sandwich_norm=True, sliding_window=w if "sliding" in lt else 0,
                      layer_types=lt if "sliding" in lt else (),
                      attn_softcap=get.float("attn_logit_softcapping", 50.0),
                      final_softcap=get.float("final_logit_softcapping", 30.0))


def _phi3(get, name):
    """Phi-3: fused qkv_proj and gate_up_proj (same FLOPs as separate GEMMs), no biases."""
    d = get.dropout_all_or_none("resid_pdrop", "embd_pdrop", "attention_dropout")
    c = _common(get, name)
    c.update(fused_qkv=True, dropout=d)
    return ModelSpec(**c, activation=_act(get, "hidden_act", "silu", True), sliding_window=_window(get))


def _deepseek(get, name, v3=True):
    """DeepSeek-V2 / V3 (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM): multi-head latent
    attention (q_lora_rank null: a plain q projection, DeepSeek-V2-Lite), the first
    `first_k_dense_replace` blocks a dense gated MLP `intermediate_size` wide, the others MoE:
    top-k of `n_routed_experts` experts `moe_intermediate_size` wide plus an ungated shared
    expert n_shared_experts x moe_intermediate_size wide. V3 scores experts by sigmoid plus
    a correction bias (a buffer, no parameter) with group-limited top-k; V2 by softmax
    (greedy or group-limited). routed_scaling_factor and norm_topk_prob scale the top-k
    weights (element-wise, not modelled). The multi-token-prediction layers
    (num_nextn_predict_layers) are not built, as transformers does not build them."""
    get.zero_dropout("attention_dropout")
    if v3:
        get.refuse("scoring_func", "sigmoid", "DeepSeek-V3 routers score by sigmoid in transformers")
        get.refuse("topk_method", "noaux_tc", "DeepSeek-V3 routers pick by noaux_tc in transformers")
    else:
        get.refuse("scoring_func", "softmax", "DeepSeek-V2 routers score by softmax in transformers")
        t = get.str("topk_method", "greedy")
        if t not in ("greedy", "group_limited_greedy"):
            raise UserError(f"{get.where}: topk_method = {t!r} is not supported", field="topk_method",
                            fix="greedy or group_limited_greedy")
        if get.bool("mlp_bias", False):
            raise UserError(f"{get.where}: mlp_bias = true is not supported (biased DeepSeek MLPs "
                            "are not modelled)", field="mlp_bias", fix="set it to false")
    get.refuse("moe_layer_freq", 1, "transformers makes every block after first_k_dense_replace "
               "an MoE block")
    heads = get.count("num_attention_heads")
    if get.count("num_key_value_heads", heads) != heads:
        raise UserError(f"{get.where}: num_key_value_heads must equal num_attention_heads under "
                        "multi-head latent attention", field="num_key_value_heads",
                        fix=f"set it to {heads} or remove it")
    layers = get.count("num_hidden_layers")
    experts = get.int("n_routed_experts", alt=("num_local_experts", "num_experts"))
    top_k = get.count("num_experts_per_tok")
    groups = get.int("n_group", 1)
    if groups < 1 or experts % groups or not 1 <= get.int("topk_group", groups) <= groups:
        raise UserError(f"{get.where}: n_group {groups} must divide n_routed_experts {experts} "
                        "and topk_group be in 1..n_group", field="n_group",
                        fix="give an n_group dividing n_routed_experts and 1 <= topk_group <= n_group")
    k_dense = get.int("first_k_dense_replace", 3 if v3 else 0)
    if k_dense < 0:
        raise UserError(f"{get.where}: must be a non-negative integer, got {k_dense}",
                        field="first_k_dense_replace", fix="give first_k_dense_replace >= 0")
    kinds = tuple("dense" if i < k_dense else "moe" for i in range(layers))
    moe = "moe" in kinds
    ql = get.raw("q_lora_rank", None)[1]
    q_lora = 0 if ql is None else get.int("q_lora_rank")
    if "q_lora_rank" in get.cfg and get.cfg["q_lora_rank"] is not None and q_lora <= 0:
        raise UserError(f"{get.where}: must be positive or null, got {q_lora}", field="q_lora_rank",
                        fix="give q_lora_rank > 0, or null for no query compression")
    for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if get.int(f) <= 0:
            raise UserError(f"{get.where}: must be a positive integer, got {get.cfg[f]!r}", field=f,
                            fix=f"give {f} > 0")
    seq, npos = _seq(get)
    _rope(get)
    ab = get.bool("attention_bias", False)
    return ModelSpec(
        name=name, hidden=get.count("hidden_size"), layers=layers, heads=heads,
        ffn=get.count("intermediate_size"), vocab=get.count("vocab_size"), seq=seq, max_positions=npos,
        activation=_act(get, "hidden_act", "silu", True), norm="rmsnorm", position="rope", bias=False,
        qkv_bias=ab, out_bias=ab, mlp_bias=False, dropout=False, fused_qkv=False,
        tied_embeddings=get.bool("tie_word_embeddings", False),
        experts=experts if moe else 0, top_k=top_k if moe else 0,
        moe_ffn=get.count("moe_intermediate_size") if moe else 0,
        shared_ffn=get.int("n_shared_experts", 1 if v3 else 2) * get.count("moe_intermediate_size")
        if moe else 0,
        router="sigmoid" if v3 else "softmax", ffn_types=kinds if moe else (),
        q_lora_rank=q_lora, kv_lora_rank=get.int("kv_lora_rank"),
        qk_nope_head_dim=get.int("qk_nope_head_dim"), qk_rope_head_dim=get.int("qk_rope_head_dim"),
        v_head_dim=get.int("v_head_dim"))


def _nemotron(get, name):
    """Nemotron (NemotronForCausalLM; Nemotron-4, Minitron): LayerNorm1P (a LayerNorm with
    bias whose weight is stored zero-centred: same shapes), an ungated MLP up -> act ->
    down with squared ReLU (`relu2`), attention_bias / mlp_bias, partial rotary, untied."""
    get.zero_dropout("attention_dropout")
    c = _common(get, name)
    c.update(norm="layernorm")
    ab = get.bool("attention_bias", False)
    return ModelSpec(**c, activation=_act(get, "hidden_act", "relu2", False), qkv_bias=ab,
                     out_bias=ab, mlp_bias=get.bool("mlp_bias", False))


# Nemotron-H's hybrid_override_pattern (Megatron-Core's hybrid layer allocation symbols):
# one character per layer -> (mixer, ffn) of a one-branch pre-norm block
NEMOTRON_H_PATTERN = {"M": ("mamba", "none"), "*": ("attention", "none"), "-": ("none", "dense"),
                      "E": ("none", "moe")}
_NEMOTRON_H_TYPES = {"linear_attention": "M", "full_attention": "*", "mlp": "-", "moe": "E",
                     "mamba": "M", "attention": "*"}


def _nemotron_h_pattern(get) -> str:
    """The layer pattern: `hybrid_override_pattern`, or transformers 5's `layers_block_type`
    (alias `layer_types`: linear_attention = Mamba-2, full_attention, mlp, moe)."""
    if get.cfg.get("hybrid_override_pattern") is not None:
        pat = get.str("hybrid_override_pattern")
        bad = sorted({ch for ch in pat if ch not in NEMOTRON_H_PATTERN})
        if bad or not pat:
            raise UserError(f"{get.where}: hybrid_override_pattern has unsupported layer symbols "
                            f"{bad or ['(empty)']}", field="hybrid_override_pattern",
                            fix="use M (Mamba-2), * (attention), - (MLP) and E (MoE) only")
        return pat
    k, _ = get.raw("layers_block_type", alt=("layer_types",))
    lt = get.list(k)
    if not lt or any(not isinstance(x, str) or x not in _NEMOTRON_H_TYPES for x in lt):
        raise UserError(f"{get.where}: {k} must list mamba / linear_attention, full_attention / "
                        "attention, mlp or moe per layer", field=k,
                        fix=f"list one of {', '.join(_NEMOTRON_H_TYPES)} per layer")
    return "".join(_NEMOTRON_H_TYPES[x] for x in lt)


def _nemotron_h(get, name):
    """Nemotron-H (NemotronHForCausalLM; Nemotron-H 4B/8B/47B/56B, Nemotron Nano 2 / 3): one
    pre-norm RMSNorm block per pattern character (NEMOTRON_H_PATTERN): a Mamba-2 mixer, GQA
    attention without position encoding or biases, a squared-ReLU MLP up -> down
    (`mlp_bias`), or an MoE of ungated relu2 experts with a sigmoid top-k router and one
    shared ungated expert (moe_shared_expert_intermediate_size; grouped routing,
    norm_topk_prob and routed_scaling_factor are element-wise and not modelled). Mamba:
    mamba_num_heads x mamba_head_dim inner width, n_groups, ssm_state_size, conv_kernel,
    chunk_size, use_conv_bias, in/out_proj biases `use_bias`."""
    get.zero_dropout("attention_dropout", "hidden_dropout")
    get.refuse("attention_bias", False, "transformers' NemotronHAttention builds no biases")
    get.refuse("mamba_proj_bias", False, "transformers' Mamba projections take their bias from "
               "use_bias; a separate flag is not modelled")
    get.refuse("moe_latent_size", None, "latent MoE projections are not modelled")
    get.refuse("num_nextn_predict_layers", 0, "multi-token-prediction layers are not modelled")
    get.refuse("sliding_window", None, "Nemotron-H attention has no window")
    get.refuse("tie_word_embeddings", False, "transformers' NemotronHForCausalLM never ties its "
               "head to the embeddings")
    act = get.str("mamba_hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UserError(f"{get.where}: mamba_hidden_act {act!r} is not supported",
                        field="mamba_hidden_act", fix="use silu (the conv1d activation)")
    pat = _nemotron_h_pattern(get)
    n = get.count("num_hidden_layers", len(pat))
    if n != len(pat):
        raise UserError(f"{get.where}: num_hidden_layers {n} does not match the {len(pat)} layers "
                        "of the layer pattern", field="num_hidden_layers",
                        fix=f"set it to {len(pat)} or drop it")
    h, heads = get.count("hidden_size"), get.count("num_attention_heads", 32)
    hd = get.int("head_dim", 128, alt=("attention_head_dim",))
    seq, npos = _seq(get, default=4096)
    moe = "E" in pat
    mlp_bias = get.bool("mlp_bias", False)
    if moe and mlp_bias:
        raise UserError(f"{get.where}: mlp_bias with MoE layers is not supported (the shared "
                        "expert's biases are not modelled)", field="mlp_bias", fix="set it to false")
    extra = {}
    if moe:
        # typed (the element-wise routing they set is not modelled); n_shared_experts: one
        # shared MLP whatever it says (transformers' NemotronHMoE)
        get.int("n_group", 1), get.int("topk_group", 1), get.int("n_shared_experts", 1)
        get.bool("norm_topk_prob", True), get.float("routed_scaling_factor", 1.0)
        extra = dict(experts=get.int("n_routed_experts", 8, alt=("num_local_experts",)),
                     top_k=get.count("num_experts_per_tok", 2),
                     moe_ffn=get.count("moe_intermediate_size", 7688),
                     shared_ffn=get.int("moe_shared_expert_intermediate_size", 7688),
                     router="sigmoid")   # NemotronHTopkRouter: sigmoid + e_score_correction_bias
    kinds = [NEMOTRON_H_PATTERN[ch] for ch in pat]
    return ModelSpec(
        name=name, hidden=h, layers=len(pat), heads=heads, kv_heads=get.count("num_key_value_heads", 8),
        head_dim=_head_dim(h, heads, hd),
        ffn=get.count("intermediate_size", 21504), vocab=get.count("vocab_size", 131072), seq=seq,
        max_positions=npos, activation=_act(get, "mlp_hidden_act", "relu2", False), norm="rmsnorm",
        position="none", bias=False, mlp_bias=mlp_bias, dropout=False, fused_qkv=False,
        tied_embeddings=False,
        mixer_types=tuple(m for m, _ in kinds), ffn_types=tuple(f for _, f in kinds),
        mamba_num_heads=get.int("mamba_num_heads", 128), mamba_head_dim=get.int("mamba_head_dim", 64),
        ssm_state_size=get.int("ssm_state_size", 128, alt=("mamba_d_state",)),
        mamba_n_groups=get.int("n_groups", 8, alt=("mamba_n_groups",)),
        conv_kernel=get.int("conv_kernel", 4, alt=("mamba_d_conv",)),
        chunk_size=get.int("chunk_size", 128, alt=("mamba_chunk_size",)),
        mamba_proj_bias=get.bool("use_bias", False),
        mamba_conv_bias=get.bool("use_conv_bias", True, alt=("mamba_conv_bias",)), **extra)


def _gpt_neox(get, name):
    """GPT-NeoX / Pythia: fused QKV and dense with `attention_bias`, MLP with biases,
    LayerNorm, partial rotary, parallel residual x + attn(ln1(x)) + mlp(ln2(x)), untied."""
    d = get.dropout_all_or_none("hidden_dropout", "attention_dropout")
    c = _common(get, name, kv_default=None)
    if "num_key_value_heads" in get.cfg:
        raise UserError(f"{get.where}: GPT-NeoX has no grouped-query attention", field="num_key_value_heads",
                        fix="drop num_key_value_heads (GPT-NeoX has full multi-head attention)")
    ab = get.bool("attention_bias", True)
    c.update(norm="layernorm", fused_qkv=True, dropout=d)
    return ModelSpec(**c, activation=_act(get, "hidden_act", "gelu", False), qkv_bias=ab, out_bias=ab,
                     mlp_bias=True, parallel_block=get.bool("use_parallel_residual", True))


def _falcon(get, name):
    """Falcon: fused QKV (multi-query: 1 kv head; new_decoder_architecture: num_kv_heads),
    `bias` on every linear, LayerNorm, parallel attention + MLP with one norm (7B) or two
    (new architecture, num_ln_in_parallel_attn = 2), tied head."""
    if get.bool("alibi", False):
        raise UserError(f"{get.where}: alibi is not supported (rotary Falcon only)", field="alibi",
                        fix="set it to false")
    d = get.dropout_all_or_none("hidden_dropout", "attention_dropout")
    h, heads = get.count("hidden_size"), get.count("num_attention_heads")
    new = get.bool("new_decoder_architecture", False)
    mq = get.bool("multi_query", True)
    kv = get.int("num_kv_heads", heads) if new else (1 if mq else heads)
    par = get.bool("parallel_attn", True)
    n_ln = get.int("num_ln_in_parallel_attn", 2 if new else 1)
    seq, npos = _seq(get, default=2048)
    _rope(get)
    b = get.bool("bias", False)
    return ModelSpec(name=name, hidden=h, layers=get.count("num_hidden_layers"), heads=heads, kv_heads=kv,
                     ffn=get.count("ffn_hidden_size", 4 * h), vocab=get.count("vocab_size"), seq=seq,
                     max_positions=npos, activation=_act(get, "activation", "gelu", False),
                     norm="layernorm", position="rope", bias=b, dropout=d, fused_qkv=True,
                     parallel_block=par, shared_norm=par and not (new and n_ln == 2),
                     tied_embeddings=get.bool("tie_word_embeddings", True))


def _gpt_oss(get, name):
    """gpt-oss (GptOssForCausalLM; gpt-oss-20b / 120b): Llama-like GQA attention with q/k/v/o
    biases (`attention_bias`), head_dim 64 whatever hidden / heads, a learned sink logit per
    head in every softmax row, sliding-window (128) and full layers alternating
    (`layer_types`, default: even layers slide), YaRN rope (angles only); every block an MoE
    of `num_local_experts` experts, top `num_experts_per_tok`: a router with bias, per-expert
    gate_up and down biases, and the clamped SwiGLU gate * sigmoid(alpha gate) * (up + 1)
    (swiglu_alpha, swiglu_limit: numerics only). The experts ignore `hidden_act`."""
    get.zero_dropout("attention_dropout")
    c = _common(get, name, kv_default=8, head_dim_default=64)   # GptOssConfig's defaults
    w = _window(get, 128)
    lt = _layer_types(get, c["layers"], True, w) or tuple(
        "sliding" if (i + 1) % 2 else "full" for i in range(c["layers"]))
    ab = get.bool("attention_bias", True)
    for k in ("swiglu_alpha", "swiglu_limit"):
        get.float(k, 1.0)   # type-checked; they change values, not work
    return ModelSpec(**c, activation="clamped_swiglu", qkv_bias=ab, out_bias=ab, mlp_bias=False,
                     sliding_window=w if "sliding" in lt else 0,
                     layer_types=lt if "sliding" in lt else (),
                     experts=get.int("num_local_experts", 128, alt=("num_experts",)),
                     top_k=get.count("num_experts_per_tok", 4), router_bias=True, expert_bias=True,
                     attn_sinks=True)


def _bloom(get, name):
    """BLOOM (BloomForCausalLM): ALiBi (no position parameters), a LayerNorm right after the
    word embeddings (word_embeddings_layernorm), fused query_key_value and dense with
    biases, MLP h -> 4h -> h with biases and GELU (tanh form), pre-LN, tied head.
    hidden_dropout (after attention and MLP; Megatron-DeepSpeed, where BLOOM was trained,
    also after the embeddings) and attention_dropout: all or none. No positions bound the
    sequence: the default seq is `seq_length` if given, else 2048 (BLOOM's training length)."""
    get.refuse("apply_residual_connection_post_layernorm", False,
               "a residual taken after the norm is not modelled")
    d = get.dropout_all_or_none("hidden_dropout", "attention_dropout")
    h = get.int("n_embed", alt=("hidden_size",))   # BloomConfig: n_embed wins when given
    heads = get.count("n_head", alt=("num_attention_heads",))
    get.int("pretraining_tp", 1)    # slices of the same GEMMs (slow_but_exact): same work
    get.bool("slow_but_exact", False)
    return ModelSpec(name=name, hidden=h, layers=get.count("n_layer", alt=("num_hidden_layers",)),
                     heads=heads, ffn=4 * h, vocab=get.count("vocab_size", 250880),
                     seq=get.int("seq_length", 2048), activation="gelu", norm="layernorm",
                     position="alibi", bias=True, dropout=d, fused_qkv=True, embed_norm=True,
                     tied_embeddings=get.bool("tie_word_embeddings", True))


def _gpt2(get, name):
    get.refuse("add_cross_attention", False, "encoder-decoder cross attention is not modelled")
    h = get.count("n_embd", alt=("hidden_size",))
    n_pos = get.int("n_positions", alt=("n_ctx", "max_position_embeddings"))
    d = get.dropout_all_or_none("resid_pdrop", "embd_pdrop", "attn_pdrop", default=0.1)
    return ModelSpec(
        name=name, hidden=h, layers=get.count("n_layer", alt=("num_hidden_layers",)),
        heads=get.count("n_head", alt=("num_attention_heads",)), ffn=get.count("n_inner", 4 * h),
        vocab=get.count("vocab_size"), seq=n_pos, max_positions=n_pos, dropout=d,
        activation=_act(get, "activation_function", "gelu_new", False),
        tied_embeddings=get.bool("tie_word_embeddings", True))


def _bert(get, name):
    get.refuse("add_cross_attention", False, "encoder-decoder cross attention is not modelled")
    get.refuse("is_decoder", False, "BERT as a decoder is not modelled")
    get.refuse("position_embedding_type", "absolute", "relative position embeddings are not modelled")
    n_pos = get.int("max_position_embeddings")
    return ModelSpec(
        name=name, hidden=get.count("hidden_size"), layers=get.count("num_hidden_layers"),
        heads=get.count("num_attention_heads"), ffn=get.count("intermediate_size"), vocab=get.count("vocab_size"),
        seq=n_pos, max_positions=n_pos, activation=_act(get, "hidden_act", "gelu", False),
        causal=False, pre_norm=False, final_norm=False, fused_qkv=False,
        token_types=get.int("type_vocab_size", 2), embed_norm=True, mlm_head=True, pooler=True,
        tied_embeddings=get.bool("tie_word_embeddings", True), **_split_dropout(
            get, "hidden_dropout_prob", "attention_probs_dropout_prob", default=0.1))


def _opt(get, name):
    h = get.count("hidden_size")
    proj = get.int("word_embed_proj_dim", h)
    pre = get.bool("do_layer_norm_before", True)
    n_pos = get.int("max_position_embeddings")
    return ModelSpec(
        name=name, hidden=h, layers=get.count("num_hidden_layers"), heads=get.count("num_attention_heads"),
        ffn=get.count("ffn_dim"), vocab=get.count("vocab_size"), seq=n_pos,
        max_positions=n_pos + 2,  # OPT's learned positions are offset by 2 rows
        activation=_act(get, "activation_function", "relu", False), pre_norm=pre,
        final_norm=pre and not get.bool("_remove_final_layer_norm", False),
        bias=get.bool("enable_bias", True), fused_qkv=False,
        embed_proj_dim=proj if proj != h else 0,
        tied_embeddings=get.bool("tie_word_embeddings", True),
        **_split_dropout(get, "dropout", "attention_dropout", default=0.1, attn_default=0.0))


def _split_dropout(get, hidden_key: str, attn_key: str, *, default: float,
                   attn_default: float | None = None) -> dict:
    """ModelSpec dropout fields of a family whose config sets the hidden dropout and the
    attention-probability dropout apart (BERT, OPT; transformers' defaults where absent)."""
    hidden = get.float(hidden_key, default) != 0.0
    attn = get.float(attn_key, default if attn_default is None else attn_default) != 0.0
    return {"dropout": hidden, "attention_dropout": None if attn == hidden else attn}


_READERS = {
    "llama": _llama, "mistral": _mistral, "mixtral": _mixtral, "qwen2": _qwen2, "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3, "qwen3_moe": _qwen3_moe, "gemma": _gemma, "gemma2": lambda g, n: _gemma(g, n, v2=True), "phi3": _phi3,
    "nemotron": _nemotron, "nemotron_h": _nemotron_h,
    "deepseek_v2": lambda g, n: _deepseek(g, n, v3=False), "deepseek_v3": _deepseek,
    "gpt_oss": _gpt_oss, "bloom": _bloom,
    "gpt_neox": _gpt_neox, "falcon": _falcon, "gpt2": _gpt2, "bert": _bert, "opt": _opt,
}
