"""One fixed training plan of a model on one arch: time per batch, breakdown, memory.

Two models of a device, named by what they reproduce:
  * evaluate_model (an arch preset such as a100/h100: Megatron-LM on GPUs, validated in
    docs/validate.md): each op of a pass runs on all cores of its class (intra-op), one
    after the other (a GPU runs a layer's kernels in order), from the cost model
    (phaze.cost.api.op_latencies) with the preset's calibrated parameters, and Megatron's
    training settings (MEGATRON_OPTIONS); TP collectives are summed apart for the
    breakdown.
  * evaluate_sweep_plan (an arch of a grid: exactly what the sweep computes): the layers
    scheduled by the per-layer ILPs (phaze.sched.layers, through the same ILP cache as
    the workflow) and the sweep's plan options, network and peak FLOP/s; given a
    placement row's plan it reproduces the row. TFLOP/s per GPU uses Narayanan et al. (SC'21) Eq. 3:
  with full recomputation    F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h))
  without recomputation      F = 72 B s l h^2 (1 + s/(6h) + V/(12 l h))
(the logit layer is never recomputed: 6 B s h V FLOP either way), divided by time and GPUs.
"""

from __future__ import annotations

from phaze import __version__
from phaze.cost.params import FP8_RECIPES
from phaze.place.chain import chain_from_graph
from phaze.place.plan import (Links, PlanOptions, adam_step_bytes, check_stages, evaluate_plan,
                              options_record)
from phaze.settings import check_recompute


def narayanan_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int,
                    recompute: bool) -> float:
    B, s, l, h, V = batch, seq, layers, hidden, vocab
    if recompute:
        return 96.0 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    return 72.0 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))


# Megatron-LM's training settings that `phaze evaluate` models by default (docs/place.md):
# the Megatron-LM of Korthikanti MLSys'23 (2022): bf16 with fp32 main gradients (2 + 4 + 12
# = 18 B/param with Adam, Korthikanti Figure 1) accumulated inside the dW GEMM
# (--gradient-accumulation-fusion, Megatron-LM since 2022-02), the optimizer step timed as
# a memory-bound pass, scatter/gather pipeline p2p.
# DP/CP collectives as NCCL runs them (collectives="nccl": NVLink inside a node, every NIC
# of a node between nodes, ring or tree; phaze.cost.collective).
# optimizer step: fp32 grads and Adam state, bf16 weights, adam_step_bytes: 42 B/param
MEGATRON_OPTIONS = dict(grad_bytes=4.0, optimizer_bytes_per_param=adam_step_bytes(4.0, 12.0, 2.0),
                        p2p_scatter_gather=True, collectives="nccl",
                        async_tensor_model_parallel_allreduce=True)

