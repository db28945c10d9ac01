"""Public entry point of the cost model (what the scheduler calls).

    costs = op_latencies(ops, archs, network, tp, params=None)
    costs.lat_one_s[i, j]   seconds of op j on ONE core of its class on arch i
    costs.lat_all_s[i, j]   seconds of op j spread over ALL cores of its class (intra-op)
    costs.bound_one/_all    int8 codes into BOUND_NAMES (compute, glb, hbm, link)

`ops` is a sequence of phaze.model.ops.Op (one pass of one layer, per-device shards);
`archs` an Arch, a list of Archs or an arch table (DataFrame with ID_FIELDS columns),
or the ArchArrays of one (arch_arrays, to convert a table once for many calls);
`network` the Network used by collectives; `tp` the tensor-parallel width (the size of
group "tp"). Everything is computed with numpy over the whole (arch x op) matrix at once.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from phaze.cost.collective import collective_s, collective_time
from phaze.cost.gemm import BOUND_NAMES, COMPUTE, LINK, gemm_latency
from phaze.cost.params import (FP8_GEMM_RATE_FRACTION, FP8_QUANTIZE_BYTES,
                               UNFUSED_CROSS_ENTROPY_BYTES, CostParams)
from phaze.cost.vector import vector_cycles, vector_latency
from phaze.errors import UserError
from phaze.hw.arch import INT_FIELDS, Network, arch_table, table_arrays
from phaze.model.ops import Op


class OpCosts(NamedTuple):
    lat_one_s: np.ndarray      # (n_arch, n_op)
    lat_all_s: np.ndarray      # (n_arch, n_op)
    bound_one: np.ndarray      # (n_arch, n_op) int8, BOUND_NAMES codes
    bound_all: np.ndarray
    op_names: tuple


# long: one vectorised pass over ops x archs whose steps share every array; split, they
# would pass a dozen arrays between them
def op_latencies(ops: Sequence[Op], archs, network: Network, tp: int = 1,
                 params: CostParams | None = None, groups: dict | None = None) -> OpCosts:
    """See the module docstring. `groups` maps extra collective group names to sizes
    (default {"tp": tp})."""
    params = params or CostParams()
    if isinstance(tp, bool) or not isinstance(tp, (int, np.integer)) or tp < 1:
        raise UserError(f"must be a positive integer, got {tp!r}", field="tp",
                        fix="give a tensor-parallel width >= 1")
    sizes = {"tp": int(tp), "": int(tp)}
    sizes.update(groups or {})
    a = archs if isinstance(archs, ArchArrays) else _arch_arrays(archs)
    n_arch, n_op = len(a["n_tc"]), len(ops)
    lat_one = np.zeros((n_arch, n_op))
    lat_all = np.zeros((n_arch, n_op))
    b_one = np.zeros((n_arch, n_op), dtype=np.int8)
    b_all = np.zeros((n_arch, n_op), dtype=np.int8)
    col = {k: v[:, None] for k, v in a.items()}

    gi = [j for j, o in enumerate(ops) if _check(o) == "gemm"]
    vi = [j for j, o in enumerate(ops) if o.kind == "vector"]
    ci = [j for j, o in enumerate(ops) if o.kind == "collective"]

    kernels = np.ones(n_op)   # per-kernel overheads each op pays (grouped GEMMs: several)
    if gi:
        g = [ops[j] for j in gi]
        # a grouped expert GEMM (Op.groups > 1) is costed as its `groups` GEMMs of one
        # expert's share each, run one after the other (grouped_gemm_split)
        ng = np.array([[float(max(o.groups, 1)) for o in g]])
        dims = {x: np.array([[grouped_gemm_split(o)[x] for o in g]]) for x in ("b", "m", "n", "k")}
        op_bytes = np.array([[o.bytes_read + o.bytes_written for o in g]]) / ng
        # a weight GEMM also reads and writes its fused-accumulation buffer (main_grad, in
        # the gradient dtype, FP8 or not): traffic on top of its operands and result, per
        # GEMM its m x n weight (a grouped expert dW: one expert's, the slots split in k)
        acc = np.array([[params.wgrad_accumulation_bytes * o.gemm.batch * o.gemm.m * o.gemm.n
                         if o.name.endswith(".dW") else 0.0 for o in g]])
        # FP8 weight GEMMs: operand bytes halve (memory terms / fp8_speedup) and the tensor
        # cores run at fp8_speedup x FP8_GEMM_RATE_FRACTION of the recipe (a block-scaled
        # GEMM applies its scales in the main loop), each term scaled before the roofline's
        # max: near the ridge a block-scaled GEMM bf16 bound by its bytes can be bound by
        # its slower main loop in FP8
        cscale = mscale = 1.0
        if params.fp8_gemm:
            w8 = np.array([[1.0 if is_fp8_gemm(o) else 0.0 for o in g]])
            rate = params.fp8_speedup * FP8_GEMM_RATE_FRACTION[params.fp8_recipe]
            cscale = 1.0 / (1.0 + w8 * (rate - 1.0))
            mscale = 1.0 / (1.0 + w8 * (params.fp8_speedup - 1.0))
        one, alls, bo, ba = gemm_latency(col, dims, params, op_bytes, cscale, mscale, acc)
        one, alls = one * ng, alls * ng
        kernels[gi] = np.ceil(ng[0] / TE_GEMM_STREAMS)
        # fused vector epilogues run on one VC (one-core mode) or all VCs, overlapped (an
        # FP8 GEMM's epilogue works on its bf16 output: not sped up)
        # (a fused attention core's dropout is its kernel's draws per score, flash_dropout_s
        # below, not an epilogue pass)
        cpe = np.array([[sum(params.cpe(c) for c in o.fused
                             if not (_flash(o) and c in FLASH_DROPOUT_CLASSES)) for o in g]])
        if np.any(cpe > 0):
            outs = dims["b"] * dims["m"] * dims["n"] * ng
            hz = col["clock_hz"] * params.compute_efficiency * params.sustained_clock_fraction
            v1 = vector_cycles(outs, col["vc_lanes"], 1, cpe) / hz
            va = vector_cycles(outs, col["vc_lanes"], col["n_vc"], cpe) / hz
            bo = np.where(v1 > one, COMPUTE, bo).astype(np.int8)
            ba = np.where(va > alls, COMPUTE, ba).astype(np.int8)
            one, alls = np.maximum(one, v1), np.maximum(alls, va)
        if params.fp8_gemm:
            # quantizing the GEMM's activation operand (FP8_QUANTIZE_BYTES): a memory-bound
            # pass at the chip's HBM rate before the GEMM can start
            qb = FP8_QUANTIZE_BYTES[params.fp8_recipe]
            by_name = {o.name: o for o in ops}
            q = np.array([[_fp8_operand(o, by_name, qb) for o in g]])
            qt = q / (col["hbm_bw_Bps"] * params.hbm_bw_efficiency)
            one, alls = one + qt, alls + qt
        if params.flash_fwd_efficiency == 0:
            # fused attention cores costed as GEMMs (the sweep's mode): the draws on top
            for jj, o in enumerate(g):
                if _flash(o):
                    drop = flash_dropout_s(o, col, params)
                    one[:, jj] += drop * col["n_vc"][:, 0]   # one VC draws them all
                    alls[:, jj] += drop
        if params.flash_fwd_efficiency > 0:
            peak = (col["n_tc"] * col["tc_rows"] * col["tc_cols"] * 2.0 * col["clock_hz"]
                    * params.sustained_clock_fraction)
            for jj, o in enumerate(g):
                if not _flash(o):
                    continue
                useful = o.flops * flash_work_fraction(o, params)
                t_f = useful / (peak[:, 0] * flash_efficiency(o, col["n_tc"][:, 0], params))
                t_f = t_f + flash_dropout_s(o, col, params)
                one[:, jj] = t_f * col["n_tc"][:, 0]
                alls[:, jj] = t_f
                bo[:, jj] = ba[:, jj] = COMPUTE
        lat_one[:, gi], lat_all[:, gi], b_one[:, gi], b_all[:, gi] = one, alls, bo, ba

    if vi:
        v = [ops[j] for j in vi]
        dt = params.dtype_bytes
        elements = np.array([[float(o.elements) for o in v]])
        cpe = np.array([[params.cpe(o.vclass) for o in v]])
        moved = np.array([[_vector_bytes(o, dt, params) for o in v]])
        res = vector_latency(col, elements, cpe, moved, params)
        lat_one[:, vi], lat_all[:, vi], b_one[:, vi], b_all[:, vi] = res
        kernels[vi] = [max(o.kernels, 1) for o in v]

    if params.op_overhead_s or params.eager_kernel_s:
        idx = gi + vi
        extra = params.eager_kernel_s or params.op_overhead_s   # a vector op's further kernels
        per = params.op_overhead_s * kernels[idx]
        if vi:
            per[len(gi):] = params.op_overhead_s + extra * (kernels[vi] - 1)
        lat_one[:, idx] += per
        lat_all[:, idx] += per

    for j in ci:
        o = ops[j]
        if o.group not in sizes:
            raise UserError(f"op {o.name}: unknown communicator group {o.group!r}", field="group",
                            fix=f"pass groups={{{o.group!r}: size}}")
        if params.collective_topology == "nccl":
            t = collective_time(o.collective, o.comm_bytes, sizes[o.group], 1, network,
                                params=params)
        else:
            t = collective_s(o.collective, o.comm_bytes, sizes[o.group], network, params)
        lat_one[:, j] = lat_all[:, j] = t
        b_one[:, j] = b_all[:, j] = LINK

    return OpCosts(lat_one, lat_all, b_one, b_all, tuple(o.name for o in ops))


# CUDA streams Transformer Engine deals a grouped GEMM's per-expert cuBLAS GEMMs to, round
# robin (transformer_engine/common/gemm/cublaslt_gemm.cu multi_stream_cublas_gemm, reached
# from GroupedLinear through general_grouped_gemm -> nvte_multi_tensor_gemm unless
# NVTE_USE_CUTLASS_GROUPED_GEMM is set; common/util/multi_stream.cpp
# get_num_compute_streams() = 4; TE mirror HEAD d0067d0d). GEMMs on different streams
# overlap their launch gaps, so a group of G GEMMs pays ceil(G / 4) per-kernel overheads.
TE_GEMM_STREAMS = 4


def grouped_gemm_split(o: Op) -> dict:
    """{b, m, n, k} of ONE GEMM of a grouped expert op (Op.groups > 1): the device's token
    slots dealt evenly to its local experts (balanced routing), so dimension Op.group_dim
    (m forward and dX, k for dW) holds ceil(slots / groups) of them; any other op: its own
    dims. FLOPs and bytes of the op are unchanged (the Op keeps them)."""
    d = {"b": float(o.gemm.batch), "m": float(o.gemm.m), "n": float(o.gemm.n), "k": float(o.gemm.k)}
    if o.groups > 1:
        d[o.group_dim] = float(-(-int(d[o.group_dim]) // o.groups))
    return d


def _vector_bytes(o: Op, dtype_bytes: int, params: CostParams) -> float:
    """Bytes a vector op moves: the graph's (default one read and one write per element),
    or for cross entropy with params.unfused_cross_entropy Megatron-LM's unfused fp32
    kernels (phaze.cost.params.UNFUSED_CROSS_ENTROPY_BYTES per logit element)."""
    if params.unfused_cross_entropy and o.vclass in UNFUSED_CROSS_ENTROPY_BYTES:
        return UNFUSED_CROSS_ENTROPY_BYTES[o.vclass] * float(o.elements)
    return (o.bytes_read + o.bytes_written) or 2.0 * o.elements * dtype_bytes


def bound_names(codes: np.ndarray) -> np.ndarray:
    return np.array(BOUND_NAMES, dtype=object)[codes]


class ArchArrays(dict):
    """{ID field: float array, one entry per arch}, checked (arch_arrays): what
    op_latencies takes in place of `archs` when many calls share one arch table, so the
    table is converted and checked once."""


def arch_arrays(archs) -> ArchArrays:
    """The checked arrays of `archs` (an Arch, a list of Archs or an arch table).
    UserError on an empty table or a non-positive (or non-integer count) field."""
    return ArchArrays(_arch_arrays(archs))


def _arch_arrays(archs) -> dict:
    df = arch_table(archs)
    if df.empty:
        raise UserError("no architectures given", field="archs",
                        fix="pass at least one architecture")
    a = table_arrays(df)
    for f, v in a.items():
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise UserError("values must be positive", field=f"archs.{f}",
                            fix=f"give every architecture a finite {f} > 0")
        if f in INT_FIELDS and np.any(v != np.floor(v)):
            raise UserError("values must be positive integers", field=f"archs.{f}",
                            fix=f"give {f} as whole numbers")
    return a


# FlashAttention's block of queries (forward) or keys (backward) per work unit on Ampere
# and Hopper at head dims 64-128 (FlashAttention-2, Dao 2023, Alg. 1-2; FlashAttention-3)
FLASH_BLOCK = 128


def flash_efficiency(o: Op, n_tc, params: CostParams) -> np.ndarray:
    """Achieved fraction of the tensor-core peak of a fused attention op (attn.core or
    attn.core.bwd) on archs of n_tc cores (array (n_arch,)):

        ceiling x waves x L / (L + flash_key_overhead) x d / (d + flash_head_dim_overhead)

    - ceiling: flash_fwd_efficiency, or flash_bwd_efficiency for the backward;
    - waves: the kernel's work blocks (o.heads x ceil(queries / FLASH_BLOCK) forward, x
      ceil(keys / FLASH_BLOCK) backward) run n_tc at a time, the last wave part-empty;
    - L: the keys one query block visits (the queries one key block visits, backward); under
      a causal mask keys x flash_work_fraction (half for the triangle, nearly all of a
      sliding window's keys); flash_key_overhead is a block's fixed cost (loading it,
      rescaling and writing its output) in key-steps of its loop;
    - d: the head dim, the GEMM FLOP per score element / 4 (forward: Q K^T, P V) or / 10
      (backward: five GEMMs); flash_head_dim_overhead is the softmax's per-score work (exp,
      max, rescale) in head-dim units, so a small head dim runs less efficiently.
    Fitted on the measured H100 kernels by benchmarks/bench_h100_preset.py --fit. An op
    without o.heads (a graph saved before it was recorded): one full wave, d = GEMM depth."""
    g = o.gemm
    bwd = o.name.endswith(".bwd")
    ceiling = (params.flash_bwd_efficiency or params.flash_fwd_efficiency) if bwd \
        else params.flash_fwd_efficiency
    n_tc = np.asarray(n_tc, dtype=float)
    eff = np.full(n_tc.shape, ceiling)
    if params.flash_causal:
        # a causal band (the triangle, or a sliding window's band: keys = window < queries):
        # every one of the s rows' blocks (query blocks forward, key blocks backward)
        # visits keys x flash_work_fraction of the other side on average
        blocked, visited = g.m, g.n * flash_work_fraction(o, params)
    else:
        # forward: blocks of queries loop over the keys; backward: blocks of keys over queries
        blocked, visited = (g.n, g.m) if bwd else (g.m, g.n)
    if o.heads:
        d = g.flops / ((10.0 if bwd else 4.0) * o.heads * g.m * g.n)
        blocks = o.heads * math.ceil(blocked / FLASH_BLOCK)
        eff = eff * blocks / (n_tc * np.ceil(blocks / n_tc))
    else:
        d = float(g.k)
    eff = eff * visited / (visited + params.flash_key_overhead)
    return eff * d / (d + params.flash_head_dim_overhead)


FLASH_DROPOUT_CLASSES = ("dropout", "dropout_bwd")   # the fused core's in-kernel dropout


def flash_dropout_s(o: Op, col: dict, params: CostParams) -> np.ndarray:
    """Seconds (array (n_arch,)) that attention dropout inside a fused attention pass adds
    (o.fused names "dropout" forward, "dropout_bwd" backward): one random draw and mask
    per computed score element (o.elements x flash_work_fraction), each pass, at
    params.flash_dropout_cpe cycles per element on the chip's VC lanes. FlashAttention
    keeps no mask and draws the numbers again in the backward (Dao et al. 2022, Sec. 3.1;
    FlashAttention-2 Alg. 2); the cycles are measured as the difference between whole
    layers with and without dropout (benchmarks/data/h200_layers.csv). 0 without dropout."""
    if not params.flash_dropout_cpe or not (set(FLASH_DROPOUT_CLASSES) & set(o.fused)):
        return np.zeros(len(col["n_vc"]))
    hz = col["clock_hz"][:, 0] * params.compute_efficiency * params.sustained_clock_fraction
    lanes = col["n_vc"][:, 0] * col["vc_lanes"][:, 0]
    scores = float(o.elements) * flash_work_fraction(o, params)
    return scores * params.flash_dropout_cpe / (lanes * hz)


def flash_work_fraction(o: Op, params: CostParams) -> float:
    """Share of a fused attention op's queries x keys score rectangle (o.gemm m x n) the
    kernel computes: 1 without a causal mask (params.flash_causal False); under one, the
    causal band of width w = n over s = m queries (the graph's keys: a sliding window, or
    every key), s w - w^2 / 2 of s w (phaze.model.graph.attention_band): 1 - w / (2 s), 1/2
    for the full triangle."""
    if not params.flash_causal:
        return 1.0
    g = o.gemm
    return 1.0 - min(g.n, g.m) / (2.0 * g.m)


def _flash(o: Op) -> bool:
    """The fused attention kernel (phaze.model.graph: attn.core and attn.core.bwd)."""
    return o.kind == "gemm" and o.name.split(".bwd")[0].endswith("attn.core")


def _attention_core(o: Op) -> bool:
    """GEMMs of the attention core (no weights; they stay bf16 under FP8 training)."""
    base = o.name.split(".")[:2]
    return ".".join(base) in ("attn.core", "attn.scores", "attn.context")


# linears Megatron-Core runs as plain torch GEMMs, outside Transformer Engine: the MoE
# router (TopKRouter's weight) and Qwen2-MoE's shared-expert gate (SharedExpertMLP's
# gate_weight through F.linear)
_BF16_LINEARS = ("moe.router", "moe.shared.gate_proj")


def is_fp8_gemm(o: Op) -> bool:
    """GEMMs Transformer Engine runs in FP8 under fp8_autocast: the linears of the blocks
    (TE modules). Not the attention core (no weights) nor the LM head: Megatron-Core's
    output layer is its own tensor_parallel.ColumnParallelLinear, not a TE module, so it
    stays bf16 (megatron/core/models/gpt/gpt_model.py, core_r0.8 and later); nor the MoE
    router and the shared-expert gate, forward and backward (_BF16_LINEARS); nor Mamba-2's
    SSD scan (mamba_ssm's Triton kernels, bf16 / fp32)."""
    base = o.name.removesuffix(".dX").removesuffix(".dW")   # a backward GEMM's linear
    return (not _attention_core(o) and o.name.split(".")[0] != "lm_head"
            and base not in _BF16_LINEARS and not o.name.startswith("mamba.ssd."))


# the block norms Megatron-Core fuses into the linear after them (TE LayerNormLinear: the
# QKV and first MLP projections, Mamba's in_proj); an MoE layer's norm is a TENorm of its
# own (the router reads it too), and other norms (QK norm, Mamba's gated norm) are not TE's
_FUSED_NORMS = ("ln1", "ln2")


def _fp8_operand(o: Op, by_name: dict, qbytes: dict) -> float:
    """Bytes the quantization of FP8 weight GEMM `o`'s activation operand moves
    (phaze.cost.params.FP8_QUANTIZE_BYTES per element, `qbytes` the recipe's row): a
    forward GEMM quantizes its input X (b m k elements; "norm" when it reads a fused block
    norm's output, through the sequence-parallel all-gather), a ".dX" GEMM the output
    gradient dY (b m k of its own dims = the forward's b m n), shared with the ".dW" GEMM,
    which adds none. 0 for a GEMM that stays bf16 (is_fp8_gemm)."""
    if not is_fp8_gemm(o) or o.name.endswith(".dW"):
        return 0.0
    n = float(o.gemm.batch * o.gemm.m * o.gemm.k)
    if o.name.endswith(".dX"):
        return n * qbytes["grad"]
    src = by_name.get(o.deps[0]) if len(o.deps) == 1 else None
    while src is not None and src.kind == "collective" and len(src.deps) == 1:
        src = by_name.get(src.deps[0])
    fused = (src is not None and src.name in _FUSED_NORMS and not o.name.startswith("moe."))
    return n * qbytes["norm" if fused else "input"]


def _check(o: Op) -> str:
    if o.kind == "gemm":
        d = o.gemm
        if d is None:
            raise UserError(f"op {o.name}: a gemm op needs GEMM dims", field="gemm",
                            fix="give the op its GEMM dims (batch, m, n, k)")
        for x in ("batch", "m", "n", "k"):
            v = getattr(d, x)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise UserError(f"op {o.name}: {x} must be a positive integer, got {v!r}",
                                field=f"gemm.{x}", fix=f"give {x} as an integer >= 1")
    elif o.kind == "vector":
        if isinstance(o.elements, bool) or not isinstance(o.elements, (int, np.integer)) or o.elements <= 0:
            raise UserError(f"op {o.name}: elements must be a positive integer, got {o.elements!r}",
                            field="elements", fix="give elements as an integer >= 1")
    elif o.kind == "collective":
        if not math.isfinite(o.comm_bytes) or o.comm_bytes < 0:
            raise UserError(f"op {o.name}: comm_bytes must be >= 0", field="comm_bytes",
                            fix="give comm_bytes as a finite number >= 0")
    else:
        raise UserError(f"op {o.name}: unknown kind {o.kind!r}", field="kind",
                        fix="use kind gemm, vector or collective")
    if o.bytes_read < 0 or o.bytes_written < 0:
        raise UserError(f"op {o.name}: byte counts must be >= 0", field="bytes",
                        fix="give bytes_read and bytes_written >= 0")
    return o.kind
