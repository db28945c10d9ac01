"""The default-mode DP's input: a model as a chain of layer instances for one TP width t.

Everything is per device of a TP group of width t, for one microbatch of `mbs` samples:
  fwd_s, bwd_s       forward / backward latency of the layer (TP collectives included)
  tp_fwd_s, tp_bwd_s the part of fwd_s / bwd_s spent in TP collectives (breakdown only)
  param_count        parameters of the layer's shard
  act_bytes(mode)    activation bytes kept for backward per microbatch, by recompute mode:
                     none (everything), selective (the attention core's s^2 tensors are
                     not kept), full (only a block's input is kept)
  recompute_s(mode)  time re-run before the backward: full = the forward, selective = the
                     attention core (recompute_selective_s, scheduled on its own)
  work_bytes(mode)   what recomputation rematerialises for one layer at a time during its
                     backward: act_none - act_bytes(mode) (0 for layers never recomputed)
  out_bytes          bytes of the activation leaving the layer (pipeline p2p payload)
  flops_fwd/bwd      model FLOP of the layer per microbatch on one device (MFU only; routed
                     experts on T x top_k slots whatever token dropping computes)
  kinds              "prologue" | "block" | "epilogue" (uniform Megatron splits use blocks)
  expert_param_count parameters of the layer's routed experts (part of param_count; 0 for
                     dense layers): expert parallelism shards them (phaze.place.plan)
  a2a_bytes          bytes one device sends in one all-to-all of an MoE layer per
                     microbatch (the dispatched token slots, T top_k h x 2 B; 0 if dense)
  core_fwd_s, core_bwd_s, core_recompute_s
                     the attention core's part of fwd_s, bwd_s, recompute_selective_s
                     (context parallelism repeats it per ring step: phaze.place.plan.
                     context_parallel_chain)
  kv_bytes           K and V of one device's sequence chunk per microbatch (attention
                     layers; 0 elsewhere): what a context-parallel ring step sends
  core_flops_fwd, core_flops_bwd, core_flops_recompute
                     the attention core's part of flops_fwd, flops_bwd,
                     flops_recompute_selective (one ring step; MFU only)

`chain_from_graph` adapts a ModelGraph (phaze/model/ops.py) plus per-layer latencies (the
scheduler's merged table, or any per-op latency function summed serially) to a Chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from phaze.model.graph import attention_band, cp_core_flop_steps, cp_core_steps
from phaze.model.ops import is_attention_core


@dataclass(frozen=True)
class Chain:
    t: int
    mbs: int
    seq: int
    fwd_s: np.ndarray
    bwd_s: np.ndarray
    param_count: np.ndarray
    act_none_bytes: np.ndarray
    act_full_bytes: np.ndarray
    out_bytes: np.ndarray
    kinds: tuple[str, ...]
    act_selective_bytes: np.ndarray | None = None     # default: act_none_bytes
    recompute_selective_s: np.ndarray | None = None   # default: 0
    flops_recompute_selective: np.ndarray | None = None  # FLOP selective recompute re-runs
    # parameters of the epilogue (a tied LM head) that are the prologue's embedding: one
    # copy when one device holds both (Megatron), i.e. a single pipeline stage
    shared_param_count: float = 0.0
    tp_fwd_s: np.ndarray | None = None
    tp_bwd_s: np.ndarray | None = None
    expert_param_count: np.ndarray | None = None      # default: 0 (dense)
    a2a_bytes: np.ndarray | None = None               # default: 0 (dense)
    core_fwd_s: np.ndarray | None = None              # default: 0 (no CP ring modelled)
    core_bwd_s: np.ndarray | None = None
    core_recompute_s: np.ndarray | None = None
    kv_bytes: np.ndarray | None = None                # default: 0
    core_flops_fwd: np.ndarray | None = None          # default: 0
    core_flops_bwd: np.ndarray | None = None
    core_flops_recompute: np.ndarray | None = None
    flops_fwd: np.ndarray | None = None
    flops_bwd: np.ndarray | None = None
    model: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.fwd_s)
        if self.act_selective_bytes is None:
            object.__setattr__(self, "act_selective_bytes", self.act_none_bytes)
        for name in ("act_selective_bytes", "recompute_selective_s",
                     "flops_recompute_selective", "fwd_s", "bwd_s", "param_count", "act_none_bytes", "act_full_bytes",
                     "out_bytes", "tp_fwd_s", "tp_bwd_s", "flops_fwd", "flops_bwd",
                     "expert_param_count", "a2a_bytes", "core_fwd_s", "core_bwd_s",
                     "core_recompute_s", "kv_bytes", "core_flops_fwd", "core_flops_bwd",
                     "core_flops_recompute"):
            v = getattr(self, name)
            if v is None:
                v = np.zeros(n)
            v = np.asarray(v, dtype=float)
            if v.shape != (n,):
                raise ValueError(f"Chain.{name} must have {n} entries, got shape {v.shape}")
            if (v < 0).any() or not np.isfinite(v).all():
                raise ValueError(f"Chain.{name} must be finite and >= 0")
            object.__setattr__(self, name, v)
        if len(self.kinds) != n:
            raise ValueError("Chain.kinds must name every layer")
        if (self.expert_param_count > self.param_count).any():
            raise ValueError("Chain.expert_param_count must not exceed param_count")
        if self.t < 1 or self.mbs < 1:
            raise ValueError("Chain.t and Chain.mbs must be >= 1")

    @property
    def n(self) -> int:
        return len(self.fwd_s)

    def act_bytes(self, recompute: str) -> np.ndarray:
        return {"none": self.act_none_bytes, "selective": self.act_selective_bytes,
                "full": self.act_full_bytes}[recompute]

    @property
    def block_mask(self) -> np.ndarray:
        """1.0 for a transformer block, 0.0 for the prologue and epilogue: what full
        recomputation re-runs (Megatron checkpoints the transformer layers only, never the
        embedding or the output layer and loss)."""
        return np.array([0.0 if k in ("prologue", "epilogue") else 1.0 for k in self.kinds])

    def recompute_s(self, recompute: str) -> np.ndarray:
        return {"none": np.zeros(self.n), "selective": self.recompute_selective_s,
                "full": self.fwd_s * self.block_mask}[recompute]

    def work_bytes(self, recompute: str) -> np.ndarray:
        return np.maximum(self.act_none_bytes - self.act_bytes(recompute), 0.0)

    def block_span(self) -> tuple[int, int]:
        """(first block index, one past the last block); prologue before, epilogue after."""
        blocks = [k for k, kind in enumerate(self.kinds) if kind not in ("prologue", "epilogue")]
        if not blocks:
            return 0, self.n
        return blocks[0], blocks[-1] + 1


def _fp8_saved_delta(fwd, recipe: str) -> tuple[float, float]:
    """Bytes an FP8 layer keeps beyond the bf16 graph's (recompute none, selective), from
    its forward ops `fwd`. Per FP8 linear (phaze.cost.api.is_fp8_gemm), of saved input s
    (the graph's bf16 bytes, of which selective recomputation drops Op.selective_drop):
    - in general the FP8 copy replaces the bf16 input: -s / 2; under selective, -(s -
      drop) / 2, or 0 for a linear the recomputation re-runs (a checkpoint keeps its
      module's input in bf16; Megatron-Core's output-discarding modules, layernorm and
      moe_act, make the consumer save its original input, discarded: the drop);
    - the output projection of the attention core (attn.proj): with the delayed recipe its
      FP8 copy comes beside the bf16 O the fused core keeps for its own backward while the
      core is not recomputed (TE FusedAttnFunc saves q, k, v, out): +s / 2, and -s / 2
      where the core is recomputed (an eager core keeps no O: -s / 2); with tensorwise /
      blockwise, Megatron-Core makes linear_proj save its original input, the core's bf16
      O (megatron/core/transformer/attention.py set_save_original_input(linear_proj):
      "the output of the fused core_attn is saved by itself", fp8_recipe != 'delayed',
      TE >= 2.6, core_r0.15 on): 0;
    - a linear whose bf16 input the graph counts at another op (saved 0: MLA's kv_down
      beside q_down, a shared expert's fc1 beside the bf16 router) quantizes and keeps its
      own copy: + its input's bytes / 2 (the source op's output, past collectives: the
      local shard under sequence parallelism), under selective unless it is re-run or its
      source is (a discarded norm output)."""
    from phaze.cost.api import is_fp8_gemm

    by_name = {o.name: o for o in fwd}

    def source(o):
        src = by_name.get(o.deps[0]) if len(o.deps) == 1 else None
        while src is not None and src.kind == "collective" and len(src.deps) == 1:
            src = by_name.get(src.deps[0])
        return src

    d_none = d_sel = 0.0
    for o in fwd:
        if o.kind != "gemm" or not is_fp8_gemm(o):
            continue
        s, kept = o.saved_bytes, o.saved_bytes - o.selective_drop
        src = source(o)
        if src is not None and is_attention_core(src) and s > 0:
            if recipe != "delayed":
                continue
            flash = src.name.endswith("attn.core")
            d_none += s / 2 if flash else -s / 2
            if not o.selective_recompute:
                d_sel += kept / 2 if flash and not src.selective_recompute else -kept / 2
        elif s == 0 and src is not None:
            own = src.bytes_written / 2
            d_none += own
            if not (o.selective_recompute or src.selective_recompute):
                d_sel += own
        else:
            d_none -= s / 2
            if not o.selective_recompute:
                d_sel -= kept / 2
    return d_none, d_sel


# ops that work on an MoE layer's routed token slots (phaze.model.graph._moe*): the experts
# and the permutations before them
_ROUTED_SLOT_OPS = ("moe.expert.", "moe.dispatch", "moe.sort_chunks", "moe.unsort_chunks")


def _model_flops(ops, moe_ratio: float) -> float:
    """Model FLOPs of a pass's ops (flops_fwd / flops_bwd: MFU): what they execute, the ops
    on routed token slots counted on the T x top_k slots Megatron's
    num_floating_point_operations takes (ModelGraph.moe_model_flops_ratio): token dropping
    computes fewer or, padded, more slots than the model has, and neither is model work."""
    return sum((o.flops - o.rerun_flops)
               * (moe_ratio if o.experts or o.name.startswith(_ROUTED_SLOT_OPS) else 1.0)
               for o in ops)


def chain_from_graph(graph, layer_latency: Mapping[int, tuple] | None = None,
                     op_latency_s: Callable | None = None,
                     layer_tp_s: Mapping[int, tuple[float, float]] | None = None,
                     layer_core_s: Mapping[int, tuple] | None = None,
                     kv_bytes: float | None = None, fp8: bool = False,
                     fp8_recipe: str = "delayed", causal_cores: bool = False) -> Chain:
    """Chain of a ModelGraph. Latencies per layer kind come from `layer_latency`
    {index into graph.layers: (fwd_s, bwd_s, recompute_selective_s)} (the scheduler's
    result; a missing third entry means 0), or else from summing `op_latency_s(op)` over
    each pass's ops (a device runs ops serially when unscheduled). TP collective time
    (ops of kind "collective") is summed for the breakdown (or given as `layer_tp_s`
    {index: (fwd_s, bwd_s)} together with `layer_latency`); likewise the attention core's
    time (`is_attention_core` ops; or `layer_core_s` {index: (fwd_s, bwd_s, recompute_s)}).
    `kv_bytes` (bytes): K and V of one device's chunk per microbatch, set on the layers
    with an attention core (context parallelism's ring payload; 0: none; default: the
    graph's own, graph.kv_bytes, when it was built for cp > 1, else 0).
    `fp8`: the blocks' linears run in FP8 (Transformer Engine) under Megatron-Core's
    --fp8-recipe `fp8_recipe`: each keeps its input for the weight gradient as the FP8
    copy it quantized, 1 B per element instead of the graph's 2 (TE module/linear.py
    forward: "Discard row-wise data since it is not needed in backward pass",
    saved_inputmat = the quantized input; LayerNormLinear's ln_out and GroupedLinear's
    inputs alike; the per-block scales are negligible), per layer as _fp8_saved_delta
    counts it (a block under full recomputation keeps only its bf16 input).
    The chain's seq is the full sequence (graph.seq; a device's ops hold seq / graph.cp).
    Its FLOPs are those of the graph's ops (one ring step of the attention core under
    cp > 1; plan.context_parallel_chain adds the other cp - 1, `core_flops_*`).
    `causal_cores`: the attention cores' times charge their causal band
    (CostParams.flash_causal, the GPU presets' route) rather than their whole queries x
    keys rectangle (the sweep's cost model): under CP a sliding window's layer then runs
    cp_core_steps local cores, else cp_core_flop_steps (the rectangle's count)."""
    if kv_bytes is None:
        kv_bytes = graph.kv_bytes if graph.cp > 1 else 0.0
    if layer_latency is None and op_latency_s is None:
        raise ValueError("chain_from_graph needs layer_latency or op_latency_s")
    rows, reruns, cp_steps, cp_busiest, cp_flop_steps, skipped = [], [], [], [], [], []
    reruns_core = []
    routed_excess = 0.0
    ratio = getattr(graph, "moe_model_flops_ratio", 1.0)   # routed slots' model FLOPs
    for li, layer in enumerate(graph.layers):
        if op_latency_s is not None:
            tpf = sum(op_latency_s(o) for o in layer.fwd if o.kind == "collective")
            tpb = sum(op_latency_s(o) for o in layer.bwd if o.kind == "collective")
        else:
            tpf, tpb = (layer_tp_s or {}).get(li, (0.0, 0.0))
        if op_latency_s is not None and layer_core_s is None:
            core = tuple(sum(op_latency_s(o) for o in ops if is_attention_core(o))
                         for ops in (layer.fwd, layer.bwd, layer.selective_recompute_ops()))
        else:
            core = tuple((layer_core_s or {}).get(li, (0.0, 0.0, 0.0)))
        kv = kv_bytes if any(is_attention_core(o) for o in layer.fwd) else 0.0
        # the cores' model FLOPs per pass (fwd, bwd, selective recompute), and the forward
        # work the fused backward re-computes (Op.rerun_flops: hardware FLOPs only)
        core_flops = tuple(sum(o.flops - o.rerun_flops for o in ops if is_attention_core(o))
                           for ops in (layer.fwd, layer.bwd, layer.selective_recompute_ops()))
        core_rerun = sum(o.rerun_flops for o in layer.bwd if is_attention_core(o))
        if layer_latency is not None:
            f, b, *r = layer_latency[li]
            r = r[0] if r else 0.0
        else:
            f = sum(op_latency_s(o) for o in layer.fwd)
            b = sum(op_latency_s(o) for o in layer.bwd)
            r = sum(op_latency_s(o) for o in layer.selective_recompute_ops())
        acts = layer.activation_bytes or {}
        a_none = acts.get("none", sum(o.saved_bytes for o in layer.fwd))
        a_full = acts.get("full", layer.input_bytes)
        a_sel = acts.get("selective", a_none)
        pass_kind = layer.kind if layer.kind in ("prologue", "epilogue") else "block"
        if fp8:
            d_none, d_sel = _fp8_saved_delta(layer.fwd, fp8_recipe)
            a_none += d_none
            a_sel += d_sel
            if pass_kind != "block":     # never recomputed: its "full" is its selective
                a_full += d_sel
        f_sel = sum(o.flops for o in layer.selective_recompute_ops())
        # routed experts: their weights (Op.experts > 0) and the dispatch's token slots
        ex = layer.expert_param_bytes() / graph.dtype_bytes
        a2a = sum(o.bytes_written for o in layer.fwd if o.name.endswith("moe.dispatch"))
        # selective recomputation re-runs the dispatch (Megatron-Core's "moe" module
        # checkpoints the whole MoE layer: route, dispatch, experts, combine)
        reruns.extend([float(any(o.selective_recompute for o in layer.fwd
                                 if o.name.endswith("moe.dispatch")))] * layer.repeat)
        window = int(getattr(layer, "attention_window", 0))
        flop_steps = cp_core_flop_steps(graph.seq, graph.cp, window)
        cp_flop_steps.extend([flop_steps] * layer.repeat)
        cp_steps.extend([cp_core_steps(graph.seq, graph.cp, window) if causal_cores
                         else flop_steps] * layer.repeat)
        cp_busiest.extend([cp_core_steps(graph.seq, graph.cp, window, busiest=True)
                           if causal_cores else flop_steps] * layer.repeat)
        # FLOPs of the attention cores' rectangle the fused causal kernel skips (outside
        # the causal band: half the square, most of a short window's rectangle), over the
        # cp_core_flop_steps local cores CP runs: model FLOPs count them, hardware FLOPs not
        skip = (1.0 - attention_band(graph.seq, window)
                / (graph.seq * (min(window, graph.seq) if window > 0 else graph.seq))
                ) * flop_steps if causal_cores else 0.0
        executed = (core_flops[0], core_flops[1] + core_rerun, core_flops[2])
        skipped.extend([tuple(skip * x for x in executed)] * layer.repeat)
        reruns_core.extend([core_rerun * flop_steps] * layer.repeat)
        model_f, model_b = _model_flops(layer.fwd, ratio), _model_flops(layer.bwd, ratio)
        routed_excess += (layer.flops("fwd") + layer.flops("bwd") - model_f - model_b
                          - sum(o.rerun_flops for o in (*layer.fwd, *layer.bwd))) * layer.repeat
        row = (f, b, tpf, tpb, layer.param_count, a_none, a_full, layer.output_bytes,
               model_f, model_b, a_sel, r, f_sel,
               min(ex, layer.param_count), a2a, *core, kv, *core_flops, pass_kind)
        rows.extend([row] * layer.repeat)
    cols = list(zip(*rows))
    arr = [np.array(c, dtype=float) for c in cols[:-1]]
    return Chain(t=graph.tp, mbs=graph.mbs, seq=graph.seq, fwd_s=arr[0], bwd_s=arr[1],
                 tp_fwd_s=arr[2], tp_bwd_s=arr[3], param_count=arr[4], act_none_bytes=arr[5],
                 act_full_bytes=arr[6], out_bytes=arr[7], flops_fwd=arr[8], flops_bwd=arr[9],
                 act_selective_bytes=arr[10], recompute_selective_s=arr[11],
                 flops_recompute_selective=arr[12], expert_param_count=arr[13],
                 a2a_bytes=arr[14], core_fwd_s=arr[15], core_bwd_s=arr[16],
                 core_recompute_s=arr[17], kv_bytes=arr[18], core_flops_fwd=arr[19],
                 core_flops_bwd=arr[20], core_flops_recompute=arr[21], kinds=tuple(cols[-1]),
                 model=graph.model,
                 shared_param_count=sum(lg.shared_param_bytes for lg in graph.layers
                                        if lg.kind == "epilogue") / graph.dtype_bytes,
                 extra={"sequence_parallel": bool(graph.sequence_parallel),
                        # FLOPs token dropping executes beyond (padding) or short of the
                        # model's, per microbatch on one device (hardware FLOPs: HFU)
                        "routed_flops_excess": routed_excess,
                        "expert_tp": int(graph.expert_tp or graph.tp),
                        # the expert-parallel size its expert GEMMs were grouped for (0: none)
                        "ep": int(graph.ep),
                        "moe_experts": int(graph.moe_experts), "moe_top_k": int(graph.moe_top_k),
                        # the dispatcher its layer times assume, where it changes them
                        # (graph.build_graph: several local experts); None: either
                        "moe_dispatcher": (getattr(graph, "moe_dispatcher", "alltoall")
                                           if graph.ep and graph.moe_experts // graph.ep > 1
                                           else None),
                        # the token dropping its MoE layers' routed slots were built for
                        # (graph.routed_slots; None / False: dropless)
                        "moe_expert_capacity_factor": getattr(
                            graph, "moe_expert_capacity_factor", None),
                        "moe_pad_expert_input_to_capacity": bool(getattr(
                            graph, "moe_pad_expert_input_to_capacity", False)),
                        "a2a_rerun": np.array(reruns),
                        # local attention cores per whole-sequence attention under CP
                        # (graph.cp_core_steps: cp, fewer for a sliding window; on the
                        # busiest device of the chunked split, which the all-gather CP
                        # runs) and their model FLOPs' count (graph.cp_core_flop_steps)
                        "cp_core_steps": np.array(cp_steps),
                        "cp_core_steps_busiest": np.array(cp_busiest),
                        "cp_core_flop_steps": np.array(cp_flop_steps),
                        # per layer and microbatch on one device: the cores' model FLOPs
                        # (fwd, bwd, selective recompute) the causal kernel does not run
                        "core_skipped_flops": np.array(skipped, dtype=float).reshape(-1, 3),
                        # ... and the forward work their fused backward re-computes, CP's
                        # further cores included (executed, not model FLOPs)
                        "core_rerun_flops": np.array(reruns_core, dtype=float),
                        # Q and O of a layer with kv_bytes (the all-to-all CP's payload
                        # beside K and V; 0: a graph saved before they were recorded)
                        "cp_q_bytes": float(getattr(graph, "q_bytes", 0.0)),
                        "cp_o_bytes": float(getattr(graph, "o_bytes", 0.0))})