# Framework profiles: the plan options (PlanOptions), graph options (build_graph) and kernel
# switches (CostParams) a framework version uses BY DEFAULT or in its published runs
# (docs/validate.md "Frameworks"). `evaluate_model(framework=...)`, `phaze evaluate
# --framework`.
#  megatron-lm-2022 (default): Megatron-LM of Korthikanti MLSys'23 (= MEGATRON_OPTIONS; read
#     at commit 2e90a342): fp32 main grads all-reduced fp32, eager attention (softmax
#     materialised, Megatron's fused scale-mask-softmax), scatter/gather p2p; the backward
#     TP collectives of column-parallel linears beside their weight GEMMs
#     (async_tensor_model_parallel_allreduce, on by default), bias add / bias gradient as
#     eager kernels (graph unfused_bias), optimizer step 42 B/param: grad norm 4, apex
#     FusedAdam 16 + 12, fp32 -> bf16 copy 4 + 2, grad-buffer zeroing 4.
#  megatron-lm-2021: Megatron-LM of Narayanan SC'21 as its reproduction scripts run it
#     (examples/sc21: --fp16, static loss scale): fp16 gradients (2 B/param) all-reduced in
#     fp16 (accumulate_allreduce_grads_in_fp32 is off for fp16), accumulated over
#     microbatches by PyTorch's AccumulateGrad (`grad += new`: 6 B/param per microbatch;
#     gradient-accumulation fusion came in 2022), and the fp16 optimizer's step: fp16 ->
#     fp32 grad copy (2 + 4), unscale + inf check (4 + 4), grad-norm (4), Adam (28), fp32
#     -> fp16 param copy (4 + 2) = 52 B/param. DDP implementation per run (DDP_IMPLS). No
#     asynchronous TP backward (it came 2021-09, commit 16c90445); LayerNorm backward in two
#     passes (graph apex_layernorm: the code's fused_mix_prec_layer_norm_cuda); bias kernels
#     as in 2022.
#  megatron-core-2024: Megatron-LM/Megatron-Core core_r0.6-0.9 as in its README's H100 weak
#     scaling runs: --use-distributed-optimizer (reduce-scatter fp32 grads: bf16 training
#     forces accumulate_allreduce_grads_in_fp32; all-gather bf16 params), --overlap-grad-
#     reduce, --overlap-param-gather, --tp-comm-overlap, p2p overlap of the interleaved
#     schedule (default on since core_r0.5), Transformer Engine flash attention
#     (cuDNN/FA2, causal). Kernels as Megatron-Core's TE layer spec
#     (get_gpt_layer_with_transformer_engine_spec) runs them: TE LayerNormLinear runs the
#     norm as its own kernel before the GEMM; bias-GELU / SwiGLU and bias-dropout-add are
#     Megatron's jit-fused functions, kernels of their own and not GEMM epilogues (phaze's
#     fused=False graph; it counts dropout and add as two passes where the jit kernel
#     makes one: a slight over-count); biases in the GEMM epilogues (TE); the optimizer
#     step 38 B/param of each rank's shard; without --tp-comm-overlap TE's linears overlap
#     the backward TP collectives like Megatron's asynchronous path.
#  nemo-2024: NeMo 24.x runs Megatron-Core with the same defaults (its recipes switch the
#     same overlaps on).
#  megatron-deepspeed: DeepSpeed ZeRO-1 (optimizer state sharded; reduce-scatter + all-gather,
#     not overlapped, overlap_comm False by default), fp32 gradient reduction, flash attention
#     optional (eager by default); bf16 gradients copied into fp32 after every microbatch's
#     backward (BF16_Optimizer.update_hp_grads, DeepSpeed since 2022-04: `hp.add_(lp.to(fp32))`
#     reads 2, writes a 4 B temporary, reads 4 + 4 and writes 4 = 18 B/param). Kernels of
#     the Megatron-LM 2021 it forked (bias kernels, two-pass LayerNorm backward, no
#     asynchronous TP backward; assumed from the fork point, not read in the fork).
#     DeepSpeed's pipeline engine sends whole activations and gradients between stages
#     (PipelineEngine._exec_send_activations / _exec_send_grads: p2p.send of the full
#     tensor, DeepSpeed 559c4ce1, 2021-12): no scatter-gather over the TP group; and its
#     TrainSchedule issues each receive and send as a blocking command of its own
#     (RecvActivation, SendGrad, SendActivation, RecvGrad), so they do not overlap
#     (PlanOptions.p2p_blocking).
DEFAULT_FRAMEWORK = "megatron-lm-2022"
FRAMEWORKS = {
    "megatron-lm-2022": dict(plan=dict(MEGATRON_OPTIONS), graph=dict(unfused_bias=True), cost={}),
    "megatron-lm-2021": dict(
        plan=dict(MEGATRON_OPTIONS, grad_bytes=2.0, dp_reduce_bytes=2.0,
                  grad_accum_bytes_per_param=6.0, optimizer_bytes_per_param=52.0,
                  async_tensor_model_parallel_allreduce=False),
        graph=dict(unfused_bias=True, apex_layernorm=True), cost={}),
    "megatron-core-2024": dict(
        plan=dict(grad_bytes=4.0, optimizer_bytes_per_param=38.0, collectives="nccl",
                  dp_reduce_bytes=4.0, distributed_optimizer=True, overlap_grad_reduce=True,
                  overlap_param_gather=True, tp_comm_overlap=True, overlap_p2p=True,
                  async_tensor_model_parallel_allreduce=True, last_bucket_holds_prologue=True),
        graph=dict(attention="flash"), cost={}),
    "megatron-deepspeed": dict(
        plan=dict(grad_bytes=4.0, optimizer_bytes_per_param=30.0, collectives="nccl",
                  dp_reduce_bytes=4.0, zero_stage=1, grad_accum_bytes_per_param=18.0,
                  grad_accum_every_microbatch=True, async_tensor_model_parallel_allreduce=False,
                  p2p_scatter_gather=False, p2p_blocking=True),
        graph=dict(unfused_bias=True, apex_layernorm=True), cost={}),
}
# Megatron-LM's --DDP-impl (2021): "local" reduces after the backward (nothing overlapped);
# "torch" is PyTorch DDP: buckets of 25 MB (bucket_cap_mb; 12.5 M fp16 gradients) reduce
# while the last microbatch's backward runs (Megatron wraps the other microbatches in
# no_sync()); the reducer copies gradients into and out of its buckets (8 B/param) and the
# embedding's bucket, ready last, is the one left exposed (PlanOptions fields).
DDP_IMPLS = {"local": {}, "torch": dict(overlap_grad_reduce=True, bucket_params=12.5e6,
                                        ddp_bucket_copy_bytes_per_param=8.0,
                                        last_bucket_holds_prologue=True)}
FRAMEWORKS["nemo-2024"] = FRAMEWORKS["megatron-core-2024"]
# profiles whose code had no FP8 training (Transformer Engine came to Megatron in 2023)
NO_TRANSFORMER_ENGINE = ("megatron-lm-2021", "megatron-lm-2022", "megatron-deepspeed")
# Gradient-sync and optimizer-state dtypes a run may set beyond its profile (NeMo's
# distributed Adam `grad_sync_dtype` and `dtype`; Megatron-Core --grad-reduce-in-bf16 and
# --exp-avg-dtype / --exp-avg-sq-dtype / --main-params-dtype): bytes per parameter of the
# gradients (buffer and reduction) and of Adam's master weight, m and v.
GRAD_BYTES = {"fp32": 4.0, "bf16": 2.0}
ADAM_STATE_BYTES = {"fp32": 12.0, "bf16": 6.0}


