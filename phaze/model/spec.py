"""ModelSpec: the architecture of one transformer model (sizes and structural choices).

A spec says nothing about how the model is trained (sequence length used, microbatch,
parallelism): those are arguments of the graph builder (phaze.model.graph).
"""

from __future__ import annotations

from dataclasses import dataclass, asdict, replace

from phaze.errors import UserError

ACTIVATIONS = ("gelu", "relu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int                 # model width h
    layers: int                 # transformer blocks l
    heads: int                  # attention (query) heads a
    ffn: int                    # MLP inner width (per branch for SwiGLU)
    vocab: int                  # vocabulary V
    seq: int                    # default training sequence length
    kv_heads: int = 0           # key/value heads (grouped-query attention); 0 = heads
    activation: str = "gelu"    # gelu | relu | swiglu
    norm: str = "layernorm"     # layernorm | rmsnorm
    pre_norm: bool = True       # norm before attention/MLP (GPT-2, Llama) or after (BERT, OPT-350M)
    final_norm: bool = True     # a norm after the last block (pre-norm models)
    causal: bool = True         # decoder (causal mask) or encoder (padding mask)
    position: str = "learned"   # learned | rope
    max_positions: int = 0      # rows of the learned position table; 0 = seq
    bias: bool = True           # linear layers carry biases
    tied_embeddings: bool = True
    dropout: bool = True        # dropout after attention probs, attention out, MLP out, embeddings
    fused_qkv: bool = True      # one QKV GEMM (Megatron, GPT-2) or three (HF BERT, OPT, Llama)
    embed_proj_dim: int = 0     # OPT word_embed_proj_dim when != hidden (project_in/out); 0 = none
    token_types: int = 0        # BERT token-type (segment) embeddings rows; 0 = none
    embed_norm: bool = False    # norm right after the embeddings (BERT)
    mlm_head: bool = False      # BERT MLM transform (dense h->h, GELU, LayerNorm) before the LM head
    pooler: bool = False        # BERT pooler (dense h->h + tanh on the first token)
    head_dim: int = 0           # per-head width; 0 = hidden / heads
    source: str = ""            # where the numbers come from (citation)

    # --- derived sizes ---------------------------------------------------------
    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding table (OPT-350M: 512, otherwise hidden)."""
        return self.embed_proj_dim or self.hidden

    @property
    def position_rows(self) -> int:
        return self.max_positions or self.seq

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)

    def with_(self, **kw) -> "ModelSpec":
        return replace(self, **kw)

    # --- validation ------------------------------------------------------------
    def validate(self) -> "ModelSpec":
        for f in ("hidden", "layers", "heads", "ffn", "vocab", "seq"):
            _positive(f, getattr(self, f))
        for f in ("kv_heads", "max_positions", "embed_proj_dim", "token_types", "head_dim"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 0:
                raise UserError(f"must be a non-negative integer, got {v!r}", field=f)
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.activation!r}", field="activation",
                            fix=f"use one of {', '.join(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}", field="norm", fix=f"use one of {', '.join(NORMS)}")
        if self.position not in POSITIONS:
            raise UserError(f"unknown position encoding {self.position!r}", field="position",
                            fix=f"use one of {', '.join(POSITIONS)}")
        if not self.head_dim and self.hidden % self.heads:
            raise UserError(f"hidden {self.hidden} is not a multiple of heads {self.heads}", field="heads",
                            fix="set head_dim explicitly or pick heads dividing hidden")
        if self.heads % self.n_kv_heads:
            raise UserError(f"heads {self.heads} is not a multiple of kv_heads {self.n_kv_heads}",
                            field="kv_heads")
        return self

    def check_run(self, seq: int, mbs: int, tp: int, sequence_parallel: bool = False) -> None:
        """Check that (seq, mbs, tp) is a valid way to run this model; UserError if not."""
        self.validate()
        _positive("seq", seq)
        _positive("mbs", mbs)
        _positive("tp", tp)
        if self.position == "learned" and seq > self.position_rows:
            raise UserError(f"{seq} exceeds the {self.position_rows} learned positions of {self.name}",
                            field="seq", fix=f"use --seq {self.position_rows} or less")
        if self.heads % tp:
            raise UserError(f"tensor-parallel width {tp} does not divide heads {self.heads} of {self.name}",
                            field="tp", fix="pick a width that divides the number of heads")
        if self.n_kv_heads % tp:
            raise UserError(f"tensor-parallel width {tp} does not divide kv_heads {self.n_kv_heads} of "
                            f"{self.name}", field="tp", fix="pick a width that divides the key/value heads")
        if self.ffn % tp:
            raise UserError(f"tensor-parallel width {tp} does not divide ffn {self.ffn} of {self.name}",
                            field="tp")
        if sequence_parallel and seq % tp:
            raise UserError(f"sequence parallelism needs tp {tp} to divide seq {seq}", field="seq")


def _positive(field: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"must be a positive integer, got {v!r}", field=field)
