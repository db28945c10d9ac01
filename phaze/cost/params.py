"""The cost model's few tunable parameters, in one place, with documented defaults.

A later validation stage calibrates these against measurements; nothing else in
phaze.cost has per-case constants."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

# Cycles per produced element on one VC lane, by vector op class. The first five are the
# reference's table (docs/reference.md#operator-latency: LayerNorm 1, GELU 1, Softmax ~10 plus a
# reduction, Div 10, Tanh 27); softmax's reduction is counted as two extra passes (row max
# and row sum, one cycle per element each). The others are simple element-wise ops at one
# cycle per element (two for SwiGLU: SiLU then multiply; two for RoPE: rotate then add).
# gpt-oss's clamped SwiGLU is costed as SwiGLU: its clamps and + 1 ride in the same pass of a
# fused kernel (Megatron-Core's weighted_bias_quick_geglu), no measurement says otherwise.
DEFAULT_VECTOR_CPE = {
    "layernorm": 1.0, "gelu": 1.0, "softmax": 12.0, "div": 10.0, "tanh": 27.0,
    "rmsnorm": 1.0, "add": 1.0, "residual": 1.0, "bias": 1.0, "mul": 1.0, "scale": 1.0,
    "mask": 1.0, "dropout": 1.0, "relu": 1.0, "silu": 1.0, "swiglu": 2.0, "clamped_swiglu": 2.0,
    "rope": 2.0,
    "embedding": 1.0, "copy": 1.0, "cross_entropy": 12.0, "optimizer": 1.0,
    # Mamba-2 (phaze.model.graph._mamba), assumed, not calibrated: the depthwise causal conv1d
    # (+ SiLU) one multiply-add per tap of the usual 4 taps, its backward (input and weight
    # gradients) twice that; the SSD's dt cumsum and inter-chunk state recurrence simple
    # element-wise passes. On a GPU all of them are memory-bound: their bytes decide.
    "causal_conv1d": 4.0, "causal_conv1d_bwd": 8.0, "ssd_cumsum": 2.0, "ssd_cumsum_bwd": 2.0,
    "ssd_state_passing": 1.0, "ssd_state_passing_bwd": 2.0,
    "default": 1.0,
}

# Bytes moved per logit element by Megatron-LM's unfused vocabulary-parallel cross entropy
# (megatron/mpu/cross_entropy.py of 2021 and megatron/core/tensor_parallel/cross_entropy.py
# of 2024, identical in this respect; --cross-entropy-loss-fusion is off by default), fp32
# logits (the model casts them with .float() unless --fp16-lm-cross-entropy):
#   forward  .float() 2 + 4, max 4, in-place subtract 4 + 4, exp 4 + 4, sum 4,
#            in-place divide 4 + 4                                              = 38 B
#   backward in-place multiply by the loss gradient 4 + 4, the cast back to the
#            logits' dtype 4 + 2                                                = 14 B
# (the one-element-per-row target updates are negligible). Each term is one PyTorch
# elementwise or reduction kernel reading or writing the whole logit tensor.
UNFUSED_CROSS_ENTROPY_BYTES = {"cross_entropy": 38.0, "cross_entropy_bwd": 14.0}


# Transformer Engine FP8 recipes phaze costs, by Megatron-Core's --fp8-recipe names:
# "delayed" scales each tensor with the amax history of earlier steps (Megatron-Core's
# default); "tensorwise" is per-tensor current scaling (TE Float8CurrentScaling, NeMo /
# Megatron-Bridge "fp8_cs"), which needs the tensor's own amax before it can cast;
# "blockwise" scales each 1 x 128 block of an activation or gradient and each 128 x 128
# block of a weight (TE Float8BlockScaling, Megatron-Bridge "fp8_sc", DeepSeek-V3's
# recipe; Hopper GEMMs with block scales since cuBLAS 12.9).
FP8_RECIPES = ("delayed", "tensorwise", "blockwise")
# Bytes per element that quantizing one operand of an FP8 weight GEMM moves beyond what the
# bf16 graph already counts; Hopper's FP8 GEMMs take both a row-wise and a column-wise
# (transposed, for the other backward GEMM) FP8 copy. Read in Transformer Engine
# (transformer_engine/pytorch/csrc/quantizer.cpp, Float8CurrentScalingQuantizer::
# quantize_impl: nvte_compute_amax, then nvte_quantize_v2; extensions/normalization.cpp:
# a norm under current scaling computes its output and amax in high precision, then
# quantizes). Operands (phaze.cost.api._fp8_operand):
#   "norm": the input of a linear fused with the block norm before it (TE's LayerNorm-
#           Linear): delayed, the norm writes FP8 itself (1 B instead of the 2 B counted)
#           and the transpose for the weight gradient reads and writes 1 B each: +1;
#           tensorwise, the norm writes bf16 with its amax, then a cast reads 2 B and
#           writes 1 + 1 B: +4
#   "input": any other linear's input: a cast-transpose reading 2 B and writing 1 + 1 B
#           (delayed 4), after an amax pass reading 2 B more (tensorwise 6)
#   "grad": the output gradient dY before the dX and dW GEMMs: as "input" (4 / 6)
# Blockwise (Float8BlockQuantizer::quantize: one nvte_quantize_v2 kernel,
# quantize_transpose_vector_blockwise, that finds each 1 x 128 block's amax itself and
# writes the row-wise and the transposed copy with one fp32 scale per 128 elements each,
# 2 x 4 / 128 B; normalization.cpp runs a norm before a block quantizer UNFUSED: the norm
# writes bf16, then the same quantize): 2 B read + 1 + 1 B written + 1/16 B of scales for
# every operand.
# The weights are cast once per step (TE's is_first_microbatch cache), not per microbatch:
# not charged.
_BLOCKWISE_BYTES = 4.0 + 2 * 4.0 / 128
FP8_QUANTIZE_BYTES = {
    "delayed": {"norm": 1.0, "input": 4.0, "grad": 4.0},
    "tensorwise": {"norm": 4.0, "input": 6.0, "grad": 6.0},
    "blockwise": {"norm": _BLOCKWISE_BYTES, "input": _BLOCKWISE_BYTES, "grad": _BLOCKWISE_BYTES},
}
# Rate of a recipe's FP8 GEMM as a fraction of a per-tensor scaled one (CostParams.
# fp8_speedup x the bf16 rate). Hopper's tensor cores take one scale per operand; block
# scales (one per 128 of K) are applied in the GEMM's main loop, in fp32, as it
# accumulates. Published: NVIDIA's cuBLAS 12.9 post ("Boosting Matrix Multiplication Speed
# and Flexibility with NVIDIA cuBLAS 12.9", 2025) measures block-scaled FP8 on Hopper at
# 1.75x BF16 for large matmuls, against the 2x of tensor-wide scaling (NVIDIA, "Faster
# Training Throughput in FP8 Precision with NVIDIA NeMo", 2025: "up to 2x"): 1.75 / 2.
# Not fitted.
FP8_GEMM_RATE_FRACTION = {"delayed": 1.0, "tensorwise": 1.0, "blockwise": 1.75 / 2.0}


@dataclass(frozen=True)
class CostParams:
    dtype_bytes: int = 2                 # bf16 operands and results
    # Fractions of the ideal rates the hardware achieves (1.0 = ideal).
    compute_efficiency: float = 1.0      # multiplies systolic/vector throughput
    glb_bw_efficiency: float = 1.0
    hbm_bw_efficiency: float = 0.9       # typical sustained fraction of HBM peak
    link_bw_efficiency: float = 0.8      # collective "bus bandwidth" fraction of link peak
    # Fixed time added to every GEMM and vector op (kernel launch / synchronisation);
    # 0 for an accelerator whose scheduler issues ops back to back.
    op_overhead_s: float = 0.0
    # Cost of each further kernel of a vector op the framework runs as several eager
    # kernels (Op.kernels > 1: an unfused MoE router's top-k, scatter and casts), whose
    # GPU work is too small to hide the host's launch of the next one: the PyTorch eager
    # dispatch and CUDA launch per kernel. 0: op_overhead_s (an isolated kernel's cost).
    eager_kernel_s: float = 0.0
    # Fraction of the GLB usable for a GEMM's resident tile (the rest double-buffers).
    glb_usable_fraction: float = 0.5
    # Bandwidth a single-core op may draw from the shared GLB and HBM:
    # "fair" = 1 / (cores of its class) of the chip's bandwidth (so that ops the scheduler
    # runs side by side never exceed the chip's bandwidth together); "full" = all of it.
    one_core_bw_share: str = "fair"
    vector_cpe: dict = field(default_factory=lambda: dict(DEFAULT_VECTOR_CPE))
    # --- GPU-kernel terms (0 / False / "flat" = off: the sweep's default mode and every
    # number before issue 16 are unchanged). docs/cost.md "Kernels".
    # Collectives of op graphs (TP): "flat" = one ring on the slowest link; "nccl" =
    # phaze.cost.collective.collective_time (NVLink inside a node, all NICs between nodes).
    collective_topology: str = "flat"
    # Fused attention (FlashAttention, op attn.core / attn.core.bwd): achieved fraction of
    # the tensor-core peak on the kernel's useful FLOP (0 = cost it as a GEMM). Causal: the
    # kernel skips the masked half of the score blocks (useful FLOP = half the square).
    flash_fwd_efficiency: float = 0.0
    flash_bwd_efficiency: float = 0.0
    flash_causal: bool = False
    # ... scaled down for short loops and small head dims (phaze.cost.api.flash_efficiency):
    # a work block's fixed cost in key-steps of its loop, the softmax's per-score work in
    # head-dim units; 0 = no such loss (the efficiencies above hold at every size)
    flash_key_overhead: float = 0.0
    flash_head_dim_overhead: float = 0.0
    # ... plus, with attention dropout inside the kernel, the VC cycles per computed score
    # element (one lane) that drawing its random number and applying it add to each pass
    # (the backward draws them again), on top of the tensor-core time: measured, not hidden
    # (benchmarks/bench_h200_kernels.py, section 6); 0 = free. Charged on both cost
    # paths: the flash efficiency one and, with it off (the sweep's), a GEMM-costed core
    flash_dropout_cpe: float = 0.0
    # FP8 GEMMs (Transformer Engine): the blocks' weight GEMMs run at fp8_speedup x the bf16
    # rate (H100: 1,979 / 989 TFLOP/s dense = 2); attention and the LM head (Megatron-Core's
    # own ColumnParallelLinear, not a TE module) stay bf16.
    fp8_gemm: bool = False
    fp8_speedup: float = 2.0
    # Transformer Engine's scaling recipe of those GEMMs (Megatron-Core --fp8-recipe, one of
    # FP8_RECIPES): what quantizing their operands costs (FP8_QUANTIZE_BYTES).
    fp8_recipe: str = "delayed"
    # Bytes per weight-gradient element a weight GEMM (".dW") moves beyond the graph's one
    # write of it in dtype_bytes: Megatron's fused gradient accumulation
    # (--gradient-accumulation-fusion, on by default since 2022; TE's fuse_wgrad_accumulation)
    # runs the GEMM with beta = 1 into the parameter's main_grad buffer, reading and writing
    # it in the gradient dtype every microbatch: 2 x grad bytes - dtype_bytes (fp32 main
    # grads: 6; bf16: 2). 0: not counted (the sweep's accelerators; unfused accumulation is
    # PlanOptions.grad_accum_bytes_per_param's). Set by phaze.place.evaluate.evaluate_model.
    wgrad_accumulation_bytes: float = 0.0
    # Clock a chip sustains under hours of full load (power/thermal limit) as a fraction of
    # the clock its peak is quoted at; kernel micro-benchmarks run at the boost clock. 1 =
    # no derating. Fitted for h100 on the Megatron-LM README H100 table (docs/validate.md).
    sustained_clock_fraction: float = 1.0
    # Cross entropy as Megatron-LM runs it unfused (UNFUSED_CROSS_ENTROPY_BYTES per logit
    # element instead of the graph's one read and one write); False: the graph's bytes.
    unfused_cross_entropy: bool = False
    # SMs an NCCL collective occupies while it overlaps a GEMM (one SM per NCCL channel; 0 =
    # no contention). NCCL opens 24 channels for an 8-GPU NVSwitch node on A100 and on H100
    # (NCCL_DEBUG logs: NVIDIA/nccl issue 578 and nccl-tests issue 100 on A100, NVIDIA/nccl
    # issue 1367 on H100, NCCL 2.19: 12 rings duplicated to 24 channels).
    nccl_channels: int = 0
    # Channels of a collective across nodes per member of its group in a node (each member
    # drives its own NIC): NCCL's graph search finds one ring per NIC used and doubles the
    # count (sjeaugey in NVIDIA/nccl issue 524); "2 coll channels" in the NCCL_DEBUG logs
    # of rings with one GPU per node (NVIDIA/nccl issue 687); at most nccl_channels. 0 = no
    # contention.
    nccl_net_channels: int = 0
    # SMs the flex MoE dispatcher's kernels (DeepEP / HybridEP) run on: Megatron-Core's
    # moe_flex_dispatcher_num_sms, whose DeepEP default is 20 (transformer_config.py,
    # moe_deepep_num_sms "historical default 20"). 0 = no contention.
    flex_dispatch_sms: int = 0

    def __post_init__(self):
        for f in ("compute_efficiency", "glb_bw_efficiency", "hbm_bw_efficiency",
                  "link_bw_efficiency", "glb_usable_fraction", "sustained_clock_fraction"):
            v = getattr(self, f)
            if not 0 < v <= 1:
                raise ValueError(f"CostParams.{f} must be in (0, 1], got {v}")
        if not self.op_overhead_s >= 0:
            raise ValueError("CostParams.op_overhead_s must be >= 0")
        if not self.eager_kernel_s >= 0:
            raise ValueError("CostParams.eager_kernel_s must be >= 0")
        for f in ("nccl_channels", "nccl_net_channels", "flex_dispatch_sms"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"CostParams.{f} must be an integer >= 0, got {v!r}")
        if self.collective_topology not in ("flat", "nccl"):
            raise ValueError("CostParams.collective_topology must be 'flat' or 'nccl'")
        for f in ("flash_fwd_efficiency", "flash_bwd_efficiency"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"CostParams.{f} must be in [0, 1]")
        for f in ("flash_key_overhead", "flash_head_dim_overhead", "flash_dropout_cpe"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"CostParams.{f} must be >= 0")
        if not self.fp8_speedup >= 1:
            raise ValueError("CostParams.fp8_speedup must be >= 1")
        if self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(f"CostParams.fp8_recipe must be one of {FP8_RECIPES}, got "
                             f"{self.fp8_recipe!r}")
        if self.one_core_bw_share not in ("fair", "full"):
            raise ValueError("CostParams.one_core_bw_share must be 'fair' or 'full'")

    def cpe(self, vclass: str) -> float:
        return float(self.vector_cpe.get(vclass, self.vector_cpe["default"]))


# Calibrated parameter sets of named presets (used by `phaze evaluate`, `phaze validate`
# and every plan evaluated on that preset). a100: fitted by `phaze validate --fit` on
# Korthikanti et al. (MLSys'23) Table 5 (8 measured iteration times of Megatron-LM on
# Selene), three parameters (compute, HBM <= 0.92, per-kernel overhead), no per-row
# factor; link_bw_efficiency 0.80 is nccl-tests' DGX A100 all-reduce bus bandwidth (~230
# GB/s of 300), not fitted; Narayanan et al. (SC'21) Table 1 and Korthikanti Table 4 are
# held out (errors in docs/validate.md). op_overhead_s is an effective per-kernel cost:
# launch and tail effects plus the small-GEMM inefficiency the array model does not capture.
# h100: fitted by `benchmarks/bench_h100_preset.py --fit` on the even rows of 37 bf16 GEMM
# and vector kernel times measured with torch on an H100 80GB HBM3 (2026-11-26, file
# benchmarks/data/h100_kernels_measured.csv); odd rows held out: mean |error| 11.2%
# (uncalibrated defaults: 39%). op_overhead_s ~ eager-mode kernel launch gap.
# Issue 16 additions (docs/validate.md "Calibration"): both presets cost TP collectives as
# NCCL runs them (collective_topology "nccl"; identical to "flat" inside a node) and flash
# attention (phaze.cost.api.flash_efficiency): h100 forward ceiling 0.80, a block's fixed
# cost 125 key-steps and the softmax's 48 head-dim units, fitted by
# benchmarks/bench_h100_preset.py --fit on the 5 attention kernels of
# benchmarks/data/h100_kernels_measured.csv (mean |error| 2.3 %, leave-one-out 7.3 %; one
# size-blind efficiency, 0.50 before these terms, gave 11.6 %), backward ceiling 0.69 =
# 0.80 x 0.63/0.73 (FlashAttention-2, Dao 2023: about 73 % of A100 peak forward, 63 %
# backward); a100 0.70 / 0.60 from the same paper, no size terms (not fitted: the A100
# tables ran eager attention). h100 flash_dropout_cpe 17: attention dropout inside the fused
# kernel, VC cycles per score element and pass, least squares over the five README GPT layers
# timed with and without dropout on an H200 (benchmarks/data/h200_layers.csv;
# bench_h200_kernels.py section 6; leave-one-out 16.4-17.8 cycles); a100 8.5: the same
# integer work on half the VC lanes per SM (64 INT32 lanes per SM on both chips), not measured.
# h100 sustained_clock_fraction 0.767: fitted by `phaze
# validate --fit` on the nine weak-scaling rows of the Megatron-LM README's H100 table
# (commit 937571cf, images/model_table.png; MAE 3.27 %), the only parameter fitted there:
# the kernels above were timed in isolation at boost clock, a training run sustains about
# 0.75 of that rate (power-capped clock under hours of load; the SMs that overlapped DP
# collectives take are charged apart since 2026-11-30: PlanOptions.comm_sm_share, 0.727
# before; the interleaved schedule's p2p fill since 2026-12-01:
# plan.interleaved_p2p_fill_s, 0.750 before; the flash size terms, 0.751
# before; attention dropout in the fused kernel, 0.747 before).
# h100 eager_kernel_s 9.5 us: the host's cost per kernel in a loop of small eager kernels,
# measured as (eager - CUDA-graph replay) / kernels on the two bf16 512-token expert loops
# of benchmarks/data/h200_expert_loops.csv (8.3 and 10.7 us: one cuBLAS GEMM each, whose
# GPU time the graph replay gives alone); printed by benchmarks/bench_h200_kernels.py.
PRESET_PARAMS = {
    "h100": dict(compute_efficiency=0.75, hbm_bw_efficiency=0.85, op_overhead_s=32.5e-6,
                 collective_topology="nccl", flash_fwd_efficiency=0.80,
                 flash_bwd_efficiency=0.69, flash_key_overhead=125, flash_head_dim_overhead=48,
                 flash_dropout_cpe=17.0, sustained_clock_fraction=0.767,
                 unfused_cross_entropy=True, nccl_channels=24, nccl_net_channels=2,
                 flex_dispatch_sms=20, eager_kernel_s=9.5e-6),
    "a100": dict(compute_efficiency=0.7924, hbm_bw_efficiency=0.9187, link_bw_efficiency=0.80,
                 op_overhead_s=52.56e-6, collective_topology="nccl", flash_fwd_efficiency=0.70,
                 flash_bwd_efficiency=0.60, flash_dropout_cpe=8.5, unfused_cross_entropy=True,
                 nccl_channels=24,
                 nccl_net_channels=2),
}


def preset_params(name: str) -> CostParams:
    """CostParams of a preset: its calibrated set, else the defaults above."""
    return CostParams(**PRESET_PARAMS.get(name, {}))


def kernel_params(name: str) -> CostParams:
    """CostParams of a preset for kernels timed one at a time (a micro-benchmark at boost
    clock, as benchmarks/data/h100_kernels_measured.csv): the calibrated set without the
    training-run derating (sustained_clock_fraction = 1)."""
    return CostParams(**{**PRESET_PARAMS.get(name, {}), "sustained_clock_fraction": 1.0})
