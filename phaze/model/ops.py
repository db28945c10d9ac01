"""Operator and layer-graph data types shared by every stage.

An `Op` is one operator of one pass (forward or backward) of one layer, as it runs on ONE
device of a tensor-parallel group of width t (all sizes are per-device shards). Ops of a
pass form a DAG through `deps` (names of ops of the same pass).

A `LayerGraph` is one distinct layer kind (prologue, a transformer block, epilogue) with
its forward and backward op lists, repeated `repeat` times in the model. A `ModelGraph`
is the whole model for one (sequence length, microbatch size, TP width, options).

Units: FLOP, bytes, elements. Times are never stored here (the cost model computes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, asdict, replace

from phaze.settings import RECOMPUTE_MODES  # noqa: F401  (re-exported: recompute modes live there)

OP_KINDS = ("gemm", "vector", "collective")
PASSES = ("fwd", "bwd")
COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather")


@dataclass(frozen=True)
class GemmDims:
    """C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]; FLOP = 2 * batch * m * n * k."""

    batch: int
    m: int
    n: int
    k: int

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k


@dataclass(frozen=True)
class Op:
    name: str                      # unique within its pass, e.g. "attn.qkv" or "attn.qkv.dW"
    kind: str                      # one of OP_KINDS
    deps: tuple[str, ...] = ()     # ops of the same pass that must finish before this one
    flops: float = 0.0             # FLOP on one device
    bytes_read: float = 0.0        # bytes read from memory (inputs + weights), one device
    bytes_written: float = 0.0     # bytes written (outputs), one device
    gemm: GemmDims | None = None   # set iff kind == "gemm"
    vclass: str = ""               # vector op class: layernorm, rmsnorm, softmax, gelu, ...
    elements: int = 0              # elements produced by a vector op (cost driver)
    collective: str = ""           # one of COLLECTIVES iff kind == "collective"
    group: str = ""                # communicator of a collective: "tp"
    comm_bytes: float = 0.0        # payload of a collective per device (full tensor bytes)
    param_bytes: float = 0.0       # weight bytes owned by this op on one device
    saved_bytes: float = 0.0       # bytes this op keeps for backward (no recomputation)
    selective_drop: float = 0.0    # part of saved_bytes selective recomputation drops
    tp_rule: str = "replicated"    # column | row | vocab | replicated | sharded (SP)
    fused: tuple[str, ...] = ()    # vector epilogues fused into this GEMM (runs on TC + VC)
    # forward op that selective recomputation re-runs before the backward (Korthikanti et
    # al., MLSys'23 Section 5: the attention core QK^T, softmax, its dropout, attention x V)
    selective_recompute: bool = False
    # routed-expert op of an MoE block ("moe.expert.*"): the GEMM covers the tokens routed to
    # all `experts` experts (m = tokens x top_k, weights = experts x k x n); expert
    # parallelism divides it by the EP width. 0 = not an expert op.
    experts: int = 0
    # a routed-expert GEMM as Transformer Engine's GroupedLinear runs it: `groups` GEMMs
    # (the device's local experts), each of 1/groups of the token slots, which sit in
    # dimension `group_dim` ("m": forward and dX; "k": dW, the slots are its reduction).
    # 0 = costed as one GEMM (the local expert count is unknown: graph built without ep).
    groups: int = 0
    group_dim: str = "m"
    # eager kernels a vector op stands for, each paying the per-kernel overhead (the MoE
    # router's unfused top-k; phaze.model.graph.ROUTE_KERNELS); 0 = one kernel
    kernels: int = 0
    # fused attention op (attn.core / .bwd): its independent (sequence, head) pairs on one
    # device, microbatch x heads / tp; the kernel's work blocks are these x query blocks
    # (phaze.cost.api.flash_efficiency). 0 elsewhere.
    heads: int = 0
    # part of `flops` that re-computes forward work (the fused attention backward's S = Q K^T,
    # FlashAttention-2 Alg. 2): executed, so in hardware FLOPs, not in model FLOPs
    rerun_flops: float = 0.0

    @property
    def core_class(self) -> str:
        """Which cores the op occupies: 'tc', 'vc', 'tc+vc' (fused GEMM) or 'net'."""
        if self.kind == "gemm":
            return "tc+vc" if self.fused else "tc"
        if self.kind == "vector":
            return "vc"
        return "net"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["deps"] = list(self.deps)
        d["fused"] = list(self.fused)
        return d


@dataclass(frozen=True)
class LayerGraph:
    kind: str                      # "prologue" | "block" | "epilogue" (or a block variant)
    repeat: int                    # how many times this layer occurs in the model
    fwd: tuple[Op, ...]
    bwd: tuple[Op, ...]
    param_count: int               # parameters of one instance, one device shard
    param_bytes: float             # their bytes in the training dtype
    # activation bytes one instance keeps for backward, one device, one microbatch,
    # keyed by recomputation mode ("none", "selective", "full")
    activation_bytes: dict[str, float] = field(default_factory=dict)
    input_bytes: float = 0.0       # bytes of the activation entering the layer (p2p payload)
    output_bytes: float = 0.0      # bytes of the activation leaving it
    # part of param_bytes that is a copy of weights another layer owns (tied LM head /
    # embedding): count it once when both layers sit on the same device
    shared_param_bytes: float = 0.0
    # keys of this block's sliding attention window over the whole sequence (0: none, or a
    # window not shorter than the sequence); context parallelism's core steps
    # (graph.cp_core_steps) depend on it
    attention_window: int = 0

    def ops(self, pass_: str) -> tuple[Op, ...]:
        return self.fwd if pass_ == "fwd" else self.bwd

    def expert_param_bytes(self) -> float:
        """Bytes of the routed experts' weights in param_bytes (Op.experts > 0): every
        expert's TP shard. Expert parallelism keeps 1/ep of them on a device
        (device_param_bytes)."""
        return float(sum(o.param_bytes for o in self.fwd if o.experts))

    def device_param_bytes(self, ep: int = 0) -> float:
        """param_bytes one device holds under expert parallelism of size ep (<= 1: all
        experts, as param_bytes): the routed experts' part divided by ep."""
        if ep <= 1:
            return float(self.param_bytes)
        return float(self.param_bytes) - self.expert_param_bytes() * (1.0 - 1.0 / ep)

    def flops(self, pass_: str) -> float:
        return sum(o.flops for o in self.ops(pass_))

    def selective_recompute_ops(self) -> tuple[Op, ...]:
        """The forward ops selective recomputation re-runs, as a DAG of their own (deps on
        ops outside the set dropped: those inputs are kept from the forward pass)."""
        keep = {o.name for o in self.fwd if o.selective_recompute}
        return tuple(replace(o, deps=tuple(d for d in o.deps if d in keep))
                     for o in self.fwd if o.name in keep)