def dtype_options(framework: str | None = None, grad_sync_dtype: str | None = None,
                  optimizer_state_dtype: str | None = None) -> dict:
    """PlanOptions overrides of a run's gradient-sync and optimizer-state dtypes ("fp32" or
    "bf16"; None: the profile's) on top of `framework`'s profile: the gradient and state
    bytes, and the optimizer step's HBM bytes with them (the step reads the gradient twice,
    for the norm and for Adam, and zeroes the buffer: 3 passes; Adam reads and writes its
    master weight, m and v, and the cast to the model weight reads the master weight again:
    2 1/3 passes of the state)."""
    base = PlanOptions(**{**MEGATRON_OPTIONS, **FRAMEWORKS[framework or DEFAULT_FRAMEWORK]["plan"]})
    out: dict = {}
    step = base.optimizer_bytes_per_param
    if grad_sync_dtype:
        g = GRAD_BYTES[grad_sync_dtype]
        step += 3.0 * (g - base.grad_bytes)
        out.update(grad_bytes=g, dp_reduce_bytes=g)
    if optimizer_state_dtype:
        a = ADAM_STATE_BYTES[optimizer_state_dtype]
        step += (2.0 + 1.0 / 3.0) * (a - base.adam_state_bytes)
        out["adam_state_bytes"] = a
    if out:
        out["optimizer_bytes_per_param"] = step
    return out


def layer_latencies(graph, arch, network, params=None, async_tp: bool = False):
    """{layer index: (fwd_s, bwd_s, selective recompute_s)} and {index: (TP-collective
    part of fwd_s, of bwd_s)}, each pass's ops run intra-op one after the other.
    async_tp: the backward TP collectives of column-parallel linears overlap their weight
    GEMMs (Megatron's async_tensor_model_parallel_allreduce; `async_tp_exposed`, contention
    = the params' nccl_channels over the arch's SMs, n_tc on the GPU presets)."""
    from phaze.cost.api import op_latencies
    from phaze.sched.adapter import SCHED_PASSES, pass_ops

    lat, tp = {}, {}
    for li, layer in enumerate(graph.layers):
        total, coll = [], []
        for pass_ in SCHED_PASSES:
            ops = list(pass_ops(layer, pass_))
            c = [float(x) for x in op_latencies(ops, arch, network, tp=graph.tp, params=params,
                                                groups=graph.collective_groups).lat_all_s[0]] if ops else []
            if async_tp and pass_ == "bwd":
                c = async_tp_exposed(ops, c, _channel_share(arch, params))
            total.append(sum(c))
            coll.append(sum(c[k] for k, o in enumerate(ops) if o.kind == "collective"))
        lat[li] = tuple(total)
        tp[li] = (coll[0], coll[1])
    return lat, tp


def _channel_share(arch, params, field: str = "nccl_channels") -> float:
    """Fraction of a GPU's SMs that communication kernels occupy: CostParams `field`, SMs
    (one per NCCL channel: nccl_channels, or nccl_net_channels for a group with one member
    per node; flex_dispatch_sms for DeepEP's kernels) over the preset's SMs, n_tc."""
    sms = getattr(params, field, 0) if params is not None else 0
    return min(1.0, sms / max(1, int(getattr(arch, "n_tc", 1))))


def _check_ep(spec, ep: int) -> None:
    """ValueError unless ep is 1 or divides the model's routed experts (both routes)."""
    if ep > 1 and (not spec.experts or spec.experts % ep):
        raise ValueError(f"expert parallelism ep = {ep} must divide the model's routed experts "
                         f"({spec.experts or 'none: a dense model'})")


def _check_cp_comm(spec, seq: int, tp: int, cp: int, cp_comm_type: str,
                   a2a_size: int = 0) -> None:
    """UserError when Transformer Engine cannot run `spec`'s attention context-parallel over
    cp with `cp_comm_type` (phaze.model.graph.cp_comm_refusal: a sliding window or sinks on
    the wrong communication, heads an all-to-all cannot split)."""
    from phaze.errors import UserError
    from phaze.model.graph import cp_comm_refusal

    no = cp_comm_refusal(spec, seq, tp, cp, cp_comm_type, a2a_size, "--cp-comm-type",
                         "--cp-a2a-size")
    if no:
        raise UserError(no[0], field=no[1], fix=no[2])


