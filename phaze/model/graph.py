"""Training operator graphs: ModelSpec + (seq, microbatch, TP width, options) -> ModelGraph.

Each layer kind (prologue, transformer block, epilogue) is first written as a forward
dataflow of nodes (GEMM, vector op, collective, or a node that is the identity in the
forward pass such as Megatron's `f`). The backward pass is derived from that dataflow:

- a GEMM C = A @ B becomes two GEMMs, dA = dC @ B^T (".dX") and dB = A^T @ dC (".dW");
  for a linear layer B is the weight, so ".dW" is the weight gradient;
- a vector op becomes one backward vector op (vclass + "_bwd");
- a collective becomes its Megatron conjugate (Shoeybi et al. 2019, Korthikanti et al.
  2023): all-reduce (g) <-> identity (f), all-gather <-> reduce-scatter;
- a tensor consumed by several ops gets a gradient-accumulation add (".gacc").

Sizes are per device of a tensor-parallel group of width t (Megatron column/row sharding
of attention and MLP, vocabulary-parallel embedding and LM head; with sequence
parallelism the norms, dropouts and residual adds work on s/t tokens).

Saved bytes follow Korthikanti et al. (MLSys 2023, Sec. 4): each op records the tensors
its backward needs (inputs kept in the training dtype, dropout masks at 1 byte/element),
a tensor shared by several ops counted once. A block then keeps
s b h (34 + 5 a s / h) bytes without parallelism.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from phaze.model.ops import GemmDims, LayerGraph, ModelGraph, Op
from phaze.model.spec import ModelSpec

# FLOP per produced element of vector ops (forward, backward). Rough operation counts of
# the usual kernels; they matter only for roofline estimates (GEMMs dominate).
VECTOR_FLOPS = {
    "layernorm": (8, 16), "rmsnorm": (5, 10), "softmax": (5, 4), "dropout": (2, 1),
    "gelu": (10, 14), "relu": (1, 1), "relu2": (2, 3), "swiglu": (6, 10), "add": (1, 0), "rope": (3, 3),
    "embedding": (1, 1), "cross_entropy": (5, 2), "tanh": (5, 3), "geglu": (11, 16),
    "silu": (5, 8), "sigmoid": (5, 3), "permute": (1, 1),
    # DeepSeek-V3's router on its fp32 logits, per expert score: sigmoid (5), the correction
    # bias (1), each group's top-2 sum (~2), the group mask (1), top-k over the kept scores
    # (~3); backward: the sigmoid's gradient at the chosen experts (3)
    "sigmoid_topk": (12, 3),
    # Mamba-2 (graph._mamba): dt softplus + dA cumsum per head, the inter-chunk state
    # recurrence (one multiply-add per state element); causal_conv1d: _Node.vflops (K taps)
    "ssd_cumsum": (8, 8), "ssd_state_passing": (2, 4),
    # gpt-oss: swiglu's work plus two clamps and the + 1 on up (forward), the clamp masks (backward)
    "clamped_swiglu": (9, 13), "copy": (0, 0),
}
# element-wise classes a GEMM can absorb as its epilogue (the reference's TC+VC ops)
FUSABLE = {"gelu", "relu", "relu2", "silu", "swiglu", "geglu", "clamped_swiglu", "dropout", "add",
           "rope", "tanh", "gelu_bwd", "relu_bwd", "relu2_bwd", "silu_bwd", "swiglu_bwd", "geglu_bwd",
           "clamped_swiglu_bwd", "dropout_bwd", "rope_bwd", "tanh_bwd"}
# element-wise classes whose Megatron jit kernels add a linear's bias themselves
# (bias-GELU, bias-SwiGLU, bias-dropout-add; Megatron's skip_bias_add)
# (gpt-oss: Megatron-Core's weighted_bias_quick_geglu takes the experts' fc1 bias)
BIAS_ABSORBING = {"gelu", "swiglu", "geglu", "clamped_swiglu", "dropout", "add"}
# vector class of the MoE routing op by spec.router
_ROUTE = {"softmax": "softmax", "sigmoid": "sigmoid_topk"}
# PyTorch kernels (forward, backward) of Megatron-Core's unfused top-k routing, the default
# (moe_router_fusion False, as Megatron-Bridge's library recipes leave it; its performance
# scripts switch it on), moe_utils.topk_routing_with_score_function at Megatron-LM d98e8a64, softmax
# after top-k (moe_router_pre_softmax False: Qwen3 with norm_topk_prob, gpt-oss):
#   forward  torch.topk 1, torch.softmax (fp32) 1, probs.type_as 1, routing_probs =
#            zeros_like + scatter 2, routing_map = zeros_like + .int() + scatter + .bool() 4  = 9
#   backward type_as 1, scatter -> gather 1, softmax 1, topk values -> zeros + scatter 2    = 5
# and the sigmoid path as DeepSeek-V3 runs it (the same function; expert bias, group-limited
# top-k, scaling factor):
#   forward  logits.float 1, sigmoid 1, bias.float + add 2, group_limited_topk (topk, sum,
#            topk, zeros_like + scatter_, expand-reshape copy, .bool + ~, masked_fill, topk)
#            10, gather 1, sum + eps + divide 3, scaling 1, type_as 1, routing_probs
#            zeros_like + scatter 2, routing_map 4                                         = 26
#   backward type_as 1, scatter -> gather 1, scaling 1, the normalisation's quotient rule 4
#            (divide, its denominator's gradient, sum, add), gather -> zeros + scatter_add
#            2, sigmoid 1, float -> bf16 1, the gradient's accumulation 2                = 13
ROUTE_KERNELS = {"softmax": (9, 5), "sigmoid": (26, 13)}
# Megatron-Core --moe-router-load-balancing-type values phaze models: settings.MOE_LOAD_BALANCING
# Kernels (forward, backward) the load-balancing loss adds to an MoE layer while training
# (router.py _apply_aux_loss / _apply_seq_aux_loss and moe_utils.py at Megatron-Core
# core_r0.18.0), beside its routing scores over all experts (one fused kernel per pass with
# --moe-router-fusion, TE fused_score_for_moe_aux_loss; the eager routing kernels of
# ROUTE_KERNELS otherwise):
#   forward  routing_map.sum 1, the loss 1 (TE fused_moe_aux_loss), the metrics tracker's
#            aux / coeff and indexed += 2                                               = 4
#   backward MoEAuxLossAutoScaler's ones_like x scale 2, the loss's backward 1          = 3
# global_aux_loss also keeps a running mean of the counts (+=, the step count's += and a
# divide: 3 more forward). Its tokens-per-expert all-reduce (E int64; over TP x CP,
# global_aux_loss: TP x DP x CP) is not counted.
AUX_LOSS_KERNELS = {"aux_loss": (4, 3), "seq_aux_loss": (4, 3), "global_aux_loss": (7, 3)}
# --moe-router-force-load-balancing (Megatron-Bridge's benchmark setting): the router's
# logits replaced by random ones, logits.clone().normal_(); identity backward
FORCE_BALANCE_KERNELS = (2, 0)
MASK_BYTES = 1      # dropout mask, one byte per element (Korthikanti)
LOGIT_BYTES = 4     # cross-entropy keeps fp32 logits (Korthikanti Sec. 4.3)
TOKEN_ID_BYTES = 8  # int64 token ids
# Megatron-Core --moe-token-dispatcher-type values phaze models: "alltoall" (one copy per
# routed slot, sorted by local expert on arrival) and "flex" (DeepEP / HybridEP: one copy
# per remote node, permuted on arrival)
MOE_DISPATCHERS = ("alltoall", "flex")
# what check_token_drop calls the token-drop settings by default: build_graph's parameters
TOKEN_DROP_NAMES = {"factor": "moe_expert_capacity_factor",
                    "pad": "moe_pad_expert_input_to_capacity", "dispatcher": "moe_dispatcher"}
# ... and the flags of `phaze evaluate` and `phaze graph` (Megatron-Core's names)
TOKEN_DROP_FLAGS = {"factor": "--moe-expert-capacity-factor",
                    "pad": "--moe-pad-expert-input-to-capacity",
                    "dispatcher": "--moe-token-dispatcher"}


def routed_slots(tokens: int, top_k: int, experts: int, capacity_factor: float | None = None,
                 pad: bool = False) -> int:
    """Routed token slots (rows of width h) one device permutes, sends over EP and feeds to
    the experts for the `tokens` its router sees, under balanced routing (phaze's
    assumption: Megatron-Core's benchmarks force-balance the router).

    capacity_factor None (Megatron-Core's default, dropless): tokens x top_k. Otherwise
    each expert takes at most capacity = ceil(tokens x top_k / experts x capacity_factor)
    slots (megatron/core/transformer/moe/moe_utils.py get_capacity, called by
    apply_router_token_dropping over the [tokens, experts] routing map of ONE device's
    router). pad (--moe-pad-expert-input-to-capacity): the alltoall dispatcher permutes,
    sends and computes exactly capacity slots per expert, dropped or padded
    (token_dispatcher.py MoEAlltoAllTokenDispatcher.preprocess with drop_and_pad:
    num_out_tokens = capacity x num_experts): experts x capacity. Without pad: the slots
    the router kept, min(balanced share, capacity) per expert: min(tokens x top_k,
    experts x capacity), tokens x top_k x min(1, capacity_factor) up to rounding (a
    factor below 1 drops slots; at or above 1 nothing drops under balance)."""
    slots = tokens * top_k
    if capacity_factor is None:
        return slots
    capacity = math.ceil(slots / experts * capacity_factor)
    return experts * capacity if pad else min(slots, experts * capacity)


def check_token_drop(spec: ModelSpec, capacity_factor: float | None, pad: bool,
                     dispatcher: str = "alltoall", names: dict | None = None) -> None:
    """UserError unless Megatron-Core's token dropping can run as given and phaze models
    it: pad needs a capacity factor (transformer_config.py: "moe_expert_capacity_factor
    must be set to use moe_pad_expert_input_to_capacity"); the factor must be a finite
    number > 0 (Megatron-Core turns a negative one into None, dropless: give None); an MoE
    model; the alltoall dispatcher (Megatron-Bridge's apply_moe_token_drop asserts it,
    Megatron-Core refuses padding with the flex dispatcher, and phaze's flex cost,
    phaze.cost.collective.dedup_dispatch_time, counts top_k copies of every token, not
    the slots kept). `names`: what the caller calls the settings (keys of
    TOKEN_DROP_NAMES; CLI flags), in the error's field and fix."""
    from phaze.errors import UserError

    n = {**TOKEN_DROP_NAMES, **(names or {})}
    if capacity_factor is None:
        if pad:
            raise UserError("pads each expert's input to its capacity, which needs a capacity "
                            "factor", field=n["pad"],
                            fix=f"add {n['factor']} (1.0 in Megatron-Bridge's token-drop "
                                f"recipes), or drop {n['pad']}")
        return
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float)) \
            or not 0 < capacity_factor < math.inf:
        raise UserError(f"must be a number > 0, got {capacity_factor!r}", field=n["factor"],
                        fix=f"give a positive factor (1.0: each expert takes its balanced "
                            f"share of the token slots), or drop {n['factor']} for dropless MoE")
    if not spec.experts:
        raise UserError(f"{spec.name} is a dense model (no routed experts to drop tokens of)",
                        field=n["factor"], fix=f"drop {n['factor']} and {n['pad']} for a dense "
                                               "model")
    if dispatcher != "alltoall":
        raise UserError(f"token dropping is modelled with the alltoall dispatcher only, not "
                        f"{dispatcher} (Megatron-Core refuses padding to capacity with flex; "
                        "phaze's flex cost counts top_k copies of every token)",
                        field=n["factor"],
                        fix=f"use {n['dispatcher']} alltoall, or drop {n['factor']}")


@dataclass
class _Node:
    name: str
    inputs: tuple[str, ...]            # producer node names; "in" = the layer's input
    in_bytes: tuple[float, ...]        # bytes of each input tensor (one device)
    out_bytes: float
    out_elements: int
    kind: str                          # gemm | vector | collective | identity
    bwd: str                           # gemm_linear | gemm_act | vector | pass | pass_leaf | leaf | collective
    vclass: str = ""
    gemm: GemmDims | None = None
    b_bytes: float = 0.0               # bytes of the GEMM's B operand (weight or activation)
    collective: str = ""
    bwd_collective: str = ""           # conjugate collective in backward ("" = identity)
    comm_bytes: float = 0.0
    params_dev: int = 0                # parameters resident on one device
    params_unique: int = 0             # parameters of the whole model this node owns (all shards)
    params_shared: int = 0             # resident parameters that are a copy of another layer's (tied)
    bias_n: int = 0                    # bias length of a linear (its gradient comes out of .dW)
    saved: float = 0.0                 # bytes kept for backward
    selective_drop: float = 0.0        # part of `saved` that selective recomputation drops
    tp_rule: str = "replicated"
    accumulate: bool = True            # several consumers -> a gradient add (False: disjoint slices)
    regather: float = 0.0              # SP: all-gather the input again in backward (bytes) for .dW
    selective: bool = False            # re-run by selective recomputation (attention core)
    experts: int = 0                   # routed-expert GEMM spanning this many experts (MoE)
    group: str = "tp"                  # communicator of a collective: tp | etp (expert TP)
    fused_fwd: tuple[str, ...] = ()    # vector classes inside a fused kernel (flash attention)
    flash_dims: tuple[int, int] = (0, 0)  # flash with value heads narrower/wider than q/k: (d_qk, d_v)
    flash_heads: int = 0               # flash: (sequence, head) pairs on the device (Op.heads)
    vflops: tuple[float, float] = ()   # vector op FLOP per element (fwd, bwd); () = VECTOR_FLOPS
    kernels: tuple[int, int] = (0, 0)  # eager kernels of a vector op (fwd, bwd); 0 = one (Op.kernels)


class _Layer:
    """Forward dataflow of one layer kind, turned into forward and backward op lists."""

    def __init__(self, dt: int, tp: int, etp: int = 0, local_experts: int = 0):
        self.dt = dt
        self.tp = tp
        self.local_experts = local_experts   # routed experts one device holds (0: unknown)
        self.group_size = {"tp": tp, "etp": etp or tp}
        self.unfused_bias = False      # eager linears: bias add and bias gradient as kernels
        self.apex_layernorm = False    # LayerNorm backward as apex's MixedFusedLayerNorm
        self.nodes: dict[str, _Node] = {}
        self.out_of: dict[str, float] = {"in": 0.0}

    def add(self, node: _Node) -> str:
        assert node.name not in self.nodes and node.name != "in", node.name
        for p in node.inputs:
            assert p == "in" or p in self.nodes, (node.name, p)
        self.nodes[node.name] = node
        return node.name

    # --- node helpers ------------------------------------------------------------
    def linear(self, name, x, tokens, k, n, *, rule, bias, saved, unique=None, shared=0, regather=0.0,
               experts=0):
        """Y[tokens, n] = X[tokens, k] @ W[k, n] (+ bias), k and n already per-device shards.
        experts > 0: a grouped GEMM of routed experts, `tokens` routed token slots in all,
        each expert owning its own W[k, n] (and bias)."""
        dt = self.dt
        w = k * n * max(experts, 1)
        b = n * max(experts, 1) if bias else 0
        params_dev = w + b
        # the weights the GEMMs read (and their gradients the dW GEMMs write): a routed
        # linear's local experts only when the expert-parallel size is known (E / ep of
        # them; params_dev keeps all E, which expert_parallel_chain shards for memory)
        held = self.local_experts if experts and self.local_experts else max(experts, 1)
        if unique is None:  # whole model: column/vocab shard weight and bias, row the weight only
            unique = {"column": params_dev * self.tp, "vocab": params_dev * self.tp,
                      "row": w * self.tp + b}.get(rule, params_dev)
        return self.add(_Node(
            name=name, inputs=(x,), in_bytes=(tokens * k * dt,), out_bytes=tokens * n * dt,
            out_elements=tokens * n, kind="gemm", bwd="gemm_linear", gemm=GemmDims(1, tokens, n, k),
            b_bytes=k * n * held * dt, params_dev=params_dev, params_unique=unique,
            params_shared=shared,
            bias_n=b, saved=saved, tp_rule=rule, regather=regather, experts=experts))

    def flash(self, name, inputs, in_bytes, *, batch, s, keys, d, saved, selective_drop, dv=0,
              dropout=False):
        """Fused attention O = softmax(Q K^T) V (FlashAttention, Dao et al. 2022): one kernel,
        two GEMMs of batch x s x keys x d, the s x keys probabilities never leave on-chip
        memory. Expressed as one gemm op of batch 2 x `batch` (FLOP = 4 batch s keys d).
        dv != d (MLA: q/k heads of d, value heads of dv): one gemm op of batch `batch` and
        depth d + dv (FLOP = 2 batch s keys (d + dv): Q K^T plus P V); the output is dv wide.
        dropout: attention dropout inside the kernel (its fused classes name it: the
        forward draws a random number per score, the backward draws them again; no mask
        leaves the kernel)."""
        dv = dv or d
        gemm = GemmDims(2 * batch, s, keys, d) if dv == d else GemmDims(batch, s, keys, d + dv)
        return self.add(_Node(
            name=name, inputs=tuple(inputs), in_bytes=tuple(in_bytes), out_bytes=batch * s * dv * self.dt,
            out_elements=batch * s * keys, kind="gemm", bwd="flash", gemm=gemm,
            saved=saved, selective_drop=selective_drop, tp_rule="column",
            fused_fwd=("softmax", "dropout") if dropout else ("softmax",),
            flash_dims=(0, 0) if dv == d else (d, dv), flash_heads=batch))

    def bmm(self, name, a, b, *, batch, m, n, k, a_bytes, b_bytes, saved, selective_drop=0.0):
        return self.add(_Node(
            name=name, inputs=(a, b), in_bytes=(a_bytes, b_bytes), out_bytes=batch * m * n * self.dt,
            out_elements=batch * m * n, kind="gemm", bwd="gemm_act", gemm=GemmDims(batch, m, n, k),
            b_bytes=b_bytes, saved=saved, selective_drop=selective_drop, tp_rule="column"))

    def vector(self, name, inputs, vclass, elements, *, in_bytes=None, out_bytes=None, saved=0.0,
               rule="replicated", bwd="vector", params=0, unique=None, selective_drop=0.0,
               accumulate=True, flops=(), kernels=(0, 0)):
        dt = self.dt
        if in_bytes is None:
            in_bytes = tuple(elements * dt for _ in inputs)
        return self.add(_Node(
            name=name, inputs=tuple(inputs), in_bytes=tuple(in_bytes),
            out_bytes=elements * dt if out_bytes is None else out_bytes, out_elements=elements,
            kind="vector", bwd=bwd, vclass=vclass, params_dev=params,
            params_unique=params if unique is None else unique, saved=saved,
            selective_drop=selective_drop, tp_rule=rule, accumulate=accumulate, vflops=tuple(flops),
            kernels=tuple(kernels)))

    def collective(self, name, x, coll, bwd_coll, full_bytes, in_b, out_b, rule="replicated",
                   group="tp"):
        return self.add(_Node(
            name=name, inputs=(x,), in_bytes=(in_b,), out_bytes=out_b, out_elements=int(out_b // self.dt),
            kind="collective", bwd="collective", collective=coll, bwd_collective=bwd_coll,
            comm_bytes=full_bytes, tp_rule=rule, group=group))

    def identity(self, name, x, bwd_coll, full_bytes, rule="replicated"):
        """Megatron's f: identity forward, `bwd_coll` (all-reduce) on the gradient."""
        return self.add(_Node(
            name=name, inputs=(x,), in_bytes=(full_bytes,), out_bytes=full_bytes,
            out_elements=int(full_bytes // self.dt), kind="identity", bwd="collective",
            bwd_collective=bwd_coll, comm_bytes=full_bytes, tp_rule=rule))

    # --- passes ---------------------------------------------------------------------
    def forward_ops(self) -> list[Op]:
        ops = []
        biased: dict[str, str] = {}   # tensor -> the separate bias-add op on it (unfused_bias)
        # where each unabsorbed bias is added: after the linear, or after the collective
        # that reduces a row-parallel linear's output (on that collective's output)
        anchors = {self._bias_anchor(n): n for n in self.nodes.values() if self._bias_kernel(n)}
        for n in self.nodes.values():
            if n.kind == "identity":
                continue
            deps = tuple(biased.get(d, d) for d in self._fwd_deps(n))
            common = dict(name=n.name, deps=deps, bytes_read=sum(n.in_bytes) + _wbytes(n, self.dt),
                          bytes_written=n.out_bytes, param_bytes=n.params_dev * self.dt,
                          saved_bytes=n.saved, selective_drop=n.selective_drop,
                          tp_rule=n.tp_rule, selective_recompute=n.selective)
            if n.kind == "gemm" and n.bwd == "flash":
                ops.append(Op(kind="gemm", flops=n.gemm.flops, gemm=n.gemm, fused=n.fused_fwd,
                              elements=n.out_elements, heads=n.flash_heads,
                              **{**common, "bytes_read": sum(n.in_bytes)}))
            elif n.kind == "gemm":
                bread = n.in_bytes[0] + n.b_bytes + n.bias_n * self.dt
                ops.append(Op(kind="gemm", flops=n.gemm.flops, gemm=n.gemm, experts=n.experts,
                              groups=self._groups(n), **{**common, "bytes_read": bread}))
            elif n.kind == "vector":
                if n.vclass == "embedding":  # a gather reads only the rows it looks up
                    common["bytes_read"] = sum(n.in_bytes) + n.out_bytes
                elif n.vclass == "dropout":  # writes its output and the mask it keeps
                    common["bytes_written"] = n.out_bytes + n.out_elements * MASK_BYTES
                ops.append(Op(kind="vector", vclass=n.vclass, elements=n.out_elements,
                              flops=float((n.vflops or VECTOR_FLOPS[n.vclass])[0] * n.out_elements),
                              kernels=n.kernels[0], **common))
            else:
                ops.append(Op(kind="collective", collective=n.collective, group=n.group,
                              comm_bytes=n.comm_bytes, **common))
            if n.name in anchors:
                lin = anchors[n.name]
                b = f"{lin.name}.bias"
                ops.append(Op(name=b, kind="vector", deps=(n.name,), vclass="bias",
                              elements=n.out_elements, flops=float(n.out_elements),
                              bytes_read=n.out_bytes + lin.bias_n * self.dt,
                              bytes_written=n.out_bytes, tp_rule=n.tp_rule))
                biased[n.name] = b
        return ops

    def _groups(self, n: _Node) -> int:
        """GEMMs a routed-expert linear launches per pass: one per local expert (Op.groups)."""
        return self.local_experts if n.experts else 0

    def _bias_anchor(self, n: _Node) -> str:
        """The node after whose output a linear's own bias kernel runs: the linear, or the
        collective reducing a row-parallel linear's output (Megatron adds the bias after
        the all-reduce / reduce-scatter)."""
        users = [m for m in self.nodes.values() if n.name in m.inputs]
        if len(users) == 1 and users[0].kind == "collective":
            return users[0].name
        return n.name

    def _bias_kernel(self, n: _Node) -> bool:
        """With unfused_bias, a biased linear whose bias no consumer absorbs gets a bias-add
        kernel of its own (Megatron-LM's eager linears: PyTorch matmul then `+ bias`; the
        bias of a linear feeding bias-GELU or bias-dropout-add is added inside those jit
        kernels, Megatron's skip_bias_add)."""
        if not (self.unfused_bias and n.bias_n and n.kind == "gemm" and n.bwd == "gemm_linear"):
            return False
        users = self._users_past_collectives(n.name)
        return not users or any(m.kind != "vector" or m.vclass not in BIAS_ABSORBING for m in users)

    def _users_past_collectives(self, name: str) -> list[_Node]:
        """Nodes consuming `name`'s output, looking through TP collectives (a row-parallel
        linear's bias is added after its all-reduce / reduce-scatter)."""
        out: list[_Node] = []
        for m in self.nodes.values():
            if name in m.inputs:
                out += (self._users_past_collectives(m.name)
                        if m.kind in ("collective", "identity") else [m])
        return out

    def _fwd_deps(self, n: _Node) -> tuple[str, ...]:
        out: list[str] = []
        for p in n.inputs:
            for d in self._resolve(p):
                if d not in out:
                    out.append(d)
        return tuple(out)

    def _resolve(self, p: str) -> list[str]:
        if p == "in":
            return []
        node = self.nodes[p]
        if node.kind == "identity":
            r: list[str] = []
            for q in node.inputs:
                r += self._resolve(q)
            return r
        return [p]

    def backward_ops(self) -> list[Op]:
        """Walk the forward dataflow backwards: for each node, gather its output gradient
        (`_grad_ready`), emit its backward ops (`_bwd_*` by node.bwd) and record, per input,
        which op produced that input's gradient contribution."""
        st = _BwdState()
        for name in reversed(list(self.nodes)):
            n = self.nodes[name]
            gr = self._grad_ready(st, name, n.out_elements, n.accumulate)
            per_input = getattr(self, f"_bwd_{n.bwd}")(st, n, gr)
            for p, c in zip(n.inputs, per_input):
                if c is not None:
                    st.contrib[p].append(c)
        # the gradient of the layer input (sent to the previous layer) must be complete
        self._grad_ready(st, "in", int(self.out_of.get("in_elements", 0)), True)
        return st.ops

    def _grad_ready(self, st: "_BwdState", name: str, elements: int, accumulate: bool) -> tuple[str, ...]:
        """Ops after which the gradient of `name`'s output is complete; several
        contributions to one tensor are summed by a `.gacc` add (not for disjoint slices)."""
        cs = st.contrib.get(name, [])
        if not cs:
            return ()
        if len(cs) == 1:
            return cs[0]
        union: list[str] = []
        for c in cs:
            union += [d for d in c if d not in union]
        if not accumulate:
            return tuple(union)
        g = f"{'input' if name == 'in' else name}.gacc"
        dt = self.dt
        st.ops.append(Op(name=g, kind="vector", deps=tuple(union), vclass="add", elements=elements,
                         flops=float((len(cs) - 1) * elements), bytes_read=len(cs) * elements * dt,
                         bytes_written=elements * dt))
        return (g,)

    def _bwd_gemm_linear(self, st, n: "_Node", gr):
        """Linear Y = X W: dX = dY W^T and dW = X^T dY (bias gradient folded into .dW)."""
        g, dt = n.gemm, self.dt
        dx = Op(name=f"{n.name}.dX", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.m, g.k, g.n),
                flops=g.flops, bytes_read=n.out_bytes + n.b_bytes, bytes_written=n.in_bytes[0],
                tp_rule=n.tp_rule, experts=n.experts, groups=self._groups(n))
        wdeps = gr
        if n.regather:  # SP keeps only the shard of the input: gather it again for .dW
            rg = f"{n.inputs[0]}.regather"
            if rg not in st.regathered:
                st.regathered.add(rg)
                st.ops.append(Op(name=rg, kind="collective", collective="all_gather", group="tp",
                                 comm_bytes=n.regather, bytes_read=n.regather / self.tp,
                                 bytes_written=n.regather, tp_rule="sharded"))
            wdeps = gr + (rg,)
        eager_bias = self.unfused_bias and n.bias_n > 0
        dw = Op(name=f"{n.name}.dW", kind="gemm", deps=wdeps, gemm=GemmDims(g.batch, g.k, g.n, g.m),
                flops=g.flops, bytes_read=n.in_bytes[0] + n.out_bytes,
                bytes_written=n.b_bytes + (0 if eager_bias else n.bias_n * dt), tp_rule=n.tp_rule,
                experts=n.experts, groups=self._groups(n), group_dim="k")
        st.ops += [dx, dw]
        if eager_bias:   # PyTorch's sum of dY over the tokens, a reduction kernel of its own
            st.ops.append(Op(name=f"{n.name}.dbias", kind="vector", deps=gr, vclass="bias_bwd",
                             elements=n.out_elements, flops=float(n.out_elements),
                             bytes_read=n.out_bytes, bytes_written=n.bias_n * dt,
                             tp_rule=n.tp_rule))
        return [(dx.name,)]

    def _bwd_gemm_act(self, st, n: "_Node", gr):
        """Activation x activation product C = A B: dA = dC B^T, dB = A^T dC."""
        g = n.gemm
        da = Op(name=f"{n.name}.dX", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.m, g.k, g.n),
                flops=g.flops, bytes_read=n.out_bytes + n.in_bytes[1], bytes_written=n.in_bytes[0],
                tp_rule=n.tp_rule)
        db = Op(name=f"{n.name}.dW", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.k, g.n, g.m),
                flops=g.flops, bytes_read=n.in_bytes[0] + n.out_bytes, bytes_written=n.in_bytes[1],
                tp_rule=n.tp_rule)
        st.ops += [da, db]
        return [(da.name,), (db.name,)]

    def ssd_gemm(self, name, inputs, in_bytes, gemm: GemmDims, out_bytes, *, saved=0.0):
        """One tensor-core GEMM of Mamba-2's chunked SSD scan (a Triton kernel of mamba_ssm:
        bmm_chunk, chunk_state, chunk_scan), batch x m x n x k, operands from several
        producers (`in_bytes[0]` the A operand, the rest B and what the kernel scales by)."""
        return self.add(_Node(
            name=name, inputs=tuple(inputs), in_bytes=tuple(in_bytes), out_bytes=out_bytes,
            out_elements=gemm.batch * gemm.m * gemm.n, kind="gemm", bwd="ssd", gemm=gemm,
            b_bytes=sum(in_bytes[1:]), saved=saved, tp_rule="column"))

    def _bwd_ssd(self, st, n: "_Node", gr):
        """An SSD GEMM C = A B in backward: dA = dC B^T and dB = A^T dC (each of the forward's
        FLOPs; the fused backward kernels of mamba_ssm compute the gradients of every operand
        from them, so each input's gradient waits for both)."""
        g = n.gemm
        da = Op(name=f"{n.name}.dX", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.m, g.k, g.n),
                flops=g.flops, bytes_read=n.out_bytes + n.b_bytes, bytes_written=n.in_bytes[0],
                tp_rule=n.tp_rule)
        db = Op(name=f"{n.name}.dW", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.k, g.n, g.m),
                flops=g.flops, bytes_read=n.in_bytes[0] + n.out_bytes, bytes_written=n.b_bytes,
                tp_rule=n.tp_rule)
        st.ops += [da, db]
        return [(da.name, db.name)] * len(n.inputs)

    def _bwd_flash(self, st, n: "_Node", gr):
        """Fused attention backward (FlashAttention-2, Dao 2023, Alg. 2): recomputes the
        scores S = Q K^T from the saved Q, K and log-sum-exp, then dV = P^T dO, dP = dO V^T,
        dQ = dS K, dK = dS^T Q: five GEMMs of the forward's shape (forward: two)."""
        g = n.gemm
        if n.flash_dims[0]:   # d_qk != d_v: S and dQ, dK are d_qk deep, dV and dP d_v deep
            d, dv = n.flash_dims
            bg = GemmDims(g.batch, g.m, g.n, 3 * d + 2 * dv)
            rerun = bg.flops * d / (3 * d + 2 * dv)
        else:
            bg = GemmDims(5 * (g.batch // 2), g.m, g.n, g.k)
            rerun = bg.flops / 5
        op = Op(name=f"{n.name}.bwd", kind="gemm", deps=gr, gemm=bg, rerun_flops=rerun,
                flops=bg.flops, bytes_read=sum(n.in_bytes) + 2 * n.out_bytes + n.saved,
                bytes_written=sum(n.in_bytes), tp_rule=n.tp_rule,
                fused=("softmax_bwd",) + (("dropout_bwd",) if "dropout" in n.fused_fwd else ()),
                elements=n.out_elements, heads=n.flash_heads)
        st.ops.append(op)
        return [(op.name,)] * len(n.inputs)

    def _bwd_vector(self, st, n: "_Node", gr):
        op = self._vector_bwd_op(st, n, gr)
        return [(op.name,)] * len(n.inputs)

    def _bwd_leaf(self, st, n: "_Node", gr):
        self._vector_bwd_op(st, n, gr)
        return [None] * len(n.inputs)

    def _bwd_pass_leaf(self, st, n: "_Node", gr):
        self._vector_bwd_op(st, n, gr)
        return [gr] * len(n.inputs)

    def _vector_bwd_op(self, st, n: "_Node", gr) -> Op:
        """One backward vector op `NAME.bwd` (vclass `<class>_bwd`); `leaf` and `pass_leaf`
        nodes (embeddings) only produce their parameters' gradient."""
        dt = self.dt
        bread = n.out_bytes + sum(n.in_bytes) + n.params_dev * dt
        bwritten = (sum(n.in_bytes) if n.bwd == "vector" else 0.0) + n.params_dev * dt
        if n.vclass == "dropout":
            bread = n.out_bytes + n.out_elements * MASK_BYTES
        elif n.vclass == "permute" and len(n.inputs) == 1:
            bread = n.out_bytes    # a copy by index (moe.sort_chunks): the gradient only
        elif n.vclass == "embedding":  # scatter-add of the touched rows
            bread = n.out_bytes + (sum(n.in_bytes) if n.bwd == "leaf" else 0.0)
            bwritten = n.out_bytes
        if self.apex_layernorm and n.vclass == "layernorm":
            # Megatron-LM 2021's fused_mix_prec_layer_norm_cuda (megatron/fused_kernels/
            # layer_norm_cuda_kernel.cu at de7dc40f, apex's MixedFusedLayerNorm):
            # cuComputePartGradGammaBeta reads dy and x in a pass of its own before
            # cuComputeGradInput reads them again for dx (its 16 rows of fp32 partial sums
            # and their tiny reduction kernel are folded into this pass, which writes the
            # gamma and beta gradients)
            dg = Op(name=f"{n.name}.bwd.dgamma", kind="vector", deps=gr,
                    vclass="layernorm_bwd", elements=n.out_elements,
                    flops=float(2 * n.out_elements), bytes_read=2.0 * n.out_bytes,
                    bytes_written=n.params_dev * dt, tp_rule=n.tp_rule)
            st.ops.append(dg)
            gr, bwritten = gr + (dg.name,), bwritten - n.params_dev * dt   # one stream: in order
        op = Op(name=f"{n.name}.bwd", kind="vector", deps=gr, vclass=f"{n.vclass}_bwd",
                elements=n.out_elements,
                flops=float((n.vflops or VECTOR_FLOPS[n.vclass])[1] * n.out_elements),
                bytes_read=bread, bytes_written=bwritten, tp_rule=n.tp_rule, kernels=n.kernels[1])
        st.ops.append(op)
        return op

    def _bwd_pass(self, st, n: "_Node", gr):
        return [gr] * len(n.inputs)

    def _bwd_collective(self, st, n: "_Node", gr):
        """Megatron conjugate of a forward collective (or of the identity f)."""
        if not n.bwd_collective:
            return [gr]
        rd, wr = _coll_bytes(n.bwd_collective, n.comm_bytes, self.group_size[n.group])
        op = Op(name=f"{n.name}.bwd", kind="collective", deps=gr, collective=n.bwd_collective,
                group=n.group, comm_bytes=n.comm_bytes, bytes_read=rd, bytes_written=wr,
                tp_rule=n.tp_rule)
        st.ops.append(op)
        return [(op.name,)]


@dataclass
class _BwdState:
    """What the backward walk has produced so far."""
    ops: list[Op] = field(default_factory=list)
    # tensor (producer node name, "in") -> ops each producing one gradient contribution
    contrib: dict[str, list[tuple[str, ...]]] = field(default_factory=lambda: defaultdict(list))
    regathered: set[str] = field(default_factory=set)


def _wbytes(n: _Node, dt: int) -> float:
    return n.params_dev * dt if n.kind == "vector" else 0.0


def _coll_bytes(coll: str, full: float, t: int) -> tuple[float, float]:
    """(bytes read, bytes written) on one device for a collective of `full` bytes."""
    if coll == "all_gather":
        return full / t, full
    if coll == "reduce_scatter":
        return full, full / t
    return full, full


# --- fusion ---------------------------------------------------------------------------
def fuse_epilogues(ops: list[Op]) -> list[Op]:
    """Merge element-wise ops into the GEMM that produces their input when that GEMM has
    no other consumer: the fused op keeps the GEMM's name, `flops` (== gemm.flops) and
    dims, lists the absorbed vector classes in `fused`, and `elements` counts the
    elements its vector epilogue produces. The intermediate tensor is neither written nor
    read again."""
    ops = list(ops)
    changed = True
    while changed:
        changed = False
        consumers: dict[str, list[str]] = defaultdict(list)
        for o in ops:
            for d in o.deps:
                consumers[d].append(o.name)
        by_name = {o.name: o for o in ops}
        for v in ops:
            if v.kind != "vector" or v.vclass not in FUSABLE:
                continue
            gs = [by_name[d] for d in v.deps if by_name[d].kind == "gemm" and consumers[d] == [v.name]]
            if not gs:
                continue
            g = gs[0]
            deps = list(g.deps) + [d for d in v.deps if d != g.name and d not in g.deps]
            merged = replace(g, deps=tuple(deps), fused=g.fused + (v.vclass,), elements=v.elements,
                             bytes_read=g.bytes_read + v.bytes_read - g.bytes_written,
                             bytes_written=v.bytes_written, saved_bytes=g.saved_bytes + v.saved_bytes,
                             param_bytes=g.param_bytes + v.param_bytes)
            out = []
            for o in ops:
                if o.name == v.name:
                    continue
                if o.name == g.name:
                    o = merged
                elif v.name in o.deps:
                    o = replace(o, deps=tuple(dict.fromkeys(g.name if d == v.name else d for d in o.deps)))
                out.append(o)
            # the fused op must sit after all its deps in list order
            ops = _topo(out)
            changed = True
            break
    return ops


def _topo(ops: list[Op]) -> list[Op]:
    done: set[str] = set()
    out: list[Op] = []
    pending = list(ops)
    while pending:
        rest = []
        for o in pending:
            if all(d in done for d in o.deps):
                out.append(o)
                done.add(o.name)
            else:
                rest.append(o)
        if len(rest) == len(pending):  # pragma: no cover - builder bug
            raise AssertionError("cycle in op graph")
        pending = rest
    return out


# --- the model ------------------------------------------------------------------------
from phaze.settings import ATTENTION_MODES as ATTENTION  # noqa: E402
from phaze.settings import MOE_LOAD_BALANCING  # noqa: E402


class BuiltLayer(NamedTuple):
    """What a layer builder returns: the dataflow and its boundary tensors (bytes, one device)."""
    layer: _Layer
    input_bytes: float     # activation entering the layer (pipeline p2p payload)
    output_bytes: float    # activation leaving it
    full_bytes: float      # what full recomputation keeps (the block input); 0 = not recomputed


@dataclass
class _Ctx:
    spec: ModelSpec
    s: int
    b: int
    t: int
    sp: bool
    dt: int
    attention: str = "eager"
    vocab_pad_multiple: int = 1
    et: int = 0                  # expert tensor-parallel size; 0 = t
    recompute_modules: tuple | None = None   # selective recomputation's modules; None: core
    ep: int = 0                  # expert-parallel size; 0 = not given (expert GEMMs as one)
    recompute_hits: set = field(default_factory=set)   # modules that re-ran something
    moe_dispatcher: str = "alltoall"   # Megatron-Core --moe-token-dispatcher-type
    capacity_factor: float | None = None   # --moe-expert-capacity-factor; None: dropless
    pad_to_capacity: bool = False          # --moe-pad-expert-input-to-capacity
    model_flops_ratio: float = 1.0         # tokens x top_k over slots (ModelGraph's)
    router_fusion: bool = False            # --moe-router-fusion (route_kernels)
    load_balancing: str = "none"           # --moe-router-load-balancing-type (route_kernels)
    force_balance: bool = False            # --moe-router-force-load-balancing (route_kernels)
    cp: int = 1                            # context-parallel size: s is seq / cp

    def slots(self, tokens: int) -> int:
        """Routed slots for the `tokens` one device's router sees (routed_slots); records
        the T x top_k slots Megatron's FLOP count takes over them (model_flops_ratio)."""
        n = routed_slots(tokens, self.spec.top_k, self.spec.experts, self.capacity_factor,
                         self.pad_to_capacity)
        self.model_flops_ratio = tokens * self.spec.top_k / n
        return n

    @property
    def sorts_chunks(self) -> bool:
        """Megatron-Core's alltoall dispatcher sorts the received tokens by local expert
        (and back before the combine) when a device holds more than one
        (MoEAlltoAllTokenDispatcher.dispatch_postprocess / combine_preprocess:
        sort_chunks_by_idxs); flex (DeepEP) permutes once, on the receiving side."""
        return self.moe_dispatcher == "alltoall" and self.local_experts > 1

    @property
    def route_kernels(self) -> tuple[int, int]:
        """(forward, backward) kernels of the routing op: the top-k and scoring, one each
        with Megatron-Core's --moe-router-fusion (Transformer Engine's fused top-k with
        score function), else the eager ones (ROUTE_KERNELS); plus, with a load-balancing
        loss, its scores over all experts (the same count) and AUX_LOSS_KERNELS, and the
        random logits of FORCE_BALANCE_KERNELS. 0 = one kernel (Op.kernels)."""
        one = (1, 1) if self.router_fusion else tuple(
            max(k, 1) for k in ROUTE_KERNELS.get(self.spec.router, (1, 1)))
        f, b = one
        if self.load_balancing != "none":
            lf, lb = AUX_LOSS_KERNELS[self.load_balancing]
            f, b = f + one[0] + lf, b + one[1] + lb
        if self.force_balance:
            f, b = f + FORCE_BALANCE_KERNELS[0], b + FORCE_BALANCE_KERNELS[1]
        return tuple(0 if k == 1 else k for k in (f, b))

    @property
    def local_experts(self) -> int:   # routed experts one device holds (0: ep not given)
        return self.spec.experts // self.ep if self.ep and self.spec.experts else 0

    @property
    def etp(self) -> int:
        return self.et or self.t

    @property
    def T(self) -> int:          # tokens of one microbatch
        return self.s * self.b

    @property
    def Ts(self) -> int:         # tokens one device holds outside the TP regions
        return self.T // self.t if self.sp else self.T

    @property
    def vocab(self) -> int:
        """Rows of the embedding / LM head. Megatron-LM pads V up to a multiple of
        make-vocab-size-divisible-by x t (`_vocab_size_with_padding`, default 128);
        vocab_pad_multiple = 1 leaves V as Hugging Face has it."""
        m = self.vocab_pad_multiple * self.t if self.vocab_pad_multiple > 1 else 1
        return -(-self.spec.vocab // m) * m

    @property
    def vt(self) -> int:         # vocabulary shard: ceil(V / t) rows per device
        return -(-self.vocab // self.t)


def build_graph(spec: ModelSpec, seq: int | None = None, mbs: int = 1, tp: int = 1,
                sequence_parallel: bool = False, fused: bool = False, dtype_bytes: int = 2,
                attention: str = "eager", vocab_pad_multiple: int = 1,
                unfused_bias: bool = False, apex_layernorm: bool = False,
                cp: int = 1, expert_tp: int = 0,
                recompute_modules: tuple | None = None, ep: int = 0,
                moe_dispatcher: str = "alltoall",
                moe_expert_capacity_factor: float | None = None,
                moe_pad_expert_input_to_capacity: bool = False,
                moe_router_fusion: bool = False,
                moe_router_load_balancing_type: str = "none",
                moe_router_force_load_balancing: bool = False) -> ModelGraph:
    """The training operator graph of `spec` for one microbatch on one device of a TP group.

    cp: context-parallel size. The device holds seq / cp of every sequence (Megatron-Core
    CP), so every op is built for seq / cp tokens, its attention core included (one ring
    step: seq / cp queries against a seq / cp chunk of keys; the cp - 1 further steps are
    phaze.place.plan.context_parallel_chain's); graph.seq stays the full sequence and
    graph.kv_bytes holds the K and V one step sends (2 x mbs x seq / cp x kv heads / tp x
    head dim x dtype bytes; MLA: mbs x seq / cp x heads / tp x (qk + v head dims) x dtype
    bytes, `_kv_bytes`), graph.q_bytes / o_bytes the chunk's Q and attention output (what
    an all-to-all CP moves beside them, `_qo_bytes`).

    attention: "eager" materialises the s x s scores and probabilities (HF eager, Megatron's
    unfused softmax); "flash" is one fused kernel per pass that keeps only Q, K, V, O and the
    row log-sum-exp (FlashAttention-2). vocab_pad_multiple: Megatron's
    make-vocab-size-divisible-by (128 there); 1 = no padding (Hugging Face counts).
    unfused_bias: linear biases as eager PyTorch runs them (Megatron-LM's own linears): a
    bias-add kernel after a linear whose consumer does not absorb it (BIAS_ABSORBING) and a
    bias-gradient reduction (`.dbias`, reads dY) beside each biased dW; False: both inside
    the GEMM (cuBLASLt bias / bgrad epilogues, Transformer Engine). apex_layernorm: the
    LayerNorm backward as apex's MixedFusedLayerNorm (Megatron-LM 2021): gamma and beta
    gradients in a pass of their own over dy and x (`.bwd.dgamma`) before the input
    gradient; False: one pass (Megatron's persistent LayerNorm of 2022, TE).

    expert_tp: expert tensor-parallel size of an MoE model's routed experts (Megatron-Core
    --expert-tensor-parallel-size; 0 = tp, the default there): != tp builds the folded
    MoE layer (`_moe_folded`); its collectives run over group "etp".

    recompute_modules: what "selective" recomputation re-runs, Megatron-Core's
    --recompute-modules (RECOMPUTE_MODULES; None: the attention core, its default
    "core_attn"); the graph's "selective" activation bytes and re-run ops follow.

    ep: expert-parallel size the plan will run (phaze.place.plan.expert_parallel_chain
    applies it). Given (>= 1), each routed-expert GEMM op is E / ep GEMMs, one per local
    expert (Op.groups: Transformer Engine's GroupedLinear launches one cuBLAS GEMM per
    expert); 0 leaves them one GEMM of all the device's token slots.

    moe_dispatcher: Megatron-Core's --moe-token-dispatcher-type the plan runs (one of
    MOE_DISPATCHERS): "alltoall" copies the experts' token slots into local-expert order and
    back when a device holds several experts (ep given, "moe.sort_chunks" /
    "moe.unsort_chunks"); "flex" (DeepEP / HybridEP) does not.

    moe_expert_capacity_factor, moe_pad_expert_input_to_capacity: Megatron-Core's token
    dropping (TransformerConfig fields of those names; None / False: dropless, its
    default). Every routed-slot count of the MoE layer (the dispatch and combine permutes,
    the sort by local expert, the EP all-to-all bytes the chain reads off moe.dispatch,
    the expert GEMMs, their saved activations) becomes `routed_slots` of the tokens the
    router sees on one device: T in `_moe`, T / t under sequence parallelism in
    `_moe_folded` and `_moe_alltoall`. Balanced routing assumed, as for dropless MoE;
    check_token_drop's refusals (UserError).

    moe_router_fusion: Megatron-Core's --moe-router-fusion (TransformerConfig
    moe_router_fusion, default False): the router's top-k and scoring run as one fused
    Transformer Engine kernel per pass instead of the eager PyTorch kernels of
    ROUTE_KERNELS. moe_router_load_balancing_type: Megatron-Core's load-balancing loss
    (one of MOE_LOAD_BALANCING; "none" also stands for a zero --moe-aux-loss-coeff, with
    which Megatron-Core computes none): its kernels join the routing op (AUX_LOSS_KERNELS).
    moe_router_force_load_balancing: Megatron-Core's benchmark switch that routes on random
    logits (FORCE_BALANCE_KERNELS). Routing itself stays balanced either way (phaze's
    assumption, routed_slots)."""
    from phaze.errors import UserError

    seq = spec.seq if seq is None else seq
    spec.check_run(seq, mbs, tp, sequence_parallel, cp=cp)
    if attention not in ATTENTION:
        raise UserError(f"unknown attention implementation {attention!r}", field="attention",
                        fix=f"use one of {', '.join(ATTENTION)}")
    if isinstance(vocab_pad_multiple, bool) or not isinstance(vocab_pad_multiple, int) \
            or vocab_pad_multiple < 1:
        raise UserError(f"must be a positive integer, got {vocab_pad_multiple!r}",
                        field="vocab_pad_multiple",
                        fix="give an integer >= 1 (1 leaves the vocabulary unpadded)")
    if cp > 1:
        check_context_parallel(spec, seq, attention)
    if tp == 1:
        sequence_parallel = False
    et = expert_tp or tp
    if et != tp:
        check_expert_tp(spec, tp, et, sequence_parallel)
    if recompute_modules is not None:
        recompute_modules = check_recompute_modules(recompute_modules)
    if isinstance(ep, bool) or not isinstance(ep, int) or ep < 0 \
            or (ep and spec.experts and spec.experts % ep):
        raise UserError(f"expert-parallel size {ep!r} must be 0 or a positive divisor of the "
                        f"{spec.experts} routed experts", field="ep",
                        fix=(f"use 0 (no expert parallelism) or a divisor of {spec.experts}"
                             if spec.experts else "use 0 or a positive integer"))
    if moe_dispatcher not in MOE_DISPATCHERS:
        raise UserError(f"unknown MoE token dispatcher {moe_dispatcher!r}",
                        field="moe_dispatcher", fix=f"use one of {', '.join(MOE_DISPATCHERS)}")
    check_token_drop(spec, moe_expert_capacity_factor, moe_pad_expert_input_to_capacity,
                     moe_dispatcher)
    if moe_router_load_balancing_type not in MOE_LOAD_BALANCING:
        raise UserError(f"unknown MoE load-balancing loss {moe_router_load_balancing_type!r}",
                        field="moe_router_load_balancing_type",
                        fix=f"use one of {', '.join(MOE_LOAD_BALANCING)}")
    if moe_expert_capacity_factor is not None:
        moe_expert_capacity_factor = float(moe_expert_capacity_factor)
    c = _Ctx(spec, seq // cp, mbs, tp, sequence_parallel, dtype_bytes, attention,
             vocab_pad_multiple, et, recompute_modules, ep,
             moe_dispatcher=moe_dispatcher if spec.experts else "alltoall",
             capacity_factor=moe_expert_capacity_factor,
             pad_to_capacity=bool(moe_pad_expert_input_to_capacity),
             router_fusion=bool(moe_router_fusion) and bool(spec.experts),
             load_balancing=moe_router_load_balancing_type if spec.experts else "none",
             force_balance=bool(moe_router_force_load_balancing) and bool(spec.experts), cp=cp)
    layers, uniques = [], 0
    for kind, fn, rep in (("prologue", _prologue, 1), *_block_runs(c), ("epilogue", _epilogue, 1)):
        built = fn(c)
        built.layer.unfused_bias = bool(unfused_bias)
        built.layer.apex_layernorm = bool(apex_layernorm)
        lg, unique = _finish(kind, rep, built, c, fused)
        layers.append(lg)
        uniques += unique * rep
    idle = [m for m in (recompute_modules or ()) if m not in c.recompute_hits]
    if idle:   # Megatron-Core refuses mla_up_proj without MLA; the others would re-run nothing
        raise UserError(f"recompute module {idle[0]!r} re-runs nothing in {spec.name} (it has "
                        f"no {_MODULE_PARTS[idle[0]]})", field="recompute_modules",
                        fix=f"drop {idle[0]!r} from the recompute modules")
    return ModelGraph(model=spec.name, seq=seq, mbs=mbs, tp=tp, sequence_parallel=sequence_parallel,
                      fused=fused, dtype_bytes=dtype_bytes, layers=tuple(layers), params_total=uniques,
                      attention=attention, vocab_pad_multiple=vocab_pad_multiple,
                      unfused_bias=bool(unfused_bias), apex_layernorm=bool(apex_layernorm),
                      cp=cp, expert_tp=et, moe_experts=spec.experts, moe_top_k=spec.top_k,
                      ep=ep if spec.experts else 0, moe_dispatcher=c.moe_dispatcher,
                      moe_expert_capacity_factor=c.capacity_factor,
                      moe_pad_expert_input_to_capacity=c.pad_to_capacity,
                      moe_router_fusion=c.router_fusion,
                      moe_router_load_balancing_type=c.load_balancing,
                      moe_router_force_load_balancing=c.force_balance,
                      moe_model_flops_ratio=c.model_flops_ratio,
                      kv_bytes=_kv_bytes(spec, seq // cp, mbs, tp, dtype_bytes),
                      **_qo_bytes(spec, seq // cp, mbs, tp, dtype_bytes))


def dividing_eps(experts: int, eps) -> tuple[int, ...]:
    """The sizes of `eps` (in order, once each) that split `experts` routed experts evenly:
    the only expert-parallel sizes that can run an MoE model."""
    return tuple(dict.fromkeys(int(e) for e in eps if experts % int(e) == 0))


def graph_eps(spec: ModelSpec, eps, field: str = "placement.ep") -> tuple[int, ...]:
    """The expert-parallel sizes a sweep builds `spec`'s graphs for (graph.ep is part of a
    graph's identity, sched.table.GRAPH_KEY): (0,) for a dense model, whose graph does not
    depend on ep; for an MoE model each of `eps` (the placement's ep axis) that divides its
    routed experts, in order (ep = 1: one GEMM per expert; a size that does not divide them
    cannot run the model and is skipped for it). UserError naming `field` when none does."""
    from phaze.errors import UserError

    if not spec.experts:
        return (0,)
    got = dividing_eps(spec.experts, eps)
    if not got:
        ok = [k for k in range(1, spec.experts + 1) if spec.experts % k == 0]
        raise UserError(f"none of the expert-parallel sizes {list(eps)} divides {spec.name}'s "
                        f"{spec.experts} routed experts, so no plan can run it", field=field,
                        fix=f"add a divisor of {spec.experts} to {field} "
                            f"({', '.join(map(str, ok[:6]))}{', ...' if len(ok) > 6 else ''})")
    return got


def _kv_bytes(spec: ModelSpec, chunk: int, mbs: int, tp: int, dtype_bytes: int) -> float:
    """K and V of one device's sequence chunk: what one context-parallel ring step sends.
    MLA: Transformer Engine's p2p ring sends the per-head key and value the core attends
    (torch.cat of k and v, context_parallel.py AttnFuncWithCPAndKVP2P): heads / tp of them,
    nope + rope wide for K and v_head_dim for V, not the compressed latent."""
    if spec.mla:
        return float(mbs * chunk * (spec.heads // tp) * (spec.qk_head_dim + spec.v_head_dim)
                     * dtype_bytes)
    return float(2 * mbs * chunk * max(1, spec.n_kv_heads // tp) * spec.d_head * dtype_bytes)


def cp_a2a_problem(spec: ModelSpec, tp: int, cp: int, level: str = "cp") -> str | None:
    """Why an all-to-all context parallelism of size cp (Megatron-Core --cp-comm-type a2a;
    `level` names the size, e.g. a2a+p2p's all-to-all level) cannot split the attention
    heads a TP rank holds, or None: Transformer Engine's AttnFuncWithCPAndQKVOA2A requires
    num_heads % cp_size == 0 for Q, K and V (heads / tp query heads; K and V: the kv heads /
    tp, at least one; MLA: heads / tp)."""
    kv = spec.heads if spec.mla else spec.n_kv_heads
    for what, n in (("query", spec.heads // tp), ("key/value", max(1, kv // tp))):
        if n % cp:
            return (f"{level} = {cp} must divide the {n} {what} heads of {spec.name} per TP "
                    f"rank (t = {tp})")
    return None


def _qo_bytes(spec: ModelSpec, chunk: int, mbs: int, tp: int, dtype_bytes: int) -> dict:
    """Q and the attention output O of one device's sequence chunk ({"q_bytes",
    "o_bytes"}): what an all-to-all context-parallel core moves beside K and V (Transformer
    Engine's AttnFuncWithCPAndQKVOA2A, DeepSpeed-Ulysses): heads / tp of the query's head
    dim (MLA: nope + rope) and of V's (MLA: v_head_dim)."""
    heads = mbs * chunk * (spec.heads // tp) * dtype_bytes
    if spec.mla:
        return {"q_bytes": float(heads * spec.qk_head_dim), "o_bytes": float(heads * spec.v_head_dim)}
    return {"q_bytes": float(heads * spec.d_head), "o_bytes": float(heads * spec.d_head)}


def check_expert_tp(spec: ModelSpec, tp: int, expert_tp: int, sequence_parallel: bool) -> None:
    """UserError unless the routed experts of `spec` can run with expert tensor-parallel
    size `expert_tp` beside attention TP `tp` as Megatron-Core runs them: an MoE model, a
    positive size dividing the expert FFN width, and sequence parallelism when tp > 1
    (Megatron-LM's arguments require it for MoE under TP)."""
    from phaze.errors import UserError

    if isinstance(expert_tp, bool) or not isinstance(expert_tp, int) or expert_tp < 1:
        raise UserError(f"must be a positive integer, got {expert_tp!r}", field="expert_tp",
                        fix="give an integer >= 1")
    if not spec.experts:
        raise UserError(f"{spec.name} has no routed experts", field="expert_tp",
                        fix="drop expert_tp (dense models have no expert tensor parallelism)")
    if spec.expert_ffn % expert_tp:
        raise UserError(f"expert tensor-parallel size {expert_tp} does not divide the "
                        f"{spec.expert_ffn} moe_ffn of {spec.name}", field="expert_tp",
                        fix="use a size dividing moe_ffn")
    if tp > 1 and not sequence_parallel:
        raise UserError(f"expert tensor-parallel size {expert_tp} != tp {tp} needs sequence "
                        "parallelism (Megatron-Core runs MoE under TP with it only)",
                        field="expert_tp", fix="add --sequence-parallel, or use expert_tp = tp")


def check_context_parallel(spec: ModelSpec, seq: int, attention: str) -> None:
    """UserError unless context parallelism can run `spec` at `seq` as Megatron-Core runs it,
    whatever the communication: Transformer Engine's fused attention (Megatron-Core's own
    DotProductAttention asserts context_parallel_size == 1; the ring keeps only the running
    softmax statistics of each step, which an eager s x s attention would not), no Mamba
    layer, no ALiBi (TE's backend filter, get_attention_backend: with CP, FlashAttention and
    FusedAttention take only no_bias / post_scale_bias). What depends on the communication
    (sliding windows, attention sinks, heads per rank) is cp_comm_problem's."""
    from phaze.errors import UserError

    if attention != "flash":
        raise UserError(f"context parallelism needs fused (flash) attention, not {attention!r}",
                        field="attention",
                        fix="use --attention flash or --framework megatron-core-2024 / "
                            "nemo-2024 (in a sweep config: graph.attention flash), or cp 1")
    if spec.has_mixer("mamba"):
        raise UserError(f"{spec.name}'s Mamba layers: context parallelism is not modelled for them "
                        "(Megatron-Core runs them with an all-to-all over heads, "
                        "ssm/mamba_context_parallel.py, which phaze's ring CP does not express)",
                        field="cp", fix="use cp 1 for this model")
    if spec.position == "alibi":
        raise UserError(f"{spec.name}'s ALiBi position biases cannot run context-parallel: "
                        "Transformer Engine has no backend for them there", field="cp",
                        fix="use cp 1 for this model")


def has_short_window(spec: ModelSpec, seq: int) -> bool:
    """True when some attention layer of `spec` attends through a sliding window shorter
    than `seq` (a band, not the whole causal triangle)."""
    return 0 < spec.sliding_window < seq and any(
        spec.mixer_type(i) == "attention" and spec.layer_type(i) == "sliding"
        for i in range(spec.layers))


def _a2a_level_problem(spec: ModelSpec, tp: int, cp: int, a2a_size: int) -> str | None:
    """Why a2a+p2p's all-to-all level of `a2a_size` devices cannot run over cp: it must
    divide cp and the heads a TP rank holds (cp_a2a_problem)."""
    if not (a2a_size >= 1 and cp % a2a_size == 0):
        return (f"a2a+p2p's all-to-all level of {a2a_size} devices must divide cp = {cp} "
                f"(Megatron-Core --hierarchical-context-parallel-sizes A, cp / A)")
    return cp_a2a_problem(spec, tp, a2a_size, "a2a+p2p's all-to-all level")


def cp_comm_problem(spec: ModelSpec, seq: int, tp: int, cp: int, cp_comm_type: str,
                    a2a_size: int = 0) -> str | None:
    """Why Transformer Engine cannot run `spec`'s attention context-parallel over cp devices
    with Megatron-Core's --cp-comm-type `cp_comm_type` (p2p | allgather | a2a | a2a+p2p,
    whose all-to-all level has `a2a_size` devices), or None. From attn_forward_func_with_cp
    and get_attention_backend (TE 2.8-2.10, attention/dot_product_attention/
    context_parallel.py and utils.py):
    - a sliding window shorter than the sequence runs only with all_gather or a2a (the p2p
      ring, a2a+p2p's too, asserts "does not support sliding window attention");
    - attention sinks (softmax_type learnable / off-by-one) only with a2a (FusedAttention is
      disabled for them under the others, and no other backend runs CP);
    - a2a splits the heads a TP rank holds over cp (cp_a2a_problem), a2a+p2p over its
      all-to-all level, which must divide cp."""
    from phaze.settings import CP_COMM_TYPE_ALIASES

    if cp <= 1:
        return None
    kind = CP_COMM_TYPE_ALIASES.get(cp_comm_type, cp_comm_type)
    if kind in ("p2p", "a2a+p2p") and has_short_window(spec, seq):
        return (f"{spec.name}'s sliding-window layers (window {spec.sliding_window} < seq {seq}) "
                f"cannot run in the {kind} context-parallel ring (Transformer Engine runs them "
                "with cp_comm_type allgather or a2a)")
    if kind != "a2a" and spec.attn_sinks:
        return (f"{spec.name}'s attention sinks (learnable softmax) run context-parallel only "
                f"with cp_comm_type a2a in Transformer Engine, not {kind}")
    if kind == "a2a":
        return cp_a2a_problem(spec, tp, cp)
    if kind == "a2a+p2p":
        return _a2a_level_problem(spec, tp, cp, a2a_size)
    return None


def cp_comm_refusal(spec: ModelSpec, seq: int, tp: int, cp: int, cp_comm_type: str,
                    a2a_size: int, flag: str, size_flag: str) -> tuple[str, str, str] | None:
    """(message, field, fix) of a cp_comm_problem, or None. The field is `flag` (how the
    communication is set: a CLI flag or config field), or `size_flag` when the problem is
    a2a+p2p's all-to-all level itself; the fix names what works: the levels that divide cp
    and the heads per TP rank, or the communications that run the model, or another cp."""
    from phaze.settings import CP_COMM_TYPE_ALIASES, CP_COMM_TYPES

    why = cp_comm_problem(spec, seq, tp, cp, cp_comm_type, a2a_size)
    if not why:
        return None
    if CP_COMM_TYPE_ALIASES.get(cp_comm_type, cp_comm_type) == "a2a+p2p" and \
            _a2a_level_problem(spec, tp, cp, a2a_size):
        ok = [a for a in range(1, cp + 1) if not _a2a_level_problem(spec, tp, cp, a)]
        return why, size_flag, (f"use {size_flag} {' or '.join(map(str, ok))} (dividing cp = "
                                f"{cp} and the heads per TP rank), or {flag} p2p")
    # a2a+p2p is offered only with its level's size given (a2a_size)
    ok = [k for k in CP_COMM_TYPES if (k != "a2a+p2p" or a2a_size)
          and not cp_comm_problem(spec, seq, tp, cp, k, a2a_size)]
    return why, flag, (f"use {flag} {' or '.join(ok)}, or another cp" if ok
                       else "use another cp, or cp 1")


def attention_band(queries: int, window: int, causal: bool = True) -> float:
    """Score elements one head's attention computes over `queries` positions attending
    through a sliding window of `window` keys (0 or >= queries: all earlier keys): a causal
    band covers queries x w - w^2 / 2 (w = min(window, queries); w = queries gives the
    triangle s^2 / 2); without a causal mask every query sees every key (queries^2)."""
    if not causal:
        return float(queries) * queries
    w = min(window, queries) if window > 0 else queries
    return float(queries) * w - w * w / 2.0


def cp_core_steps(seq: int, cp: int, window: int = 0, causal: bool = True,
                  busiest: bool = False) -> float:
    """Local attention cores one device runs for its share of a layer's whole-sequence
    attention under context parallelism of size cp, against the band its seq / cp chunk's
    core covers (the graph's core op): the band over seq (attention_band) / cp, each device
    an equal share (the all-to-all CP: all queries of heads / cp); cp for full attention
    (TE's load-balanced causal split gives each device 1/cp of the triangle), fewer for a
    sliding window (`window` keys), whose band grows only linearly with seq.
    `busiest`: the device with the most work when each holds its two chunks of Megatron's
    load-balanced split (2 cp chunks, device r the r-th and (2 cp - 1 - r)-th;
    get_batch_on_this_cp_rank), as the all-gather CP computes them (TE
    AttnFuncWithCPAndKVAllGather: each chunk's queries over the keys it sees): the
    triangle splits evenly, a window's band does not (its first chunks see fewer keys)."""
    if cp <= 1:
        return 1.0
    local = attention_band(seq // cp, window, causal)
    if not (busiest and causal):
        return attention_band(seq, window, causal) / cp / local
    c = seq / (2 * cp)
    w = min(window, seq) if window > 0 else seq
    # chunk j's queries: the band over the first (j + 1) c queries less the first j c's
    chunk = [attention_band((j + 1) * c, w) - attention_band(j * c, w) for j in range(2 * cp)]
    return max(chunk[r] + chunk[2 * cp - 1 - r] for r in range(cp)) / local


def cp_core_flop_steps(seq: int, cp: int, window: int = 0) -> float:
    """As cp_core_steps for the model FLOPs, which count a core op's whole queries x keys
    rectangle (keys: the window, or all): seq x min(window, seq) / cp over the chunk's
    seq / cp x min(window, seq / cp); cp for full attention, so a CP group counts the FLOPs
    one device would at cp 1."""
    if cp <= 1:
        return 1.0
    chunk = seq // cp
    keys = (lambda n: min(window, n) if window > 0 else n)
    return seq * keys(seq) / cp / (chunk * keys(chunk))


def _block_runs(c: _Ctx):
    """(kind, builder, repeat) for runs of equal consecutive blocks. Blocks differ in their
    token mixer and feed-forward (spec.mixer_type / ffn_type: hybrid and partly dense
    models) and in a sliding window where it is visible: flash attention (the fused kernel
    skips key blocks outside the band) and a window shorter than the sequence. Eager
    attention computes the full s x s scores and masks them (HF eager / sdpa), so it is the
    same block."""
    sp = c.spec
    default_ffn = "moe" if sp.experts else "dense"
    runs: list[list] = []
    for i in range(sp.layers):
        mixer, ffn = sp.mixer_type(i), sp.ffn_type(i)
        sliding = (mixer == "attention" and sp.layer_type(i) == "sliding"
                   and c.attention == "flash" and 0 < sp.sliding_window < c.s * c.cp)
        parts = (["sliding"] if sliding else []) + ([mixer] if mixer != "attention" else []) \
            + ([f"{ffn}_ffn"] if ffn != default_ffn else [])
        kind = ".".join(["block", *parts])
        if runs and runs[-1][0] == kind:
            runs[-1][2] += 1
        else:
            runs.append([kind, (lambda cc, sl=sliding, m=mixer, f=ffn: _block(cc, sl, m, f)), 1])
    return [tuple(r) for r in runs]


# Megatron-Core --recompute-modules (recompute_granularity selective): the forward nodes each
# module re-runs, by node name (prefix match with a trailing "."). "mlp" is the dense MLP
# (a MoE block's is "moe"); "layernorm" the two block norms; "mla_up_proj" the MLA up
# projections with their RoPE.
RECOMPUTE_MODULES = {
    "core_attn": (),   # the attention core: the nodes _attention marks selective
    "layernorm": ("ln1", "ln2"),
    "mlp": ("mlp.",),
    "moe": ("moe.", "mlp."),
    "moe_act": ("moe.expert.act",),
    "shared_experts": ("moe.shared.",),
    "mla_up_proj": ("attn.q_up", "attn.kv_up", "attn.q_rope", "attn.kv_rope"),
}


# what a model must have for each module to re-run something (the error names it)
_MODULE_PARTS = {"core_attn": "attention core", "layernorm": "block norms",
                 "mlp": "dense MLP block", "moe": "MoE layer", "moe_act": "MoE layer",
                 "shared_experts": "shared experts", "mla_up_proj": "multi-latent attention"}


def check_recompute_modules(modules) -> tuple[str, ...]:
    """The modules as a sorted tuple; UserError naming an unknown one."""
    from phaze.errors import UserError

    bad = [m for m in modules if m not in RECOMPUTE_MODULES]
    if bad:
        raise UserError(f"unknown recompute module {bad[0]!r}", field="recompute_modules",
                        fix=f"use Megatron-Core's names: {', '.join(RECOMPUTE_MODULES)}")
    return tuple(sorted(set(modules)))


# modules Megatron-Core re-runs with CheckpointWithoutOutput: their outputs are discarded
# after the consumers' forward and recomputed before the backward, so the copies the
# consumers keep go too (the others are plain checkpoints: only what they keep inside)
_WITHOUT_OUTPUT = ("layernorm", "moe_act", "mla_up_proj")


def _recompute_modules(L: _Layer, modules: tuple[str, ...]) -> set:
    """Mark what selective recomputation with Megatron-Core's `modules` re-runs and drops.
    Re-run: the nodes of the modules (RECOMPUTE_MODULES; dropout masks never: random,
    kept). Dropped, at most what a node keeps: inside a checkpointed module, all its nodes
    keep but the module's input from outside (the checkpoint's, kept); for the output-
    discarding modules (_WITHOUT_OUTPUT), what any node keeps of their outputs. Inputs are traced through collectives. The attention
    core keeps its own account (Korthikanti et al. 2023, Sec. 5). Returns the modules that
    have nodes in this layer."""
    nodes = L.nodes
    core = {n.name: n.selective_drop for n in nodes.values() if n.selective}
    moe_block = any(name.startswith("moe.") for name in nodes)

    def members(m):
        if m == "core_attn":
            return set(core)
        if (m == "mlp" and moe_block) or (m in ("moe", "moe_act", "shared_experts")
                                          and not moe_block):
            return set()
        return {name for name in nodes for pre in RECOMPUTE_MODULES[m]
                if (name == pre or (pre.endswith(".") and name.startswith(pre)))
                and nodes[name].vclass != "dropout"}

    hits = {m for m in modules if members(m)}
    plain = set().union(*(members(m) for m in modules if m not in _WITHOUT_OUTPUT))
    discard = set().union(*(members(m) for m in modules if m in _WITHOUT_OUTPUT))

    def made_in(p: str, region: set) -> bool:
        """Whether the compute node behind tensor `p` (past collectives, which move a
        tensor but make none) is in `region`."""
        while p != "in" and nodes[p].kind in ("collective", "identity"):
            p = nodes[p].inputs[0]
        return p in region

    for n in nodes.values():
        n.selective = n.name in plain or n.name in discard
        if n.name in core and "core_attn" in modules:
            # the core's own drop, plus what it keeps of an output-discarding module's
            # outputs (MLA: q_rope / kv_rope under mla_up_proj): the checkpoint keeps its
            # inputs, but those are discarded and recomputed too
            n.selective_drop = min(n.saved, core[n.name] + sum(
                b for x, b in zip(n.inputs, n.in_bytes) if made_in(x, discard)))
            continue
        drop = 0.0
        if n.vclass != "dropout":
            if n.name in plain:     # all it keeps but what it reads from outside the module
                drop = n.saved - sum(b for x, b in zip(n.inputs, n.in_bytes)
                                     if not made_in(x, plain))
            drop = max(drop, 0.0) + sum(b for x, b in zip(n.inputs, n.in_bytes)
                                        if made_in(x, discard))
        n.selective_drop = min(n.saved, drop)
    return hits


def _finish(kind: str, repeat: int, built: BuiltLayer, c: _Ctx, fused: bool) -> tuple[LayerGraph, int]:
    L = built.layer
    if c.recompute_modules is not None:
        c.recompute_hits |= _recompute_modules(L, c.recompute_modules)
    fwd, bwd = L.forward_ops(), L.backward_ops()
    if fused:
        fwd, bwd = fuse_epilogues(fwd), fuse_epilogues(bwd)
    nodes = L.nodes.values()
    saved = sum(n.saved for n in nodes)
    drop = sum(n.selective_drop for n in nodes)
    # blocks under full recomputation keep only their input; prologue and epilogue are
    # never recomputed (Megatron), so their three figures are equal
    acts = {"none": float(saved), "selective": float(saved - drop),
            "full": float(built.full_bytes if built.full_bytes else saved - drop)}
    pdev = sum(n.params_dev for n in nodes)
    shared = sum(n.params_shared for n in nodes)
    # the window of a sliding-window block (whole-sequence attention: CP's core steps)
    window = c.spec.sliding_window if "sliding" in kind.split(".") else 0
    lg = LayerGraph(kind=kind, repeat=repeat, fwd=tuple(fwd), bwd=tuple(bwd), param_count=pdev,
                    param_bytes=float(pdev * c.dt), activation_bytes=acts, input_bytes=built.input_bytes,
                    output_bytes=built.output_bytes, shared_param_bytes=float(shared * c.dt),
                    attention_window=window)
    return lg, sum(n.params_unique for n in nodes)


def _enter_tp(L: _Layer, c: _Ctx, x: str, prefix: str, width: int) -> tuple[str, float]:
    """Enter a column-parallel region: returns (node, regather bytes for .dW under SP)."""
    full = c.T * width * c.dt
    if c.t == 1:
        return x, 0.0
    if c.sp:
        return L.collective(f"{prefix}.all_gather", x, "all_gather", "reduce_scatter", full,
                            full / c.t, full, rule="sharded"), full
    return L.identity(f"{prefix}.f", x, "all_reduce", full), 0.0


def _exit_tp(L: _Layer, c: _Ctx, x: str, prefix: str, width: int) -> str:
    full = c.T * width * c.dt
    if c.t == 1:
        return x
    if c.sp:
        return L.collective(f"{prefix}.reduce_scatter", x, "reduce_scatter", "all_gather", full,
                            full, full / c.t, rule="sharded")
    return L.collective(f"{prefix}.all_reduce", x, "all_reduce", "", full, full, full)


def _norm(L: _Layer, c: _Ctx, name: str, x: str, width: int | None = None, keep_input=True) -> str:
    """keep_input=False: the input is already kept by another op (a tensor is counted once)."""
    sp = c.spec
    w = width or sp.hidden
    n_params = w * (2 if sp.norm == "layernorm" else 1)
    el = c.Ts * w
    return L.vector(name, (x,), sp.norm, el, saved=el * c.dt if keep_input else 0.0, params=n_params,
                    rule="sharded" if c.sp else "replicated")


def _dropout(L: _Layer, c: _Ctx, name: str, x: str, elements: int, rule: str, selective=False,
             on: bool | None = None) -> str:
    """A dropout op on `x`, or `x` itself without dropout (`on`; default the spec's)."""
    if not (c.spec.dropout if on is None else on):
        return x
    saved = elements * MASK_BYTES
    return L.vector(name, (x,), "dropout", elements, saved=saved, rule=rule,
                    selective_drop=saved if selective else 0.0)


def _mixer(L: _Layer, c: _Ctx, x: str, sliding: bool, mixer: str) -> str:
    """The block's token mixer: self-attention, or a Mamba-2 mixer (mixer "mamba")."""
    return _mamba(L, c, x) if mixer == "mamba" else _attention(L, c, x, sliding)


def _mamba(L: _Layer, c: _Ctx, x: str) -> str:
    """Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs") as Megatron-Core's MambaMixer
    trains it (megatron/core/ssm/mamba_mixer.py, use_mamba_mem_eff_path): heads and groups
    split over TP (H = heads / t, G = groups / t, d_inner = H P on a device);

    in_proj h -> [z, x, B, C, dt] (column parallel, 2 d_inner + 2 G N + H wide); the
    depthwise causal conv1d + SiLU over x, B, C (conv_kernel K taps, a vector op); the SSD
    chunked scan as mamba_ssm's Triton kernels run it on chunks of Q = chunk_size tokens
    (nc = ceil(s / Q) per sequence, the last padded): `ssd.cumsum` (softplus(dt + dt_bias),
    dA cumsum; fp32), `ssd.bmm_chunk` CB = C B^T per chunk and group (b nc G x Q x Q x N),
    `ssd.chunk_state` each chunk's final state B^T x (b nc H x P x N x Q), `ssd.state_passing`
    the recurrence over chunks (b nc H P N elements, fp32), `ssd.chunk_scan` y = (CB o decay) x
    + C states, + D x, times silu(z) in its epilogue (b nc H x Q x P x (Q + N)); a grouped
    RMSNorm over d_inner / G (no communication: groups are whole on a device); out_proj
    d_inner -> h (row parallel). SP: all-gather before in_proj, reduce-scatter after out_proj.

    Saved for backward (mamba_split_conv1d_scan_combined saves zxbcdt and the scan output
    out_x and recomputes the conv and the chunk states): the in_proj input, zxbcdt (T x
    in_proj width), out_x, the norm's input and fp32 rstd (T G), the out_proj input.
    Parameters: conv weight and bias, dt_bias, A_log, D (put on `ssd.cumsum`), norm weight."""
    sp, dt, t = c.spec, c.dt, c.t
    h, T, Ts, b = sp.hidden, c.T, c.Ts, c.b
    H, G = sp.mamba_num_heads // t, sp.mamba_n_groups // t
    P, N, K, Q = sp.mamba_head_dim, sp.ssm_state_size, sp.conv_kernel, sp.chunk_size
    di, gn = H * P, G * N
    conv_dim, proj = di + 2 * gn, 2 * di + 2 * gn + H
    nc = -(-c.s // Q)
    Tq = b * nc * Q                      # token slots of the padded chunks
    xin, regather = _enter_tp(L, c, x, "mamba", h)
    zx = L.linear("mamba.in_proj", xin, T, h, proj, rule="column", bias=sp.mamba_proj_bias,
                  saved=Ts * h * dt, regather=regather)
    L.nodes[zx].accumulate = False       # z, xBC and dt are slices of one tensor
    conv_p = conv_dim * K + (conv_dim if sp.mamba_conv_bias else 0)
    xbc = L.vector("mamba.conv1d", (zx,), "causal_conv1d", T * conv_dim, in_bytes=(T * conv_dim * dt,),
                   saved=T * proj * dt, params=conv_p, unique=conv_p * t, rule="column",
                   flops=(2 * K + 5, 4 * K + 8), accumulate=False)
    da = L.vector("mamba.ssd.cumsum", (zx,), "ssd_cumsum", T * H, in_bytes=(T * H * dt,),
                  out_bytes=2 * T * H * 4, params=3 * H, unique=3 * H * t, rule="column")
    f32 = 4
    cb = L.ssd_gemm("mamba.ssd.bmm_chunk", (xbc, xbc), (Tq * gn * dt, Tq * gn * dt),
                    GemmDims(b * nc * G, Q, Q, N), b * nc * G * Q * Q * f32)
    st_el = b * nc * H * P * N
    states = L.ssd_gemm("mamba.ssd.chunk_state", (xbc, da), (Tq * di * dt, Tq * gn * dt + T * H * f32),
                        GemmDims(b * nc * H, P, N, Q), st_el * f32)
    states = L.vector("mamba.ssd.state_passing", (states, da), "ssd_state_passing", st_el,
                      in_bytes=(st_el * f32, b * nc * H * f32), out_bytes=st_el * f32, rule="column")
    y = L.ssd_gemm("mamba.ssd.chunk_scan", (cb, states, xbc, da, zx),
                   (b * nc * G * Q * Q * f32, st_el * f32, Tq * (di + gn) * dt, T * H * f32, T * di * dt),
                   GemmDims(b * nc * H, Q, P, Q + N), T * di * dt, saved=T * di * dt)
    y = L.vector("mamba.norm", (y,), "rmsnorm", T * di, saved=T * di * dt + T * G * f32,
                 params=di, unique=di * t, rule="column")
    out = L.linear("mamba.out_proj", y, T, di, h, rule="row", bias=sp.mamba_proj_bias, saved=T * di * dt)
    return _exit_tp(L, c, out, "mamba", h)


def _attention(L: _Layer, c: _Ctx, x: str, sliding: bool) -> str:
    """Self-attention on the normed input `x` (Megatron column/row TP over heads).

    Saved tensors (Korthikanti et al. 2023, Sec. 4.1, each counted once): the QKV input,
    Q and K (scores), V (context), the projection input; eager adds the softmax output
    (2 a s^2 b), and with dropout its mask (a s^2 b) and output (2 a s^2 b): 5 a s^2 b; without
    dropout the softmax output is the tensor the context GEMM reads, kept once (2 a s^2 b).
    Gemma2's score soft-capping keeps its tanh output (2 a s^2 b) too. Flash keeps no
    s^2 tensor, only the fp32 row log-sum-exp (4 a s b)."""
    sp, dt, t = c.spec, c.dt, c.t
    if sp.mla:
        return _mla_attention(L, c, x)
    h, T, Ts, s, b = sp.hidden, c.T, c.Ts, c.s, c.b
    d, a, kv = sp.d_head, sp.heads // t, sp.n_kv_heads // t
    xin, regather = _enter_tp(L, c, x, "attn", h)
    qb = sp.q_bias
    if sp.fused_qkv:
        qkv = L.linear("attn.qkv", xin, T, h, (a + 2 * kv) * d, rule="column", bias=qb,
                       saved=Ts * h * dt, regather=regather)
        q = k = v = qkv
    else:
        q = L.linear("attn.q", xin, T, h, a * d, rule="column", bias=qb, saved=Ts * h * dt,
                     regather=regather)
        k = L.linear("attn.k", xin, T, h, kv * d, rule="column", bias=qb, saved=0.0, regather=regather)
        v = L.linear("attn.v", xin, T, h, kv * d, rule="column", bias=qb, saved=0.0, regather=regather)
    def qk_in(q, k):  # (inputs, their bytes) of an op reading q and k
        if q == k:
            return (q,), ((a + 2 * kv if q == "attn.qkv" else a + kv) * T * d * dt,)
        return (q, k), (T * a * d * dt, T * kv * d * dt)

    el = T * (a + kv) * d
    if sp.qk_norm:  # Qwen3: RMSNorm over head_dim on q and k (weights d each); keeps its inputs
        ins, ib = qk_in(q, k)
        q = k = L.vector("attn.qk_norm", ins, "rmsnorm", el, in_bytes=ib, saved=el * dt,
                         params=2 * d, unique=2 * d, rule="column", accumulate=False)
    if sp.position == "rope":
        ins, ib = qk_in(q, k)
        q = k = L.vector("attn.rope", ins, "rope", el, in_bytes=ib, rule="column", accumulate=False)
    if sp.fused_qkv:
        L.nodes["attn.qkv"].accumulate = False  # q, k, v are slices of one tensor
    qk_bytes = T * (a + kv) * d * dt
    v_bytes = T * kv * d * dt
    if c.attention == "flash":
        keys = min(s, sp.sliding_window) if sliding else s
        lse = b * a * s * 4  # fp32 log-sum-exp per query row
        if q == k == v:      # one fused QKV tensor
            ins, in_b = (q,), (qk_bytes + v_bytes,)
        elif q == k:         # q and k through RoPE / qk-norm together
            ins, in_b = (q, v), (qk_bytes, v_bytes)
        else:
            ins, in_b = (q, k, v), (T * a * d * dt, T * kv * d * dt, v_bytes)
        ctx = L.flash("attn.core", ins, in_b, batch=b * a, s=s, keys=keys, d=d,
                      saved=qk_bytes + v_bytes + lse, selective_drop=lse, dropout=sp.attn_dropout)
        L.nodes[ctx].selective = True
        _flash_score_terms(L, c, ctx)
    else:
        ctx = _eager_core(L, c, q, k, v, a=a, d=d, dv=d, q_bytes=T * a * d * dt,
                          k_bytes=T * kv * d * dt, v_bytes=v_bytes, qk_saved=qk_bytes)
    proj = L.linear("attn.proj", ctx, T, a * d, h, rule="row", bias=sp.o_bias, saved=T * a * d * dt)
    return _exit_tp(L, c, proj, "attn", h)


def _eager_core(L: _Layer, c: _Ctx, q: str, k: str, v: str, *, a: int, d: int, dv: int,
                q_bytes: float, k_bytes: float, v_bytes: float, qk_saved: float) -> str:
    """Unfused attention core on one device's `a` heads: scores Q K^T (depth d), optional
    soft cap, softmax, dropout, probabilities x V (value heads dv wide). Q and K are kept
    (`qk_saved`, counted on the scores) and V (on the context), with the s^2 tensors that
    selective recomputation drops; every op here is re-run by it."""
    sp, dt, s, b = c.spec, c.dt, c.s, c.b
    scores = L.bmm("attn.scores", q, k, batch=b * a, m=s, n=s, k=d, a_bytes=q_bytes,
                   b_bytes=k_bytes, saved=qk_saved)
    p_el = b * a * s * s
    core = [scores]
    if sp.attn_softcap:  # cap * tanh(scores / cap): tanh's backward reads its output
        scores = L.vector("attn.softcap", (scores,), "tanh", p_el, saved=p_el * dt, rule="column",
                          selective_drop=p_el * dt)
        core.append(scores)
    scores, sm_el = _eager_score_terms(L, c, scores, core)   # ALiBi, attention sinks
    probs = L.vector("attn.softmax", (scores,), "softmax", sm_el, saved=sm_el * dt, rule="column",
                     selective_drop=sm_el * dt)
    core.append(probs)
    dropped = _dropout(L, c, "attn.dropout", probs, p_el, "column", selective=True,
                       on=sp.attn_dropout)
    own = p_el * dt if dropped != probs else 0.0  # the dropout output is a tensor of its own
    if dropped != probs:
        core.append(dropped)
    ctx = L.bmm("attn.context", dropped, v, batch=b * a, m=s, n=dv, k=s, a_bytes=p_el * dt,
                b_bytes=v_bytes, saved=own + v_bytes, selective_drop=own)
    core.append(ctx)
    for n in core:   # what selective recomputation re-runs (Korthikanti Sec. 5)
        L.nodes[n].selective = True
    return ctx


def _mla_attention(L: _Layer, c: _Ctx, x: str) -> str:
    """Multi-head latent attention (DeepSeek-V2, Liu et al. 2024; DeepSeek-V3) on the normed
    input `x`, with tensor parallelism as Megatron-Core's MLASelfAttention runs it (TE spec):

    - the down projections (q: h -> q_lora_rank, kv: h -> kv_lora_rank + rope) are
      "duplicated" linears (TELinear parallel_mode="duplicated"): the whole weight on every
      TP rank, run on the tokens the rank holds: T / t under sequence parallelism, all T
      otherwise; their RMSNorms likewise;
    - the up projections (q_lora_rank -> heads x (nope + rope), kv_lora_rank -> heads x
      (nope + v)) and a plain q projection (q_lora_rank 0, h -> heads x (nope + rope)) are
      column-parallel: their input enters the TP region (all-gather of the normed latent
      under SP, Megatron's f otherwise);
    - the rope key (one head, shared by all) is all-gathered over TP under SP
      (gather_from_sequence_parallel_region); without SP every rank computed it already;
    - RoPE rotates the rope part of each query head and the shared key, written with the
      nope parts into whole query, key and value tensors (Megatron-Core's fused MLA RoPE
      kernels): "attn.q_rope" and "attn.kv_rope";
    - the core attends a / t heads, q and k heads nope + rope wide, v heads v_head_dim;
    - the output projection heads x v -> h is row-parallel.
    Saved, each tensor once: the block input (down projections), both latents before and
    after their norms (norm input, up-projection input), the query, key and value (the
    core) and the output projection's input."""
    sp, dt, t = c.spec, c.dt, c.t
    h, T, Ts, s, b = sp.hidden, c.T, c.Ts, c.s, c.b
    a, dn, dr, dv = sp.heads // t, sp.qk_nope_head_dim, sp.qk_rope_head_dim, sp.v_head_dim
    dq, qr, kr = dn + dr, sp.q_lora_rank, sp.kv_lora_rank
    srule = "sharded" if c.sp else "replicated"
    if qr:
        qa = L.linear("attn.q_down", x, Ts, h, qr, rule="replicated", bias=sp.q_bias, saved=Ts * h * dt)
        qn = L.vector("attn.q_norm", (qa,), sp.norm, Ts * qr, saved=Ts * qr * dt, params=qr, rule=srule)
        qin, rg = _enter_tp(L, c, qn, "attn.q", qr)
        q = L.linear("attn.q_up", qin, T, qr, a * dq, rule="column", bias=False, saved=Ts * qr * dt,
                     regather=rg)
    else:
        xin, rg = _enter_tp(L, c, x, "attn.q", h)
        q = L.linear("attn.q", xin, T, h, a * dq, rule="column", bias=False, saved=Ts * h * dt,
                     regather=rg)
    # the block input is kept once, by the first projection reading it
    kva = L.linear("attn.kv_down", x, Ts, h, kr + dr, rule="replicated", bias=sp.q_bias,
                   saved=0.0)
    L.nodes[kva].accumulate = False          # the latent and the rope key are disjoint slices
    kvn = L.vector("attn.kv_norm", (kva,), sp.norm, Ts * kr, in_bytes=(Ts * kr * dt,),
                   saved=Ts * kr * dt, params=kr, rule=srule)
    kvin, rg = _enter_tp(L, c, kvn, "attn.kv", kr)
    kv = L.linear("attn.kv_up", kvin, T, kr, a * (dn + dv), rule="column", bias=False,
                  saved=Ts * kr * dt, regather=rg)
    kpe = kva
    if t > 1 and c.sp:
        full = T * dr * dt
        kpe = L.collective("attn.k_rope.all_gather", kva, "all_gather", "reduce_scatter", full,
                           full / t, full, rule="sharded")
    qrot = L.vector("attn.q_rope", (q,), "rope", T * a * dq, rule="column")
    krot = L.vector("attn.kv_rope", (kv, kpe), "rope", T * a * (dq + dv),
                    in_bytes=(T * a * (dn + dv) * dt, T * dr * dt), rule="column")
    L.nodes[krot].accumulate = False         # key and value are disjoint slices
    q_bytes, k_bytes, v_bytes = T * a * dq * dt, T * a * dq * dt, T * a * dv * dt
    if c.attention == "flash":
        lse = b * a * s * 4
        ctx = L.flash("attn.core", (qrot, krot), (q_bytes, k_bytes + v_bytes), batch=b * a, s=s,
                      keys=s, d=dq, dv=dv, saved=q_bytes + k_bytes + v_bytes + lse,
                      selective_drop=lse, dropout=c.spec.attn_dropout)
        L.nodes[ctx].selective = True
    else:
        ctx = _eager_core(L, c, qrot, krot, krot, a=a, d=dq, dv=dv, q_bytes=q_bytes,
                          k_bytes=k_bytes, v_bytes=v_bytes, qk_saved=q_bytes + k_bytes)
    proj = L.linear("attn.proj", ctx, T, a * dv, h, rule="row", bias=sp.o_bias, saved=T * a * dv * dt)
    return _exit_tp(L, c, proj, "attn", h)
def _eager_score_terms(L: _Layer, c: _Ctx, scores: str, core: list[str]) -> tuple[str, int]:
    """What joins the eager scores before the softmax; returns (node, softmax elements).

    ALiBi (BLOOM; Press et al. 2022): a per-head bias slope x key position added to the
    b a/t x s x s scores. transformers runs it as alibi.baddbmm(q, k^T) and Megatron-DeepSpeed
    as baddbmm on alibi.repeat(1, sq, 1): either way the bias is first written out at the
    size of the scores, then read back by the GEMM (beta = 1); modelled as one add reading
    the scores (and the b a/t x s slopes x positions) and writing them: the same traffic.
    No parameters, nothing kept, the gradient passes through.

    Attention sinks (gpt-oss; Megatron-Core softmax_type "learnable"): a learned logit per
    head concatenated to every score row (transformers' eager torch.cat, Megatron's
    SoftmaxOne), the softmax over s + 1 columns (its output, kept for the backward, one
    column wider), the sink column dropped before the context GEMM. Parameters: the heads
    (column-split over TP); the concat's backward slices the gradient and sums the sink
    column into the sinks' gradient."""
    sp, dt = c.spec, c.dt
    a, s, b = sp.heads // c.t, c.s, c.b
    p_el = b * a * s * s
    if sp.position == "alibi":
        scores = L.vector("attn.alibi", (scores,), "add", p_el, in_bytes=(p_el * dt + b * a * s * dt,),
                          rule="column", bwd="pass")
        core.append(scores)
    if not sp.attn_sinks:
        return scores, p_el
    el = b * a * s * (s + 1)
    scores = L.vector("attn.sinks", (scores,), "copy", el, in_bytes=(p_el * dt + a * dt,),
                      rule="column", params=a, unique=sp.heads)
    core.append(scores)
    return scores, el


def _flash_score_terms(L: _Layer, c: _Ctx, core: str) -> None:
    """ALiBi and sinks inside a fused attention kernel: the same two GEMMs. ALiBi is an
    in-kernel bias of slope x distance per score (FlashAttention-2 >= 2.4 alibi_slopes);
    sinks add one logit per row to the running softmax (cuDNN / Transformer Engine's
    FusedAttention with softmax_type "learnable"): both a few FLOP per score row or element
    against 4 d per score, not modelled. The sinks' parameters (heads / t per device) sit on
    the fused op."""
    sp = c.spec
    if sp.attn_sinks:
        n = L.nodes[core]
        n.params_dev, n.params_unique = sp.heads // c.t, sp.heads


def _ffn(L: _Layer, c: _Ctx, xin: str, prefix: str, width: int, *, regather: float, keep_input: bool,
         bias: bool, experts: int = 0, tokens: int | None = None) -> str:
    """fc1 + activation + fc2, or gate/up + gated activation + down (Shazeer 2020, GLU
    variants: the gated MLP has three matrices whatever the activation). With experts > 0
    the GEMMs are grouped over routed token slots (`tokens` = T x top_k)."""
    sp, dt = c.spec, c.dt
    h = sp.hidden
    T = tokens or c.T
    kept_in = (T * h * dt if experts else c.Ts * h * dt) if keep_input else 0.0
    kw = dict(rule="column", bias=bias, regather=0.0 if experts else regather, experts=experts)
    if sp.gated and sp.fused_gate_up:   # one GEMM of 2 x width, its halves gate and up
        fc1 = L.linear(f"{prefix}.fc1", xin, T, h, 2 * width, saved=kept_in, **kw)
        act = L.vector(f"{prefix}.act", (fc1,), sp.activation, T * width,
                       in_bytes=(2 * T * width * dt,), saved=2 * T * width * dt, rule="column")
    elif sp.gated:
        gate = L.linear(f"{prefix}.gate", xin, T, h, width, saved=kept_in, **kw)
        up = L.linear(f"{prefix}.up", xin, T, h, width, saved=0.0, **kw)
        act = L.vector(f"{prefix}.act", (gate, up), sp.activation, T * width, saved=2 * T * width * dt,
                       rule="column")
    else:
        fc1 = L.linear(f"{prefix}.fc1", xin, T, h, width, saved=kept_in, **kw)
        act = L.vector(f"{prefix}.act", (fc1,), sp.activation, T * width, saved=T * width * dt,
                       rule="column")
    # the dense MLP's second matrix keeps its historical name fc2 (gated or not)
    second = "fc2" if prefix == "mlp" else "down"
    return L.linear(f"{prefix}.{second}", act, T, width, h, rule="row", bias=bias,
                    saved=T * width * dt, experts=experts)


def _mlp(L: _Layer, c: _Ctx, x: str, ffn: str = "") -> str:
    """The block's feed-forward: ffn "dense" (an MLP ffn wide) or "moe" ("": the model's
    default, spec.ffn_type)."""
    sp, t = c.spec, c.t
    moe = (ffn or ("moe" if sp.experts else "dense")) == "moe"
    if moe and c.etp != t:
        return _moe_folded(L, c, x)
    if moe and t > 1 and c.sp:
        return _moe_alltoall(L, c, x)
    xin, regather = _enter_tp(L, c, x, "mlp", sp.hidden)
    if not moe:
        out = _ffn(L, c, xin, "mlp", sp.ffn // t, regather=regather, keep_input=True, bias=sp.f_bias)
        return _exit_tp(L, c, out, "mlp", sp.hidden)
    return _exit_tp(L, c, _moe(L, c, xin, regather), "mlp", sp.hidden)


def _sorted_by_expert(L: _Layer, c: _Ctx, x: str, name: str, elements: int) -> str:
    """`x` (the token slots of a device's experts, `elements` of them) as the alltoall
    dispatcher's sort_chunks_by_idxs copies it when the device holds several experts
    (_Ctx.sorts_chunks): "moe.sort_chunks" by local expert before the experts,
    "moe.unsort_chunks" back to source-rank order after them; one memory pass each (their
    backward: the inverse copy of the gradient). Otherwise `x`."""
    if not c.sorts_chunks:
        return x
    return L.vector(name, (x,), "permute", elements, rule="sharded" if c.sp else "replicated")


def _moe(L: _Layer, c: _Ctx, xin: str, regather: float) -> str:
    """Sparse MoE MLP (Mixtral, Qwen2-MoE; Shazeer et al. 2017, Fedus et al. 2022):

    router h -> E (replicated), softmax + top-k over E, dispatch of each token to its k experts,
    the experts' FFNs as grouped GEMMs over T k token slots ("moe.expert.*", Op.experts = E:
    routed FLOPs are the top_k / E share of every expert's dense FLOPs), weighted combine;
    Qwen2-MoE adds a dense shared expert ("moe.shared.*") scaled by sigmoid(x w_g).
    Kept: the MoE input, fp32 router probabilities (T E), permuted tokens (T k h), expert
    intermediates as in a dense MLP on T k tokens, expert outputs and weights for the combine.
    Token dropping: the router sees the T tokens, so every T k above is routed_slots(T)
    (_Ctx.slots)."""
    sp, dt, t = c.spec, c.dt, c.t
    h, T, E = sp.hidden, c.T, sp.experts
    slots = c.slots(T)                 # T top_k when dropless
    router = L.linear("moe.router", xin, T, h, E, rule="replicated", bias=sp.router_bias,
                      saved=c.Ts * h * dt, regather=regather)
    route = L.vector("moe.route", (router,), _ROUTE[sp.router], T * E, saved=T * E * 4, out_bytes=slots * dt,
                     kernels=c.route_kernels)
    disp = L.vector("moe.dispatch", (xin, route), "permute", slots * h,
                    in_bytes=(T * h * dt, slots * dt))
    disp = _sorted_by_expert(L, c, disp, "moe.sort_chunks", slots * h)
    down = _ffn(L, c, disp, "moe.expert", sp.expert_ffn // t, regather=0.0, keep_input=True,
                bias=sp.expert_bias, experts=E, tokens=slots)
    down = _sorted_by_expert(L, c, down, "moe.unsort_chunks", slots * h)
    out = L.vector("moe.combine", (down, route), "permute", T * h, in_bytes=(slots * h * dt, slots * dt),
                   saved=slots * h * dt + slots * dt)
    if sp.shared_ffn:
        sh = _ffn(L, c, xin, "moe.shared", sp.shared_ffn // t, regather=regather, keep_input=False,
                  bias=False)
        if sp.shared_gate:
            g = L.linear("moe.shared.gate_proj", xin, T, h, 1, rule="replicated", bias=False, saved=0.0)
            sh = L.vector("moe.shared.scale", (g, sh), "sigmoid", T * h, in_bytes=(T * dt, T * h * dt),
                          saved=T * dt + T * h * dt)
        out = L.vector("moe.add", (out, sh), "add", T * h, bwd="pass")
    return out


def _shared_expert_sp(L: _Layer, c: _Ctx, x: str, out: str) -> str:
    """Add a shared expert (Qwen2-MoE, DeepSeek) to the routed output `out` of an MoE layer
    whose input `x` is the device's Ts tokens (sequence parallel or t = 1): a dense MLP on
    the attention TP group, with Qwen2-MoE's sigmoid gate x w_g when it has one."""
    sp, dt, t = c.spec, c.dt, c.t
    h, Ts = sp.hidden, c.Ts
    if not sp.shared_ffn:
        return out
    srule = "sharded" if c.sp else "replicated"
    xin, regather = _enter_tp(L, c, x, "moe.shared", h)
    sh = _ffn(L, c, xin, "moe.shared", sp.shared_ffn // t, regather=regather,
              keep_input=False, bias=False)
    sh = _exit_tp(L, c, sh, "moe.shared", h)
    if sp.shared_gate:
        g = L.linear("moe.shared.gate_proj", x, Ts, h, 1, rule="replicated", bias=False, saved=0.0)
        sh = L.vector("moe.shared.scale", (g, sh), "sigmoid", Ts * h,
                      in_bytes=(Ts * dt, Ts * h * dt), saved=Ts * dt + Ts * h * dt, rule=srule)
    return L.vector("moe.add", (out, sh), "add", Ts * h, bwd="pass", rule=srule)


def _moe_folded(L: _Layer, c: _Ctx, x: str) -> str:
    """The MoE MLP with an expert tensor-parallel size et != t: Megatron-Core's MoE parallel
    folding (the expert layers get their own TP x EP x DP grid over the same devices;
    Liu et al. 2025, "MoE Parallel Folding"), as its alltoall token dispatcher runs it
    (MoEAlltoAllTokenDispatcher with pg_collection.expt_tp): the router on the device's
    own Ts tokens (T / t under sequence parallelism); their T_s top_k slots of width h go
    to their experts over the EP group (the chain's all-to-alls: moe.dispatch writes
    Ts k h); an all-gather over the et devices of the expert TP group ("etp") gives each
    et Ts k slots, the experts' grouped GEMMs are moe_ffn / et wide; a reduce-scatter over
    "etp" and the combine return each device its own tokens. A shared expert is a dense
    MLP on the attention TP group, as in `_moe_alltoall`. Per device: the same expert
    FLOPs as `_moe_alltoall` (et Ts k slots x ffn / et = T k / t slots of the whole
    width), experts' weights / et. Token dropping: the router sees the device's Ts tokens,
    so each Ts k above is routed_slots(Ts) (_Ctx.slots); et x that after the all-gather."""
    sp, dt, et = c.spec, c.dt, c.etp
    h, Ts, E = sp.hidden, c.Ts, sp.experts
    srule = "sharded" if c.sp else "replicated"
    own_slots = c.slots(Ts)            # this device's routed slots (Ts top_k when dropless)
    router = L.linear("moe.router", x, Ts, h, E, rule="replicated", bias=sp.router_bias,
                      saved=Ts * h * dt)
    route = L.vector("moe.route", (router,), _ROUTE[sp.router], Ts * E, saved=Ts * E * 4,
                     out_bytes=own_slots * dt, rule=srule, kernels=c.route_kernels)
    own = own_slots * h * dt
    disp = L.vector("moe.dispatch", (x, route), "permute", own_slots * h,
                    in_bytes=(Ts * h * dt, own_slots * dt), rule=srule)
    slots = et * own_slots
    if et > 1:
        disp = L.collective("moe.all_gather", disp, "all_gather", "reduce_scatter", et * own,
                            own, et * own, rule="sharded", group="etp")
    disp = _sorted_by_expert(L, c, disp, "moe.sort_chunks", slots * h)
    down = _ffn(L, c, disp, "moe.expert", sp.expert_ffn // et, regather=0.0, keep_input=True,
                bias=sp.expert_bias, experts=E, tokens=slots)
    down = _sorted_by_expert(L, c, down, "moe.unsort_chunks", slots * h)
    for n in L.nodes.values():   # the expert weights are sharded over et, not t
        if n.name.startswith("moe.expert.") and n.kind == "gemm":
            w = n.params_dev - n.bias_n
            n.params_unique = w * et + (n.bias_n if n.tp_rule == "row" else n.bias_n * et)
    if et > 1:
        down = L.collective("moe.reduce_scatter", down, "reduce_scatter", "all_gather", et * own,
                            et * own, own, rule="sharded", group="etp")
    out = L.vector("moe.combine", (down, route), "permute", Ts * h, in_bytes=(own, own_slots * dt),
                   saved=own + own_slots * dt, rule=srule)
    return _shared_expert_sp(L, c, x, out)


def _moe_alltoall(L: _Layer, c: _Ctx, x: str) -> str:
    """The MoE MLP under TP t > 1 with sequence parallelism as Megatron-Core's alltoall token
    dispatcher runs it (core_r0.8 MoEAlltoAllTokenDispatcher.token_permutation /
    token_unpermutation): the router on the device's T / t tokens; an all-to-all inside the
    TP group turns the sequence shard into a hidden shard (sp2hp: T tokens x h / t); the
    T top_k slots of h / t go to their experts over the EP group (the chain's all-to-alls:
    moe.dispatch writes T k h / t); an all-gather of the hidden dimension over TP gives the
    experts (ffn / t wide, grouped GEMMs over T k slots) whole rows; a reduce-scatter of
    their output over TP, the combine, and the inverse all-to-all (hp2sp) back to the
    sequence shard. A shared expert (Qwen2-MoE) is a dense TP MLP beside it. Same FLOPs
    and parameters per device as `_moe` after its all-gather, but the router runs on T / t
    tokens and the TP and EP traffic is the dispatcher's.
    Token dropping: the T k slots are t x routed_slots(Ts) (_Ctx.slots), the capacity of
    the Ts tokens one device's router sees, as current Megatron-Core computes it
    (MoEAlltoAllTokenDispatcher.preprocess: routing_map.size(0) tokens, its all-gather
    over TP then gives t x num_experts x capacity slots; core_r0.10 on, the Megatron-Core
    0.14 of NeMo 25.09). core_r0.8's router gathered the logits over TP first (router.py
    TopKRouter.routing) and took one capacity of the T tokens: ceil(T k / E x factor),
    the same up to rounding."""
    sp, dt, t = c.spec, c.dt, c.t
    h, T, Ts, E = sp.hidden, c.T, c.Ts, sp.experts
    slots = t * c.slots(Ts)            # the TP group's routed slots (T top_k when dropless)
    router = L.linear("moe.router", x, Ts, h, E, rule="replicated", bias=sp.router_bias,
                      saved=Ts * h * dt)
    route = L.vector("moe.route", (router,), _ROUTE[sp.router], Ts * E, saved=Ts * E * 4,
                     out_bytes=slots * dt, rule="sharded", kernels=c.route_kernels)
    hp = L.collective("moe.sp2hp", x, "all_to_all", "all_to_all", Ts * h * dt, Ts * h * dt,
                      Ts * h * dt, rule="sharded")
    disp = L.vector("moe.dispatch", (hp, route), "permute", slots * h // t,
                    in_bytes=(Ts * h * dt, slots * dt), rule="sharded")
    full = slots * h * dt
    gathered = L.collective("moe.all_gather", disp, "all_gather", "reduce_scatter", full,
                            full / t, full, rule="sharded")
    gathered = _sorted_by_expert(L, c, gathered, "moe.sort_chunks", slots * h)
    down = _ffn(L, c, gathered, "moe.expert", sp.expert_ffn // t, regather=0.0, keep_input=True,
                bias=sp.expert_bias, experts=E, tokens=slots)
    down = _sorted_by_expert(L, c, down, "moe.unsort_chunks", slots * h)
    rs = L.collective("moe.reduce_scatter", down, "reduce_scatter", "all_gather", full, full,
                      full / t, rule="sharded")
    comb = L.vector("moe.combine", (rs, route), "permute", T * h // t,
                    in_bytes=(full / t, slots * dt), saved=full / t + slots * dt, rule="sharded")
    out = L.collective("moe.hp2sp", comb, "all_to_all", "all_to_all", Ts * h * dt, Ts * h * dt,
                       Ts * h * dt, rule="sharded")
    return _shared_expert_sp(L, c, x, out)


def _block(c: _Ctx, sliding: bool = False, mixer: str = "attention", ffn: str = "") -> BuiltLayer:
    """One transformer block: pre-norm (GPT-2, Llama), post-norm (BERT, OPT-350M), parallel
    attention + MLP (GPT-J/NeoX, Falcon) or Gemma2's sandwich (norm before and after each).
    `mixer` "none" or `ffn` "none": a pre-norm block of one residual branch only (hybrid
    models' FFN-only and mixer-only layers); `ffn`: "dense" | "moe" ("": the model's)."""
    sp, L, dt = c.spec, _Layer(c.dt, c.t, c.etp, c.local_experts), c.dt
    h, Ts = sp.hidden, c.Ts
    srule = "sharded" if c.sp else "replicated"
    L.out_of["in_elements"] = Ts * h

    def residual(name, y, x):
        return L.vector(name, (y, x), "add", Ts * h, rule=srule, bwd="pass")

    x = "in"
    if mixer == "none" or ffn == "none":   # one branch (spec.validate: pre-norm only)
        if mixer == "none":
            y = _dropout(L, c, "mlp.out_dropout", _mlp(L, c, _norm(L, c, "ln2", x), ffn), Ts * h, srule)
        else:
            y = _dropout(L, c, "attn.out_dropout", _mixer(L, c, _norm(L, c, "ln1", x), sliding, mixer),
                         Ts * h, srule)
        residual("residual1", y, x)
    elif sp.parallel_block:
        n1 = _norm(L, c, "ln1", x)
        n2 = n1 if sp.shared_norm else _norm(L, c, "ln2", x, keep_input=False)
        ya = _dropout(L, c, "attn.out_dropout", _mixer(L, c, n1, sliding, mixer), Ts * h, srule)
        ym = _dropout(L, c, "mlp.out_dropout", _mlp(L, c, n2, ffn), Ts * h, srule)
        r1 = residual("residual1", ya, x)
        residual("residual2", ym, r1)
    elif sp.sandwich_norm:
        y = _norm(L, c, "attn.post_norm", _mixer(L, c, _norm(L, c, "ln1", x), sliding, mixer))
        y = _dropout(L, c, "attn.out_dropout", y, Ts * h, srule)
        r1 = residual("residual1", y, x)
        y = _norm(L, c, "mlp.post_norm", _mlp(L, c, _norm(L, c, "ln2", r1), ffn))
        y = _dropout(L, c, "mlp.out_dropout", y, Ts * h, srule)
        residual("residual2", y, r1)
    elif sp.pre_norm:
        y = _mixer(L, c, _norm(L, c, "ln1", x), sliding, mixer)
        y = _dropout(L, c, "attn.out_dropout", y, Ts * h, srule)
        r1 = residual("residual1", y, x)
        y = _mlp(L, c, _norm(L, c, "ln2", r1), ffn)
        y = _dropout(L, c, "mlp.out_dropout", y, Ts * h, srule)
        residual("residual2", y, r1)
    else:
        y = _mixer(L, c, x, sliding, mixer)
        y = _dropout(L, c, "attn.out_dropout", y, Ts * h, srule)
        r1 = residual("residual1", y, x)
        n1 = _norm(L, c, "ln1", r1)
        y = _mlp(L, c, n1, ffn)
        y = _dropout(L, c, "mlp.out_dropout", y, Ts * h, srule)
        r2 = residual("residual2", y, n1)
        _norm(L, c, "ln2", r2)          # post-norm: the block's output
    io = Ts * h * dt
    return BuiltLayer(L, io, io, io)


def _prologue(c: _Ctx) -> BuiltLayer:
    sp, L, dt = c.spec, _Layer(c.dt, c.t), c.dt
    h, e, T, Ts = sp.hidden, sp.embed_dim, c.T, c.Ts
    srule = "sharded" if c.sp else "replicated"
    L.out_of["in_elements"] = 0
    # vocabulary-parallel lookup: each device holds ceil(V/t) rows, masked partial sums
    x = L.vector("embed.word", ("in",), "embedding", T * e, in_bytes=(T * TOKEN_ID_BYTES,),
                 saved=T * TOKEN_ID_BYTES, rule="vocab", bwd="leaf", params=c.vt * e,
                 unique=c.vocab * e)
    if c.t > 1:
        full = T * e * dt
        if c.sp:
            x = L.collective("embed.reduce_scatter", x, "reduce_scatter", "all_gather", full, full,
                             full / c.t, rule="sharded")
        else:
            x = L.collective("embed.all_reduce", x, "all_reduce", "", full, full, full)
    if sp.embed_proj_dim:
        x = L.linear("embed.project_in", x, Ts, e, h, rule="replicated", bias=False,
                     saved=Ts * e * dt)
    if sp.position == "learned":
        x = L.vector("embed.position", (x,), "embedding", Ts * h, rule=srule, bwd="pass_leaf",
                     params=sp.position_rows * h)
    if sp.token_types:
        x = L.vector("embed.token_type", (x,), "embedding", Ts * h, rule=srule, bwd="pass_leaf",
                     params=sp.token_types * h)
    if sp.embed_norm:
        x = _norm(L, c, "embed.norm", x)
    x = _dropout(L, c, "embed.dropout", x, Ts * h, srule)
    return BuiltLayer(L, T * TOKEN_ID_BYTES, Ts * h * dt, 0.0)


def _epilogue(c: _Ctx) -> BuiltLayer:
    sp, L, dt = c.spec, _Layer(c.dt, c.t), c.dt
    h, e, T, Ts = sp.hidden, sp.embed_dim, c.T, c.Ts
    srule = "sharded" if c.sp else "replicated"
    L.out_of["in_elements"] = Ts * h
    x = "in"
    if sp.pooler:  # BERT pooler: dense + tanh on the first token of each sequence
        p = L.linear("pooler.dense", x, c.b, h, h, rule="replicated", bias=True,
                     saved=c.b * h * dt)
        L.vector("pooler.tanh", (p,), "tanh", c.b * h, saved=c.b * h * dt)
    if sp.final_norm:
        x = _norm(L, c, "final_norm", x)
    if sp.mlm_head:
        x = L.linear("mlm.dense", x, Ts, h, h, rule=srule, bias=True,
                     saved=Ts * h * dt)
        x = L.vector("mlm.act", (x,), "gelu", Ts * h, saved=Ts * h * dt, rule=srule)
        x = _norm(L, c, "mlm.norm", x)
    if sp.embed_proj_dim:
        x = L.linear("embed.project_out", x, Ts, h, e, rule=srule, bias=False,
                     saved=Ts * h * dt)
    xin, regather = _enter_tp(L, c, x, "lm_head", e)
    tied = sp.tied_embeddings
    bias = sp.mlm_head  # BERT's decoder has an output bias
    vt = c.vt
    # tied: the head's weight is the embedding's (shared_param_bytes); only a bias is its own
    logits = L.linear("lm_head", xin, T, e, vt, rule="vocab", bias=bias,
                      saved=Ts * e * dt, regather=regather,
                      unique=(c.vocab if bias else 0) + (0 if tied else c.vocab * e),
                      shared=e * vt if tied else 0)
    if sp.final_softcap:  # Gemma2: cap * tanh(logits / cap), tanh keeps its output
        logits = L.vector("lm_head.softcap", (logits,), "tanh", T * vt, saved=T * vt * dt, rule="vocab")
    loss = L.vector("loss", (logits,), "cross_entropy", T * vt, saved=T * vt * LOGIT_BYTES, rule="vocab")
    if c.t > 1:  # vocab-parallel cross entropy: all-reduce max, sum of exp and target logit (fp32)
        stats = 3 * T * 4
        L.collective("loss.all_reduce", loss, "all_reduce", "", stats, stats, stats)
    return BuiltLayer(L, Ts * h * dt, 0.0, 0.0)