# the eager attention ops whose work scales with queries x keys (scores, their soft cap,
# softmax, dropout on the probabilities, probabilities x V)
_QUERY_KEY_OPS = ("scores", "softcap", "softmax", "dropout", "context")


def is_attention_core(op) -> bool:
    """The ops of the attention core, the part whose work scales with queries x keys (what a
    context-parallel ring step repeats): flash `attn.core`, or eager `attn.scores`,
    `attn.softcap`, `attn.softmax`, `attn.dropout` and `attn.context`, and their backward
    ops."""
    parts = op.name.split(".")
    return (op.name.split(".bwd")[0].endswith("attn.core")
            or (parts[0] == "attn" and len(parts) > 1 and parts[1] in _QUERY_KEY_OPS))


@dataclass(frozen=True)
class ModelGraph:
    model: str
    seq: int
    mbs: int
    tp: int
    sequence_parallel: bool
    fused: bool
    dtype_bytes: int
    layers: tuple[LayerGraph, ...]  # prologue, block kinds (runs of equal blocks), epilogue, in model order
    params_total: int               # whole model, all shards
    attention: str = "eager"        # eager | flash (phaze.model.graph.ATTENTION)
    vocab_pad_multiple: int = 1     # Megatron's make-vocab-size-divisible-by (x t); 1 = none
    unfused_bias: bool = False      # eager bias kernels (phaze.model.graph.build_graph)
    apex_layernorm: bool = False    # two-pass LayerNorm backward (build_graph)
    cp: int = 1                     # context-parallel size: ops are for seq / cp tokens
    kv_bytes: float = 0.0           # K and V of one device's seq / cp chunk per microbatch
    # Q and the attention output O of that chunk (what an all-to-all CP, Ulysses, moves
    # beside K and V; build_graph's _qo_bytes); 0 in graphs saved before they were recorded
    q_bytes: float = 0.0
    o_bytes: float = 0.0
    expert_tp: int = 0              # expert tensor-parallel size (MoE); 0 = tp
    moe_experts: int = 0            # routed experts per MoE block (0: dense)
    moe_top_k: int = 0              # experts each token is routed to
    ep: int = 0                     # expert-parallel size its expert GEMMs were split for (0: none)
    moe_dispatcher: str = "alltoall"  # Megatron-Core token dispatcher it was built for
    moe_router_fusion: bool = False   # --moe-router-fusion: fused top-k routing kernels
    moe_router_load_balancing_type: str = "none"   # its load-balancing loss's kernels
    moe_router_force_load_balancing: bool = False  # routing on random logits (benchmarks)
    # Megatron-Core token dropping it was built for (graph.routed_slots): the capacity
    # factor (None: dropless) and whether each expert's input is padded to its capacity
    moe_expert_capacity_factor: float | None = None
    moe_pad_expert_input_to_capacity: bool = False
    # model FLOPs per executed FLOP of its routed-expert ops (Op.experts > 0): the T x top_k
    # slots Megatron's num_floating_point_operations counts over the slots token dropping
    # computes (dropped or padded); 1 dropless
    moe_model_flops_ratio: float = 1.0

    @property
    def collective_groups(self) -> dict[str, int]:
        """Sizes of the communicators the ops' collectives name (Op.group)."""
        return {"tp": self.tp, "etp": self.expert_tp or self.tp}

    @property
    def tokens_per_device(self) -> int:
        """Sequence positions one device's ops process (seq / cp)."""
        return self.seq // self.cp

    @property
    def n_layers(self) -> int:
        """Layers in model order once repeats are expanded."""
        return sum(layer.repeat for layer in self.layers)

    def expanded(self) -> list[LayerGraph]:
        """Layer graphs in model order, one entry per layer instance (the DP's chain)."""
        out: list[LayerGraph] = []
        for layer in self.layers:
            out.extend([layer] * layer.repeat)
        return out

    def flops(self, pass_: str) -> float:
        """FLOP of one microbatch on one device (sum over layer instances)."""
        return sum(layer.flops(pass_) * layer.repeat for layer in self.layers)
