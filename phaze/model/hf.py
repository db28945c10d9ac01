"""Read a Hugging Face config.json (GPT-2, BERT, OPT, Llama families) into a ModelSpec.

Plain JSON parsing: no torch, no transformers, no download. Field names and defaults
follow the Hugging Face configuration classes of each family.
"""

from __future__ import annotations

import json
from pathlib import Path

from phaze.errors import UserError
from phaze.model.spec import ModelSpec

FAMILIES = ("gpt2", "bert", "opt", "llama")


def load_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"no such file {str(path)!r}", field="model",
                        fix="pass a zoo name (`phaze models`) or an existing config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} as JSON ({e})", field="model") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} does not hold a JSON object", field="model")
    name = name or cfg.get("_name_or_path") or path.parent.name or path.stem
    mt = cfg.get("model_type")
    if mt is None:
        raise UserError(f"{path}: missing field 'model_type'", field="model_type",
                        fix=f"add \"model_type\": one of {', '.join(FAMILIES)}")
    get = _Getter(cfg, path)
    if mt == "gpt2":
        spec = _gpt2(get, name)
    elif mt == "bert":
        spec = _bert(get, name)
    elif mt == "opt":
        spec = _opt(get, name)
    elif mt in ("llama", "mistral"):
        spec = _llama(get, name)
    else:
        raise UserError(f"{path}: unsupported model_type {mt!r}", field="model_type",
                        fix=f"supported families: {', '.join(FAMILIES)}")
    return spec.with_(source=f"Hugging Face config {path}").validate()


class _Getter:
    def __init__(self, cfg: dict, path: Path):
        self.cfg, self.path = cfg, path

    def __call__(self, key: str, default=..., alt: tuple[str, ...] = ()):
        for k in (key, *alt):
            if k in self.cfg and self.cfg[k] is not None:
                return self.cfg[k]
        if default is ...:
            raise UserError(f"{self.path}: missing field {key!r}", field=key,
                            fix=f"add \"{key}\" to the config (see the Hugging Face "
                                f"{self.cfg.get('model_type')} configuration)")
        return default


def _act(a: str) -> str:
    a = str(a).lower()
    if a in ("relu",):
        return "relu"
    if a.startswith("gelu"):
        return "gelu"
    if a in ("silu", "swish"):
        return "swiglu"
    raise UserError(f"unsupported activation {a!r}", field="activation", fix="gelu, relu or silu")


def _gpt2(get, name):
    h = get("n_embd", alt=("hidden_size",))
    n_pos = get("n_positions", alt=("n_ctx", "max_position_embeddings"))
    return ModelSpec(
        name=name, hidden=h, layers=get("n_layer", alt=("num_hidden_layers",)),
        heads=get("n_head", alt=("num_attention_heads",)), ffn=get("n_inner", 4 * h),
        vocab=get("vocab_size"), seq=n_pos, max_positions=n_pos,
        activation=_act(get("activation_function", "gelu_new")),
        tied_embeddings=bool(get("tie_word_embeddings", True)))


def _bert(get, name):
    n_pos = get("max_position_embeddings")
    return ModelSpec(
        name=name, hidden=get("hidden_size"), layers=get("num_hidden_layers"),
        heads=get("num_attention_heads"), ffn=get("intermediate_size"), vocab=get("vocab_size"),
        seq=n_pos, max_positions=n_pos, activation=_act(get("hidden_act", "gelu")),
        causal=False, pre_norm=False, final_norm=False, fused_qkv=False,
        token_types=get("type_vocab_size", 2), embed_norm=True, mlm_head=True, pooler=True,
        tied_embeddings=bool(get("tie_word_embeddings", True)))


def _opt(get, name):
    h = get("hidden_size")
    proj = get("word_embed_proj_dim", h)
    pre = bool(get("do_layer_norm_before", True))
    n_pos = get("max_position_embeddings")
    return ModelSpec(
        name=name, hidden=h, layers=get("num_hidden_layers"), heads=get("num_attention_heads"),
        ffn=get("ffn_dim"), vocab=get("vocab_size"), seq=n_pos,
        max_positions=n_pos + 2,  # OPT's learned positions are offset by 2 rows
        activation=_act(get("activation_function", "relu")), pre_norm=pre,
        final_norm=pre and not bool(get("_remove_final_layer_norm", False)),
        bias=bool(get("enable_bias", True)), fused_qkv=False,
        embed_proj_dim=proj if proj != h else 0,
        tied_embeddings=bool(get("tie_word_embeddings", True)))


def _llama(get, name):
    heads = get("num_attention_heads")
    h = get("hidden_size")
    hd = get("head_dim", 0)
    return ModelSpec(
        name=name, hidden=h, layers=get("num_hidden_layers"), heads=heads,
        kv_heads=get("num_key_value_heads", heads), ffn=get("intermediate_size"),
        vocab=get("vocab_size"), seq=get("max_position_embeddings"),
        activation=_act(get("hidden_act", "silu")), norm="rmsnorm", position="rope",
        bias=bool(get("attention_bias", False)), dropout=False, fused_qkv=False,
        head_dim=hd if hd and hd != h // heads else 0,
        tied_embeddings=bool(get("tie_word_embeddings", False)))
