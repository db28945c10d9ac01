"""ModelSpec: the architecture of one transformer model (sizes and structural choices).

A spec says nothing about how the model is trained (sequence length used, microbatch,
parallelism): those are arguments of the graph builder (phaze.model.graph).
"""

from __future__ import annotations

from dataclasses import dataclass, asdict, replace

from phaze.errors import UserError

# swiglu = silu(gate) * up, geglu = gelu(gate) * up (gated MLPs: gate, up and down GEMMs);
# relu2 = relu(x)^2, squared ReLU (So et al. 2021, "Primer"; Nemotron-4's MLP);
# clamped_swiglu = gpt-oss's experts: gate clamped above, up clamped both sides, then
# gate * sigmoid(alpha gate) * (up + 1) (Megatron-Core: quick_gelu with glu_linear_offset 1 and
# activation_func_clamp_value); same GEMMs as swiglu, a few more element-wise steps
ACTIVATIONS = ("gelu", "relu", "relu2", "silu", "swiglu", "geglu", "clamped_swiglu")
GATED = {"swiglu": "silu", "geglu": "gelu", "clamped_swiglu": "quick_gelu"}
LAYER_TYPES = ("full", "sliding")
# per-layer token mixer and feed-forward of a block: hybrid models (Nemotron-H) have blocks
# that are only a mixer or only an FFN; DeepSeek-V3 keeps its first layers dense
# "mamba": a Mamba-2 mixer (Dao & Gu 2024; the mamba_* fields below)
MIXER_TYPES = ("attention", "mamba", "none")
FFN_TYPES = ("dense", "moe", "none")
NORMS = ("layernorm", "rmsnorm")
# MoE router scoring: softmax over the experts then top-k (Mixtral, Qwen), or sigmoid scores
# plus a correction bias with group-limited top-k (DeepSeek-V3); same h x E GEMM
ROUTERS = ("softmax", "sigmoid")
# none: no position encoding (Nemotron-H attention); alibi: no position parameters, a
# per-head linear bias on the attention scores (BLOOM)
POSITIONS = ("learned", "rope", "none", "alibi")


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
    activation: str = "gelu"    # gelu | relu | relu2 | silu | swiglu | geglu | clamped_swiglu (last three gated)
    norm: str = "layernorm"     # layernorm | rmsnorm
    pre_norm: bool = True       # norm before attention/MLP (GPT-2, Llama) or after (BERT, OPT-350M)
    final_norm: bool = True     # a norm after the last block (pre-norm models)
    causal: bool = True         # decoder (causal mask) or encoder (padding mask)
    position: str = "learned"   # learned | rope | alibi
    max_positions: int = 0      # rows of the learned position table; 0 = seq
    bias: bool = True           # linear layers carry biases
    tied_embeddings: bool = True
    dropout: bool = True        # dropout after attention probs, attention out, MLP out, embeddings
    # dropout on the attention probabilities alone, where a config sets it apart from the
    # hidden dropout (OPT: attention_dropout 0.0, dropout 0.1); None = as `dropout`
    attention_dropout: bool | None = None
    fused_qkv: bool = True      # one QKV GEMM (Megatron, GPT-2) or three (HF BERT, OPT, Llama)
    fused_gate_up: bool = False  # gated MLP: one gate+up GEMM (Megatron-Core linear_fc1) or two (HF)
    embed_proj_dim: int = 0     # OPT word_embed_proj_dim when != hidden (project_in/out); 0 = none
    token_types: int = 0        # BERT token-type (segment) embeddings rows; 0 = none
    embed_norm: bool = False    # norm right after the embeddings (BERT)
    mlm_head: bool = False      # BERT MLM transform (dense h->h, GELU, LayerNorm) before the LM head
    pooler: bool = False        # BERT pooler (dense h->h + tanh on the first token)
    head_dim: int = 0           # per-head width; 0 = hidden / heads
    # per-linear bias overrides (None = `bias`): q/k/v, attention output, MLP (Qwen2: q/k/v only)
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    mlp_bias: bool | None = None
    qk_norm: bool = False       # RMSNorm over head_dim on q and k (Qwen3)
    sandwich_norm: bool = False # norms after attention and after the MLP too (Gemma2: 4 per block)
    parallel_block: bool = False  # x + attn(n1(x)) + mlp(n2(x)) (GPT-NeoX, Falcon)
    shared_norm: bool = False   # parallel block with one norm feeding both (Falcon-7B)
    attn_softcap: float = 0.0   # cap * tanh(scores / cap) before the softmax (Gemma2); 0 = none
    final_softcap: float = 0.0  # the same on the LM logits (Gemma2); 0 = none
    sliding_window: int = 0     # keys a query sees in a sliding-window layer; 0 = none
    layer_types: tuple[str, ...] = ()  # per block "full" | "sliding"; () = all sliding iff window
    experts: int = 0            # routed experts per MoE block; 0 = dense MLP
    top_k: int = 0              # experts each token is routed to
    moe_ffn: int = 0            # inner width of one routed expert; 0 = ffn
    shared_ffn: int = 0         # inner width of the shared expert (Qwen2-MoE); 0 = none
    shared_gate: bool = False   # sigmoid gate on the shared expert (Qwen2-MoE)
    router_bias: bool = False   # the router linear carries a bias (gpt-oss)
    expert_bias: bool = False   # routed experts' gate/up and down carry per-expert biases (gpt-oss)
    attn_sinks: bool = False    # a learned logit per head joins every softmax row (gpt-oss sinks)
    router: str = "softmax"     # MoE scoring: softmax | sigmoid (DeepSeek-V3, group-limited top-k)
    mixer_types: tuple[str, ...] = ()  # per block "attention" | "mamba" | "none"; () = all attention
    # Mamba-2 mixer (mixer "mamba"; names as transformers' NemotronHConfig): heads x head_dim
    # = d_inner, B and C shared by the heads of a group, a depthwise causal conv1d of
    # conv_kernel taps on x, B, C, the SSD scan in chunks of chunk_size tokens
    mamba_num_heads: int = 0
    mamba_head_dim: int = 0
    ssm_state_size: int = 0
    mamba_n_groups: int = 0
    conv_kernel: int = 4
    chunk_size: int = 128
    mamba_proj_bias: bool = False  # in_proj / out_proj biases (transformers' use_bias)
    mamba_conv_bias: bool = True   # conv1d bias (use_conv_bias)
    ffn_types: tuple[str, ...] = ()    # per block "dense" | "moe" | "none"; () = all moe iff experts
    # Multi-head Latent Attention (DeepSeek-V2/V3; HF / Megatron-Core names); kv_lora_rank 0 = none.
    # q: h -> q_lora_rank -> RMSNorm -> heads x (nope + rope) (q_lora_rank 0: one h -> heads x
    # (nope + rope) GEMM); kv: h -> kv_lora_rank + rope (the rope part one key shared by all
    # heads) -> RMSNorm on the latent -> heads x (nope + v_head_dim); out: heads x v_head_dim -> h
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    source: str = ""            # where the numbers come from (citation)

    # --- derived sizes ---------------------------------------------------------
    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def mla(self) -> bool:
        """Multi-head latent attention (kv_lora_rank > 0)."""
        return self.kv_lora_rank > 0

    @property
    def qk_head_dim(self) -> int:
        """Width of one query / key head: nope + rope under MLA, d_head otherwise."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.mla else self.d_head

    @property
    def v_dim(self) -> int:
        """Width of one value head: v_head_dim under MLA, d_head otherwise."""
        return self.v_head_dim if self.mla else self.d_head

    @property
    def gated(self) -> bool:
        return self.activation in GATED

    @property
    def q_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def o_bias(self) -> bool:
        return self.bias if self.out_bias is None else self.out_bias

    @property
    def f_bias(self) -> bool:
        return self.bias if self.mlp_bias is None else self.mlp_bias

    @property
    def expert_ffn(self) -> int:
        return self.moe_ffn or self.ffn

    def layer_type(self, i: int) -> str:
        """'full' or 'sliding' for block i (0-based)."""
        if self.layer_types:
            return self.layer_types[i]
        return "sliding" if self.sliding_window else "full"

    @property
    def mamba_inner(self) -> int:
        """d_inner of a Mamba-2 mixer: heads x head_dim."""
        return self.mamba_num_heads * self.mamba_head_dim

    def has_mixer(self, kind: str) -> bool:
        return any(self.mixer_type(i) == kind for i in range(self.layers))

    def mixer_type(self, i: int) -> str:
        """The token mixer of block i: 'attention', 'mamba' or 'none' (an FFN-only block)."""
        return self.mixer_types[i] if self.mixer_types else "attention"

    def ffn_type(self, i: int) -> str:
        """The feed-forward of block i: 'dense' (ffn wide), 'moe' (routed experts) or 'none'."""
        if self.ffn_types:
            return self.ffn_types[i]
        return "moe" if self.experts else "dense"

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding table (OPT-350M: 512, otherwise hidden)."""
        return self.embed_proj_dim or self.hidden

    @property
    def position_rows(self) -> int:
        return self.max_positions or self.seq

    @property
    def attn_dropout(self) -> bool:
        """Dropout on the attention probabilities (in a fused kernel: a draw per score)."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["attention_dropout"] is None:   # graph files of models without it stay as they were
            del d["attention_dropout"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        for f in ("layer_types", "mixer_types", "ffn_types"):
            if f in d:
                d[f] = tuple(d[f])
        return cls(**d)

    def with_(self, **kw) -> "ModelSpec":
        return replace(self, **kw)

    def with_extra_layers(self, n: int) -> "ModelSpec":
        """n more copies of the last layer (every per-layer kind list extended by its last
        entry): a multi-token-prediction block run as one more decoder layer."""
        if n <= 0:
            return self
        per_layer = {f: getattr(self, f) + (getattr(self, f)[-1],) * n
                     for f in ("layer_types", "mixer_types", "ffn_types") if getattr(self, f)}
        return replace(self, layers=self.layers + n, **per_layer)

    # --- validation ------------------------------------------------------------
    def validate(self) -> "ModelSpec":
        for f in ("hidden", "layers", "heads", "ffn", "vocab", "seq"):
            _positive(f, getattr(self, f))
        for f in ("kv_heads", "max_positions", "embed_proj_dim", "token_types", "head_dim",
                  "sliding_window", "experts", "top_k", "moe_ffn", "shared_ffn", "q_lora_rank",
                  "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                  "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "mamba_n_groups",
                  "conv_kernel", "chunk_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 0:
                raise UserError(f"must be a non-negative integer, got {v!r}", field=f,
                                fix="give an integer >= 0")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.activation!r}", field="activation",
                            fix=f"use one of {', '.join(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}", field="norm", fix=f"use one of {', '.join(NORMS)}")
        if self.position not in POSITIONS:
            raise UserError(f"unknown position encoding {self.position!r}", field="position",
                            fix=f"use one of {', '.join(POSITIONS)}")
        self._validate_mla()
        if not self.mla and not self.head_dim and self.hidden % self.heads:
            raise UserError(f"hidden size {self.hidden} is not a multiple of {self.heads} attention "
                            "heads", field="heads",
                            fix=f"set head_dim explicitly or pick heads dividing {self.hidden}")
        if self.heads % self.n_kv_heads:
            raise UserError(f"{self.heads} attention heads are not a multiple of {self.n_kv_heads} "
                            "key/value heads", field="kv_heads",
                            fix=f"give kv_heads dividing {self.heads}")
        if self.layer_types:
            if len(self.layer_types) != self.layers:
                raise UserError(f"has {len(self.layer_types)} entries for {self.layers} layers",
                                field="layer_types",
                                fix=f"give one entry per layer ({self.layers})")
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise UserError(f"unknown layer type {bad[0]!r}", field="layer_types",
                                fix=f"use {' or '.join(LAYER_TYPES)}")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise UserError("sliding layers need a window", field="sliding_window",
                                fix="give sliding_window, or make every layer full")
        for f, allowed in (("mixer_types", MIXER_TYPES), ("ffn_types", FFN_TYPES)):
            v = getattr(self, f)
            if v and len(v) != self.layers:
                raise UserError(f"has {len(v)} entries for {self.layers} layers", field=f,
                                fix=f"give one entry per layer ({self.layers})")
            bad = [x for x in v if x not in allowed]
            if bad:
                raise UserError(f"unknown block part {bad[0]!r}", field=f,
                                fix=f"use one of {', '.join(allowed)}")
        one_branch = [i for i in range(self.layers)
                      if self.mixer_type(i) == "none" or self.ffn_type(i) == "none"]
        if any(self.mixer_type(i) == self.ffn_type(i) == "none" for i in one_branch):
            raise UserError("a block needs a mixer or an FFN", field="ffn_types",
                            fix="give every block a mixer or an FFN (not none for both)")
        if one_branch and (not self.pre_norm or self.parallel_block or self.sandwich_norm):
            raise UserError("mixer-only and FFN-only blocks are built pre-norm only", field="ffn_types",
                            fix="set pre_norm true (no parallel_block / sandwich_norm)")
        if self.has_mixer("mamba"):
            self._validate_mamba()
        if "moe" in self.ffn_types and not self.experts:
            raise UserError("MoE blocks need routed experts", field="experts",
                            fix="give experts and top_k, or drop moe from ffn_types")
        if bool(self.experts) != bool(self.top_k) or self.top_k > self.experts:
            why = (f"is not in 1..{self.experts}, the routed experts" if self.experts
                   else "needs routed experts (a dense model takes 0)")
            raise UserError(f"{self.top_k} experts per token {why}", field="top_k",
                            fix=f"give top_k in 1..{self.experts}" if self.experts
                            else "give top_k 0 for a dense model, or routed experts")
        if self.router not in ROUTERS:
            raise UserError(f"unknown router {self.router!r}", field="router",
                            fix=f"use one of {', '.join(ROUTERS)}")
        for f in ("router_bias", "expert_bias"):
            if getattr(self, f) and not self.experts:
                raise UserError("a router or expert bias needs routed experts", field=f,
                                fix=f"set {f} false or give experts / top_k")
        if self.shared_gate and not self.shared_ffn:
            raise UserError("a shared-expert gate needs a shared expert", field="shared_ffn",
                            fix="give shared_ffn, or set shared_gate false")
        for f in ("attn_softcap", "final_softcap"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise UserError(f"must be a non-negative number, got {v!r}", field=f,
                                fix="give a number >= 0")
        return self

    def _validate_mla(self) -> None:
        """MLA fields: all zero, or kv_lora_rank, qk_rope_head_dim and v_head_dim set (the
        only UserError names the first offending field)."""
        mla_fields = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if not self.mla:
            for f in mla_fields:
                if getattr(self, f):
                    raise UserError(f"{f} = {getattr(self, f)} needs multi-head latent attention",
                                    field=f, fix="set kv_lora_rank > 0 (MLA) or this field to 0")
            return
        for f in ("qk_rope_head_dim", "v_head_dim"):
            if not getattr(self, f):
                raise UserError("multi-head latent attention needs a positive width",
                                field=f, fix=f"set {f} > 0 (DeepSeek-V3: 64 rope, 128 v)")
        if self.qk_rope_head_dim % 2:
            raise UserError(f"must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}",
                            field="qk_rope_head_dim",
                            fix="give an even qk_rope_head_dim (DeepSeek-V3: 64)")
        why = {"position": self.position != "rope", "kv_heads": self.n_kv_heads != self.heads,
               "head_dim": bool(self.head_dim), "qk_norm": self.qk_norm,
               "sliding_window": bool(self.sliding_window or self.layer_types)}
        for f, bad in why.items():
            if bad:
                raise UserError(f"{f} = {getattr(self, f)!r} is not modelled with multi-head latent "
                                "attention", field=f,
                                fix="MLA takes rope positions, kv_heads = heads (or 0), head_dim 0, "
                                    "no qk_norm and no sliding window")
    def _validate_mamba(self) -> None:
        for f in ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "mamba_n_groups",
                  "conv_kernel", "chunk_size"):
            if getattr(self, f) <= 0:
                raise UserError(f"Mamba layers need a positive {f}, got {getattr(self, f)!r}",
                                field=f, fix=f"set {f} (transformers' NemotronHConfig names it so)")
        if self.mamba_num_heads % self.mamba_n_groups:
            raise UserError(f"{self.mamba_num_heads} Mamba heads are not a multiple of "
                            f"{self.mamba_n_groups} groups", field="mamba_n_groups",
                            fix=f"give mamba_n_groups dividing {self.mamba_num_heads}")
        for f in ("mamba_proj_bias", "mamba_conv_bias"):
            if not isinstance(getattr(self, f), bool):
                raise UserError(f"must be true or false, got {getattr(self, f)!r}", field=f,
                                fix="give true or false")

    def check_run(self, seq: int, mbs: int, tp: int, sequence_parallel: bool = False,
                  cp: int = 1) -> None:
        """Check that (seq, mbs, tp, cp) is a valid way to run this model; UserError if not.
        Context parallelism cp > 1 splits the sequence into 2 cp chunks (Megatron-Core's
        load-balanced causal split, `get_batch_on_this_cp_rank`), so 2 cp must divide seq."""
        self.validate()
        _positive("seq", seq)
        _positive("mbs", mbs)
        _positive("tp", tp)
        _positive("cp", cp)
        if cp > 1 and seq % (2 * cp):
            raise UserError(f"context parallelism cp = {cp} needs 2 cp = {2 * cp} to divide seq "
                            f"{seq} (the load-balanced causal split)", field="cp",
                            fix=f"use a cp whose double divides {seq}, or cp 1")
        if self.position == "learned" and seq > self.position_rows:
            raise UserError(f"{seq} exceeds the {self.position_rows} learned positions of {self.name}",
                            field="seq", fix=f"use --seq {self.position_rows} or less")
        self.check_tp(tp)
        if sequence_parallel and (seq // cp) % tp:
            raise UserError(f"sequence parallelism needs tp {tp} to divide the {seq // cp} "
                            "tokens of a device's sequence chunk", field="seq",
                            fix="use a seq divisible by tp x cp, or drop sequence parallelism")


    def tp_widths(self) -> list[tuple[str, int]]:
        """(name, width) of every dimension a tensor-parallel width must divide: the
        attention heads, the key/value heads, the FFN of dense blocks, the expert FFN and shared-expert
        widths (Megatron-LM splits each of them evenly across the TP ranks)."""
        kinds = {self.ffn_type(i) for i in range(self.layers)}
        widths = []
        if self.has_mixer("attention"):
            widths += [("attention heads", self.heads), ("key/value heads", self.n_kv_heads)]
        if self.has_mixer("mamba"):   # Megatron's MambaMixer splits heads and groups over TP
            widths += [("Mamba heads", self.mamba_num_heads), ("Mamba groups", self.mamba_n_groups)]
        if "dense" in kinds:
            widths.append(("ffn", self.ffn))
        if "moe" in kinds:
            widths.append(("moe_ffn", self.expert_ffn))
        if self.shared_ffn:
            widths.append(("shared_ffn", self.shared_ffn))
        return widths

    def check_tp(self, tp: int) -> None:
        """UserError (field "tp") naming the first dimension of `tp_widths` that `tp` does
        not divide, and the widths that divide them all."""
        _positive("tp", tp)
        for f, w in self.tp_widths():
            if w % tp:
                ok = [t for t in range(1, min(x for _, x in self.tp_widths()) + 1)
                      if all(x % t == 0 for _, x in self.tp_widths())]
                raise UserError(f"tensor-parallel width {tp} does not divide the {w} {f} of "
                                f"{self.name}", field="tp",
                                fix="use a width dividing every split dimension: "
                                    + ", ".join(map(str, ok)))


def _positive(field: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"must be a positive integer, got {v!r}", field=field,
                        fix=f"give {field} as an integer >= 1")