def async_tp_exposed(ops, lat_s, contention: float = 0.0):
    """Backward op latencies (seconds, one per op of `ops`) with the TP collectives that
    Megatron overlaps replaced by their exposed part. Megatron-LM's
    LinearWithGradAccumulationAndAsyncCommunication (since 2021-09, on by default;
    --no-async-tensor-model-parallel-allreduce turns it off; Transformer Engine's linears do
    the same without userbuffers) launches the all-reduce (SP: reduce-scatter) of a
    column-parallel linear's input gradient right after its dX GEMM and runs the dW GEMM
    meanwhile; with sequence parallelism the all-gather of the input that dW needs runs
    during the dX GEMM. A collective whose input is the dX of linears L (directly, or
    summed by a `.gacc` add when q/k/v or gate/up are separate linears, which Megatron
    fuses into one) hides behind their dW GEMMs; an all-gather that L's dW GEMMs wait for
    and no dX GEMM needs (the SP regather) hides behind L's dX. While the collective runs
    its NCCL channels occupy SMs: the GEMM progresses at (1 - contention) of its rate, so a
    collective of C seconds beside GEMMs of G seconds adds max(C - G, contention x C) (C
    when nothing hides it). Raises ValueError for a contention outside [0, 1]."""
    if not 0.0 <= contention <= 1.0:
        raise ValueError(f"contention must be in [0, 1], got {contention}")
    idx = {o.name: k for k, o in enumerate(ops)}
    out = list(lat_s)

    def dx_sources(name):   # dX GEMMs feeding `name` through .gacc adds, or None
        o = ops[idx[name]] if name in idx else None
        if o is not None and o.kind == "gemm" and name.endswith(".dX"):
            return [name]
        if o is not None and o.kind == "vector" and name.endswith(".gacc") and o.deps:
            srcs = [dx_sources(d) for d in o.deps]
            return None if any(x is None for x in srcs) else [n for x in srcs for n in x]
        return None

    for k, o in enumerate(ops):
        if o.kind != "collective":
            continue
        srcs = [dx_sources(d) for d in o.deps]
        if o.deps and all(x is not None for x in srcs):
            hide = [n[:-3] + ".dW" for x in srcs for n in x]      # reduce dX during dW
        elif not o.deps and o.collective == "all_gather":
            users = [p for p in ops if o.name in p.deps]
            if not users or any(not p.name.endswith(".dW") for p in users):
                continue   # a gradient all-gather that a dX GEMM waits for: exposed
            hide = [p.name[:-3] + ".dX" for p in users]             # SP regather during dX
        else:
            continue
        gemm_s = sum(lat_s[idx[h]] for h in hide if h in idx)
        if gemm_s > 0:
            out[k] = max(lat_s[k] - gemm_s, contention * lat_s[k])
    return out


def attention_core_latencies(graph, arch, network, params):
    """{layer index: (fwd_s, bwd_s, selective recompute_s)} of the attention core on one
    arch with the preset's cost parameters (sched.adapter.attention_core_times): what
    context parallelism repeats per ring step (plan.context_parallel_chain, through
    chain_from_graph's layer_core_s)."""
    from phaze.sched.adapter import attention_core_times

    core = attention_core_times(graph, arch, network, params)[0]
    return {li: tuple(float(x) for x in core[li]) for li in range(len(graph.layers))}


def megatron_layout(spec):
    """`spec` with its linears as Megatron-LM and Megatron-Core lay them out, which every
    FRAMEWORKS profile runs: one QKV GEMM (linear_qkv) and, in a gated MLP, one gate + up
    GEMM (linear_fc1 of width 2 ffn with gated_linear_unit), whatever the checkpoint's
    layout (Hugging Face Llama keeps q, k, v, gate and up apart). Same FLOPs and
    parameters; fewer kernels and one read of the input."""
    return spec.with_(fused_qkv=True, fused_gate_up=spec.gated)


def default_cost_params(arch):
    """The cost model's parameters for an arch: the calibrated set of its preset if any."""
    from phaze.cost.params import preset_params

    return preset_params(getattr(arch, "name", ""))


def profile_options(arch, framework: str | None = None, *, ddp_impl: str = "local",
                    cp: int = 1, ep: int = 1, optimizer: str = "adam", zero1: bool = False,
                    graph_options: dict | None = None,
                    options: dict | None = None,
                    userbuffers: bool = True) -> tuple[dict, PlanOptions]:
    """(build_graph options, PlanOptions) of a framework profile (FRAMEWORKS key, default
    DEFAULT_FRAMEWORK) on `arch`, the caller's overrides on top, as they apply there: the
    CUDA-kernel terms (eager bias and LayerNorm kernels, the asynchronous TP backward) only
    on a GPU preset, the asynchronous path not where userbuffers (tp_comm_overlap) replace
    it; what does not apply is recorded off: tp_comm_overlap too where its userbuffers cannot
    run (`userbuffers` False: no TP with sequence parallelism, which NeMo answers by turning
    the overlap off). Raises ValueError for an unknown framework or DDP implementation."""
    from dataclasses import replace

    from phaze.hw.presets import GPU_PRESETS

    if framework is not None and framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; use one of {sorted(FRAMEWORKS)}")
    if ddp_impl not in DDP_IMPLS:
        raise ValueError(f"unknown DDP implementation {ddp_impl!r}; use one of {sorted(DDP_IMPLS)}")
    fw = FRAMEWORKS[framework or DEFAULT_FRAMEWORK]
    gpu = getattr(arch, "name", "") in GPU_PRESETS
    cuda_kernels = ("unfused_bias", "apex_layernorm")   # not on a TPU or a searched chip
    gopts = {**{k: v for k, v in fw["graph"].items() if gpu or k not in cuda_kernels},
             **(graph_options or {})}
    plan_kw = {**fw["plan"], **DDP_IMPLS[ddp_impl], "cp": cp, "ep": ep}
    opts = PlanOptions(**{**MEGATRON_OPTIONS, **plan_kw, "optimizer": optimizer,
                          "zero1": zero1, **(options or {})})
    if opts.tp_comm_overlap and not userbuffers:
        opts = replace(opts, tp_comm_overlap=False)
    if opts.async_tensor_model_parallel_allreduce and (opts.tp_comm_overlap or not gpu):
        opts = replace(opts, async_tensor_model_parallel_allreduce=False)
    return gopts, opts


