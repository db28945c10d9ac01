"""Flash attention, FP8 and sustained-clock terms of the cost model (issue 16)."""

import csv
from pathlib import Path

import pytest

from phaze.cost.api import op_latencies
from phaze.cost.params import CostParams, kernel_params
from phaze.hw.presets import get_preset
from phaze.model.ops import GemmDims, Op

H100 = get_preset("h100")


def flash(b=1, h=96, s=2048, d=128, bwd=False):
    g = GemmDims(2 * b * h, s, s, d)
    name = "attn.core.bwd" if bwd else "attn.core"
    return Op(name=name, kind="gemm", gemm=g, flops=g.flops * (2.5 if bwd else 1.0),
              fused=("softmax",))


def test_flash_closed_form():
    p = CostParams(flash_fwd_efficiency=0.5, flash_bwd_efficiency=0.4, flash_causal=True)
    c = op_latencies([flash(), flash(bwd=True)], H100, H100.network, params=p).lat_all_s[0]
    F = 4 * 96 * 2048 * 2048 * 128
    assert c[0] == pytest.approx(0.5 * F / (H100.peak_flops * 0.5))
    assert c[1] == pytest.approx(0.5 * 2.5 * F / (H100.peak_flops * 0.4))


def test_flash_h100_preset_against_measured_kernels():
    # benchmarks/data: torch SDPA forward on H100; preset fitted on these 5 rows (<= 15 % mean)
    p = kernel_params("h100")
    p = CostParams(**{**p.__dict__, "flash_causal": True})
    rows = [r for r in csv.DictReader(open(Path(__file__).parent.parent / "benchmarks/data/h100_kernels_measured.csv"))
            if r["kind"] == "attention"]
    errs = []
    for r in rows:
        ex = dict(x.split("=") for x in r["extra"].split(","))
        if ex["causal"] != "True":
            continue
        op = flash(int(r["b"]), int(ex["heads"]), int(r["m"]), int(r["k"]))
        t = op_latencies([op], H100, H100.network, params=p).lat_all_s[0][0]
        errs.append(abs(t / float(r["seconds"]) - 1))
    assert sum(errs) / len(errs) < 0.15


def test_fp8_halves_weight_gemms_only():
    lin = Op(name="mlp.fc1", kind="gemm", gemm=GemmDims(1, 8192, 8192, 8192), flops=2 * 8192**3)
    att = Op(name="attn.scores", kind="gemm", gemm=GemmDims(32, 2048, 2048, 128),
             flops=2 * 32 * 2048 * 2048 * 128)
    a = op_latencies([lin, att], H100, H100.network, params=CostParams()).lat_all_s[0]
    b = op_latencies([lin, att], H100, H100.network, params=CostParams(fp8_gemm=True)).lat_all_s[0]
    # delayed: a cast-transpose of X, 4 B per element
    cast = 8192 * 8192 * 4.0 / (H100.hbm_bw_Bps * CostParams().hbm_bw_efficiency)
    assert b[0] == pytest.approx(a[0] / 2 + cast) and b[1] == pytest.approx(a[1])


def _fp8_layer():
    """ln1 -> (SP all-gather) -> qkv (fused norm), proj (its own cast), their .dX / .dW."""
    T, h = 4096, 2048
    g = GemmDims(1, T, 3 * h, h)
    return [Op(name="ln1", kind="vector", vclass="rmsnorm", elements=T * h),
            Op(name="attn.all_gather", kind="collective", deps=("ln1",), collective="all_gather",
               comm_bytes=2.0 * T * h),
            Op(name="attn.qkv", kind="gemm", deps=("attn.all_gather",), gemm=g, flops=g.flops),
            Op(name="attn.proj", kind="gemm", deps=("attn.qkv",), gemm=GemmDims(1, T, h, h),
               flops=2.0 * T * h * h),
            Op(name="attn.proj.dX", kind="gemm", gemm=GemmDims(1, T, h, h), flops=2.0 * T * h * h),
            Op(name="attn.proj.dW", kind="gemm", gemm=GemmDims(1, h, h, T), flops=2.0 * T * h * h),
            Op(name="moe.expert.fc1", kind="gemm", deps=("ln1",), gemm=GemmDims(1, T, h, h),
               flops=2.0 * T * h * h)]


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_quantization_bytes_closed_form(recipe):
    # per element (phaze.cost.params.FP8_QUANTIZE_BYTES, read in Transformer Engine): a
    # norm-fused input (through the SP all-gather), any other input, an output gradient;
    # the dW GEMM reuses both copies; an MoE expert's input is never norm-fused
    from phaze.cost.params import FP8_QUANTIZE_BYTES

    ops, T, h = _fp8_layer(), 4096, 2048
    bw = H100.hbm_bw_Bps * 0.85
    q = FP8_QUANTIZE_BYTES[recipe]
    a = op_latencies(ops, H100, H100.network, tp=2,
                     params=CostParams(fp8_gemm=True, hbm_bw_efficiency=0.85)).lat_all_s[0]
    b = op_latencies(ops, H100, H100.network, tp=2,
                     params=CostParams(fp8_gemm=True, hbm_bw_efficiency=0.85,
                                       fp8_recipe=recipe)).lat_all_s[0]
    off = op_latencies(ops, H100, H100.network, tp=2,
                       params=CostParams(hbm_bw_efficiency=0.85)).lat_all_s[0]
    expect = {"attn.qkv": T * h * q["norm"], "attn.proj": T * h * q["input"],
              "attn.proj.dX": T * h * q["grad"], "attn.proj.dW": 0.0,
              "moe.expert.fc1": T * h * q["input"]}
    for j, o in enumerate(ops):
        if o.name in expect:
            assert b[j] == pytest.approx(off[j] / 2 + expect[o.name] / bw), o.name
    # current scaling reads every operand once more for its amax
    assert recipe == "delayed" or all(b[j] > a[j] for j, o in enumerate(ops)
                                      if expect.get(o.name))