def evaluate_model(spec, arch, *, tp: int, pp: int, dp: int, mbs: int, batch: int,
                   recompute: str = "full", interleave: int = 1, seq: int | None = None,
                   sequence_parallel: bool = False, network=None, optimizer: str = "adam",
                   zero1: bool = False, cost_params=None, options: dict | None = None,
                   graph_options: dict | None = None, framework: str | None = None,
                   cp: int = 1, first_stage_layers: int | None = None,
                   last_stage_layers: int | None = None, fp8: bool = False,
                   fp8_recipe: str = "delayed",
                   ddp_impl: str = "local", cross_entropy_fusion: bool = False,
                   ep: int = 1, account_embedding: bool = False,
                   account_loss: bool = False, expert_tp: int = 0,
                   recompute_modules: tuple | None = None,
                   pipeline_layout: str | None = None, mtp_layers: int | None = None) -> dict:
    """One fixed plan of `spec` on `arch` (a preset): graph -> op latencies summed per layer
    -> uniform Megatron split (evaluate_plan). recompute: none | selective | full.
    `cost_params` (CostParams) and `options` (PlanOptions overrides) default to the arch's
    calibrated parameters and MEGATRON_OPTIONS; `graph_options` are build_graph's (attention,
    vocab_pad_multiple; the kernels run unfused, as a GPU runs them); `framework`: a FRAMEWORKS
    key (default DEFAULT_FRAMEWORK); `ddp_impl`: a DDP_IMPLS key; `cross_entropy_fusion`:
    Megatron-Core's --cross-entropy-loss-fusion (one kernel instead of the fp32 passes of
    CostParams.unfused_cross_entropy); `fp8`: the blocks' linears in FP8 (Transformer
    Engine) with Megatron-Core's --fp8-recipe `fp8_recipe` (CostParams.fp8_recipe:
    delayed, tensorwise or blockwise: what quantizing their operands costs, and the
    block-scaled GEMM's rate, FP8_GEMM_RATE_FRACTION); `ep`: expert-parallel size of an MoE model
    (plan.expert_parallel_chain: 1/ep of the routed experts per device, all-to-all
    dispatch and combine; the options' moe_token_dispatcher, and its token dropping,
    moe_expert_capacity_factor and moe_pad_expert_input_to_capacity, build the graph:
    graph.routed_slots); `expert_tp`: Megatron-Core's expert tensor-parallel size (0 = tp;
    another size folds the expert grid: graph._moe_folded, plan.grad_groups);
    `recompute_modules`: Megatron-Core's --recompute-modules for recompute "selective"
    (graph.RECOMPUTE_MODULES; None: the attention core); `first_stage_layers`, `last_stage_layers`, `account_embedding`,
    `account_loss`: Megatron's uneven pipeline ends (plan.megatron_stages);
    `pipeline_layout`: Megatron-Core's --pipeline-model-parallel-layout (phaze.place.layout;
    not with those four), its m's the last `mtp_layers` blocks of `spec` (the MTP layers'
    stand-ins, e.g. ModelSpec.with_extra_layers; None: no m allowed). Returns the plan dict (tflops_per_device = mfu x peak from the graph's model FLOPs)
    plus tflops_per_gpu_eq3
    (Eq. 3), model, arch, seq, hbm_bytes. Raises ValueError for a split that does not fit."""
    from dataclasses import replace

    from phaze.model.graph import build_graph

    check_recompute([recompute], "recompute")
    for name, v in (("tp", tp), ("pp", pp), ("dp", dp), ("mbs", mbs), ("batch", batch),
                    ("interleave", interleave), ("cp", cp), ("ep", ep)):
        if v < 1:
            raise ValueError(f"{name} = {v} must be >= 1")
    if interleave > 1 and pp == 1:
        raise ValueError(f"interleave = {interleave} needs pipeline parallelism (pp > 1): "
                         "Megatron's virtual pipeline stages")
    if recompute_modules is not None and recompute != "selective":
        raise ValueError(f"recompute modules: they choose what selective recomputation re-runs, "
                         f"not {recompute!r} recomputation")
    if fp8:
        from phaze.hw.presets import FP8_PRESETS
        if getattr(arch, "name", "") not in FP8_PRESETS:
            raise ValueError(f"fp8: {getattr(arch, 'name', '') or 'this arch'} has no FP8 "
                             f"tensor cores (presets with FP8: {', '.join(sorted(FP8_PRESETS))})")
    for name, v in (("ep", ep), ("cp", cp)):   # the graph is built for the arguments
        if name in (options or {}) and options[name] != v:
            raise ValueError(f"options {name} = {options[name]} differs from {name} = {v}: "
                             f"give the plan's {name} as the {name} argument")
    seq = seq or spec.seq
    network = network or arch.network
    # which parameters cost it: a preset's calibrated set (by the chip's name: a chip JSON
    # named after a preset gets that preset's), the defaults, or the caller's
    from phaze.cost.params import PRESET_PARAMS
    calibration = ("given" if cost_params is not None else getattr(arch, "name", "")
                   if getattr(arch, "name", "") in PRESET_PARAMS else "none")
    cost_params = cost_params or default_cost_params(arch)
    if tp > 1 and not sequence_parallel and (options or {}).get("tp_comm_overlap"):
        # userbuffers overlap the sequence-parallel all-gathers / reduce-scatters: Megatron-LM
        # asserts sequence parallelism for --tp-comm-overlap (NeMo turns it off without)
        from phaze.errors import UserError
        raise UserError("tp_comm_overlap overlaps the sequence-parallel collectives, and "
                        "sequence parallelism is off (Megatron-LM asserts it)",
                        field="--overlap", fix="add --sequence-parallel, or drop "
                                               "--overlap tp_comm")
    if cp > 1:      # before PlanOptions refuses an all-to-all level that does not divide cp
        _check_cp_comm(spec, seq, tp, cp, (options or {}).get("cp_comm_type", "p2p"),
                       (options or {}).get("cp_a2a_size", 0))
    gopts, opts = profile_options(arch, framework, ddp_impl=ddp_impl, cp=cp, ep=ep,
                                  userbuffers=bool(sequence_parallel) and tp > 1,
                                  optimizer=optimizer, zero1=zero1, graph_options=graph_options,
                                  options={**(options or {}), "expert_tp": expert_tp or 0})
    if fp8_recipe not in FP8_RECIPES:
        raise ValueError(f"fp8 recipe {fp8_recipe!r}: use one of {', '.join(FP8_RECIPES)}")
    if fp8 and (framework or DEFAULT_FRAMEWORK) in NO_TRANSFORMER_ENGINE:
        raise ValueError(f"fp8: the {framework or DEFAULT_FRAMEWORK} profile predates "
                         "Transformer Engine (no FP8 training)")
    if opts.p2p_blocking and interleave > 1:
        raise ValueError(f"interleave = {interleave}: DeepSpeed's pipeline engine has no "
                         "interleaved schedule")
    if opts.p2p_blocking and opts.overlap_p2p:
        raise ValueError("overlap p2p: DeepSpeed's pipeline engine sends and receives in "
                         "blocking calls, nothing overlaps them")
    if gopts.get("attention") == "flash":
        cost_params = replace(cost_params, flash_causal=bool(getattr(spec, "causal", True)))
    if fp8:
        # FP8 GEMMs; memory: the weights stay 2 B/param. Transformer Engine keeps an FP8
        # copy and its transpose (1 + 1 B) of each linear weight, beside a bf16 weight or
        # instead of it (FP8 primary weights, --fp8-param-gather / NeMo fp8_params). Measured
        # runs only fit the second way: NeMo 24.07's GPT3-20B (t = 2, 10 B params per GPU,
        # fp32 grads, no recompute) and Llama3-8B (cp = 2 on 8 GPUs) would need over 80 GB
        # with a bf16 weight plus the copies (docs/validate.md, held-out NeMo table).
        cost_params = replace(cost_params, fp8_gemm=True, fp8_recipe=fp8_recipe)
    if not spec.experts and (opts.moe_token_dispatcher != "alltoall"
                             or opts.overlap_moe_expert_parallel_comm):
        raise ValueError(f"moe options: {spec.name} is a dense model (no token dispatcher, no "
                         "expert-parallel all-to-alls to overlap)")
    _check_ep(spec, ep)
    if cross_entropy_fusion:
        cost_params = replace(cost_params, unfused_cross_entropy=False)
    if not opts.grad_accum_bytes_per_param:
        # fused gradient accumulation: each weight GEMM reads and writes main_grad
        cost_params = replace(cost_params, wgrad_accumulation_bytes=max(
            0.0, 2.0 * opts.grad_bytes - cost_params.dtype_bytes))
    # overlapped DP collectives take their NCCL channels' SMs from the compute beside them
    # (each share from the preset unless the caller gives it)
    shares = {"comm_sm_share": _channel_share(arch, cost_params),
              "comm_sm_share_net": _channel_share(arch, cost_params, "nccl_net_channels"),
              "flex_sm_share": _channel_share(arch, cost_params, "flex_dispatch_sms")}
    opts = replace(opts, **{k: v for k, v in shares.items() if k not in (options or {})})
    graph = build_graph(megatron_layout(spec), seq=seq, mbs=mbs, tp=tp,
                        sequence_parallel=sequence_parallel, cp=cp, expert_tp=expert_tp,
                        recompute_modules=recompute_modules,
                        ep=ep if spec.experts else 0,
                        moe_dispatcher=opts.moe_token_dispatcher,
                        moe_expert_capacity_factor=opts.moe_expert_capacity_factor,
                        moe_pad_expert_input_to_capacity=opts.moe_pad_expert_input_to_capacity,
                        **gopts)
    lat, tps = layer_latencies(graph, arch, network, cost_params,
                               async_tp=opts.async_tensor_model_parallel_allreduce)
    # the ring steps (plan.context_parallel_chain, applied by evaluate_plan) need the core
    core = attention_core_latencies(graph, arch, network, cost_params) if cp > 1 else None
    chain = chain_from_graph(graph, layer_latency=lat, layer_tp_s=tps, layer_core_s=core,
                             # the flash cost path charges a causal core its band
                             causal_cores=(cost_params.flash_causal
                                           and cost_params.flash_fwd_efficiency > 0),
                             fp8=fp8, fp8_recipe=fp8_recipe)
    links = Links.of(network, bw_efficiency=cost_params.link_bw_efficiency)
    stages = None
    if first_stage_layers is not None or last_stage_layers is not None or account_embedding \
            or account_loss or pipeline_layout is not None:
        from phaze.place.plan import megatron_stages
        stages = megatron_stages(chain, pp, interleave, first_stage_layers, last_stage_layers,
                                 account_embedding, account_loss, layout=pipeline_layout,
                                 mtp_layers=mtp_layers)
    plan = evaluate_plan(chain, pp, dp, batch, recompute, interleave, hbm_bytes=arch.hbm_bytes,
                         links=links, options=opts, peak_flops=arch.peak_flops, stages=stages,
                         hbm_bw_Bps=arch.hbm_bw_Bps * cost_params.hbm_bw_efficiency,
                         allow_empty_stages=pipeline_layout is not None)
    # only for dense attention models: Eq. 3 has no term for a Mamba layer, routed experts
    # or latent attention (model_flops counts them all)
    if "time_per_batch_s" in plan and not (spec.has_mixer("mamba") or spec.experts or spec.mla):
        F = narayanan_flops(batch, seq, spec.layers, spec.hidden, spec.vocab, recompute == "full")
        # Narayanan et al.'s Eq. 3 convention (GPT with a 4h MLP and full multi-head
        # attention), labelled as such: what the Megatron papers' tables report
        plan["tflops_per_gpu_eq3"] = F / plan["time_per_batch_s"] / (tp * pp * dp * cp) / 1e12
    if fp8 and plan.get("mfu") is not None:
        # mfu is against the dense bf16 peak (Megatron's and NeMo's MFU convention); an FP8
        # run's figure against the FP8 peak (fp8_speedup x) too, which stays below 1
        plan["mfu_fp8_peak"] = plan["mfu"] / cost_params.fp8_speedup
    from dataclasses import asdict
    plan.update(model=spec.name, arch=getattr(arch, "name", ""), seq=seq,
                # what ran: the graph turns it off at t = 1, as Megatron does
                hbm_bytes=arch.hbm_bytes, sequence_parallel=bool(graph.sequence_parallel),
                # how the figure was obtained: the framework profile and every setting used
                framework=framework or DEFAULT_FRAMEWORK, ddp_impl=ddp_impl, fp8=fp8,
                fp8_recipe=fp8_recipe if fp8 else None,
                cross_entropy_fusion=cross_entropy_fusion, graph_options=dict(gopts),
                pipeline_layout=pipeline_layout,
                # what selective recomputation re-ran: the modules given, else Megatron-Core's
                # default, the attention core (None: no selective recomputation)
                recompute_modules=(sorted(set(recompute_modules or ("core_attn",)))
                                   if recompute == "selective" else None),
                plan_options=options_record(opts), cost_params=asdict(cost_params),
                calibration=calibration,
                # the hardware it was costed on: the chip (its own network included) and the
                # network the plan ran on (--network, else the chip's)
                chip=arch.to_dict() if hasattr(arch, "to_dict") else None,
                network=network.to_dict() if hasattr(network, "to_dict") else None,
                phaze_version=__version__)
    return plan


def evaluate_sweep_plan(spec, arch_row, *, tp: int, pp: int, dp: int, mbs: int,
                        recompute: str, hbm_bytes: float, seq: int,
                        sequence_parallel: bool = False, interleave: int = 1,
                        stages: list | None = None, settings=None, ep: int = 1,
                        zero_stage: int | None = None, cp: int = 1) -> dict:
    """One plan of `spec` on a grid arch exactly as the sweep costs it. `arch_row`: the
    arch's grid row (a one-row DataFrame); `settings`: phaze.settings.SweepSettings (graph
    options, scheduling, placement job, network); `stages`: the plan's [start, end) layer
    ranges (default Megatron's uniform split). Returns evaluate_plan's dict plus model,
    arch_id, seq, hbm_bytes, sequence_parallel. `ep`, `zero_stage` (None: the settings'
    first ZeRO stage), `cp`: the plan's expert-parallel size, ZeRO stage and context-
    parallel size (a placement row's ep, zero_stage, cp). Raises ValueError for stages that
    do not cover the model."""
    from phaze.model.graph import build_graph
    from phaze.sched.cache import ScheduleCache
    from phaze.sched.layers import scheduled_layer_latencies
    from phaze.settings import SweepSettings

    settings = settings or SweepSettings()
    check_recompute([recompute], "recompute")
    _check_ep(spec, ep)                  # as evaluate_model refuses it
    if cp > 1:
        _check_cp_comm(spec, seq, tp, cp, settings.placement.cp_comm_type,
                       settings.placement.cp_a2a_size)
    net = settings.net()
    # the sweep's graph of this ep (its expert GEMMs grouped per local expert; graph_eps)
    graph = build_graph(spec, seq=seq, mbs=mbs, tp=tp, sequence_parallel=sequence_parallel,
                        cp=cp, ep=ep if spec.experts else 0, **settings.graph.build_kwargs())
    if stages:                # before any layer is scheduled (evaluate_plan checks it too)
        check_stages([tuple(s) for s in stages], pp * interleave, graph.n_layers)
    cache = ScheduleCache(settings.sched.cache_dir or None)
    arch_id = str(arch_row["arch_id"].iloc[0])
    lat, core, lat_rows = scheduled_layer_latencies(graph, arch_row, net, settings.sched, cache,
                                                    rows=True)
    chain = chain_from_graph(graph, layer_latency=lat[arch_id], layer_core_s=core[arch_id])
    pl = settings.placement
    opts = plan_options(pl, net, ep, zero_stage if zero_stage is not None
                        else pl.zero_stages()[0], cp=cp)
    plan = evaluate_plan(chain, pp, dp, pl.global_batch, recompute, interleave,
                         stages=[tuple(s) for s in stages] if stages else None,
                         hbm_bytes=hbm_bytes, links=Links.of(net), options=opts,
                         peak_flops=float(arch_row["peak_flops"].iloc[0]),
                         hbm_bw_Bps=sweep_hbm_bw_Bps(arch_row["hbm_bw_Bps"].iloc[0]))
    plan.update(model=spec.name, arch_id=arch_id, seq=seq, hbm_bytes=hbm_bytes,
                sequence_parallel=bool(graph.sequence_parallel),
                # how the figure was obtained: the sweep's graph, schedule and plan settings
                graph_options=settings.graph.build_kwargs(), network=net.to_dict(),
                sched={**settings.sched.record(), **_schedule_record(lat_rows)},
                plan_options=options_record(opts), phaze_version=__version__)
    return plan