def test_router_and_shared_gate_stay_bf16_both_ways():
    # Megatron-Core runs them as plain torch linears (TopKRouter, SharedExpertMLP's gate):
    # FP8 changes neither their forward nor their backward GEMMs, nor quantizes for them
    g = GemmDims(1, 4096, 64, 2048)
    ops = [Op(name=n, kind="gemm", gemm=g, flops=g.flops)
           for n in ("moe.router", "moe.router.dX", "moe.router.dW",
                     "moe.shared.gate_proj", "moe.shared.gate_proj.dX")]
    a = op_latencies(ops, H100, H100.network, params=CostParams()).lat_all_s[0]
    b = op_latencies(ops, H100, H100.network, params=CostParams(fp8_gemm=True)).lat_all_s[0]
    assert list(b) == pytest.approx(list(a), rel=1e-12)


def test_fp8_recipe_is_checked():
    with pytest.raises(ValueError, match="fp8_recipe"):
        CostParams(fp8_recipe="mxfp8")


def test_sustained_clock_scales_compute_bound_kernels():
    lin = Op(name="mlp.fc1", kind="gemm", gemm=GemmDims(1, 8192, 8192, 8192), flops=2 * 8192**3)
    a = op_latencies([lin], H100, H100.network, params=CostParams()).lat_all_s[0][0]
    b = op_latencies([lin], H100, H100.network, params=CostParams(sustained_clock_fraction=0.8)).lat_all_s[0][0]
    assert b == pytest.approx(a / 0.8)


# Megatron-LM's unfused vocab-parallel cross entropy, kernel by kernel (bytes read, written
# per fp32 logit element; megatron/core/tensor_parallel/cross_entropy.py at the README's
# commit 937571cf): logits.float(), max, sub_, exp (out=), sum, div_ | mul_, cast back.
CE_FWD_KERNELS = [(2, 4), (4, 0), (4, 4), (4, 4), (4, 0), (4, 4)]
CE_BWD_KERNELS = [(4, 4), (4, 2)]


@pytest.mark.parametrize("arch", ["h100", "a100"])
def test_unfused_cross_entropy_bytes_closed_form(arch):
    from phaze.cost.api import bound_names

    a = get_preset(arch)
    E = 8 * 2048 * 51200   # tokens x vocabulary shard
    ops = [Op(name="loss", kind="vector", vclass="cross_entropy", elements=E,
              bytes_read=2 * E, bytes_written=4 * E),
           Op(name="loss.bwd", kind="vector", vclass="cross_entropy_bwd", elements=E,
              bytes_read=4 * E, bytes_written=2 * E)]
    p = CostParams(unfused_cross_entropy=True, hbm_bw_efficiency=0.8)
    c = op_latencies(ops, a, a.network, params=p)
    assert list(bound_names(c.bound_all[0])) == ["hbm", "hbm"]
    for t, kernels in zip(c.lat_all_s[0], (CE_FWD_KERNELS, CE_BWD_KERNELS)):
        assert t == pytest.approx(sum(r + w for r, w in kernels) * E / (a.hbm_bw_Bps * 0.8))
    # off (the sweep's default): the graph's own bytes
    off = op_latencies(ops, a, a.network, params=CostParams(hbm_bw_efficiency=0.8)).lat_all_s[0]
    assert off[0] == pytest.approx(6 * E / (a.hbm_bw_Bps * 0.8))