def _schedule_record(lat_rows) -> dict:
    """How the layer times were obtained (phaze.sched.table.schedule_status of the rows):
    the solvers that ran, ILPs proven optimal of all (time-limited or heuristic ones
    count apart) and the worst relative gap."""
    from phaze.sched.table import schedule_status

    st = schedule_status(lat_rows)
    return {"solvers_used": sorted(set(map(str, lat_rows["solver"]))), "ilps": st["ilps"],
            "ilps_optimal": st["optimal"], "ilps_time_limit": st["time_limit"],
            "worst_gap": st["worst_gap"]}


def plan_options(placement, network=None, ep: int = 1, zero_stage: int | None = None,
                 cp: int = 1) -> PlanOptions:
    """The DP's PlanOptions for phaze.settings.PlacementSettings (every sweep route): on a
    network with levels the DP's collectives are hierarchical (collectives "nccl" ->
    phaze.cost.collective.hierarchical_coeffs, ZeRO's reduce-scatters and all-gathers
    too); `ep` and `zero_stage` (None: placement.zero1's) fix those axes
    (phaze.place.plan.with_axes), `cp` the context-parallel size (the graph's)."""
    from dataclasses import replace

    from phaze.place.plan import with_axes

    levels = bool(getattr(network, "levels", ()))
    base = PlanOptions(optimizer=placement.optimizer, zero1=placement.zero1,
                       collectives="nccl" if levels else "flat", cp=cp,
                       cp_comm_type=placement.cp_comm_type,
                       cp_a2a_size=placement.cp_a2a_size)
    # the optimizer step, timed from each arch's HBM bandwidth (sweep_hbm_bw_Bps): the
    # mixed-precision Adam pass of the plan's dtypes (SGD: step_bytes_per_param's share)
    base = replace(base, optimizer_bytes_per_param=adam_step_bytes(
        base.grad_bytes, base.adam_state_bytes, base.weight_bytes))
    return with_axes(base, ep, zero_stage)


def sweep_hbm_bw_Bps(hbm_bw_Bps: float) -> float:
    """The HBM bandwidth a sweep arch achieves (bytes/s): its peak times the cost model's
    default efficiency, the one its schedules' memory-bound ops run at
    (phaze.sched.adapter.layer_problems with CostParams()): what times the optimizer step."""
    from phaze.cost.params import CostParams

    return float(hbm_bw_Bps) * CostParams().hbm_bw_efficiency
