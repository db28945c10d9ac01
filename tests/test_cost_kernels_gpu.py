"""Flash attention, FP8 and sustained-clock terms of the cost model (issue 16)."""

import csv
from pathlib import Path

import numpy as np
import pytest

from phaze.cost.api import flash_efficiency, op_latencies
from phaze.cost.params import CostParams, kernel_params
from phaze.hw.presets import get_preset
from phaze.model.ops import GemmDims, Op

H100 = get_preset("h100")


def flash(b=1, h=96, s=2048, d=128, bwd=False, heads=True):
    """attn.core (.bwd) as phaze.model.graph builds it: 2 (forward) or 5 (backward) GEMMs of
    b h x s x s x d; heads=False: an op without its head count (an old graph file)."""
    g = GemmDims((5 if bwd else 2) * b * h, s, s, d)
    name = "attn.core.bwd" if bwd else "attn.core"
    return Op(name=name, kind="gemm", gemm=g, flops=g.flops, fused=("softmax",),
              heads=b * h if heads else 0)


def test_flash_closed_form():
    # 96 x 16 = 1536 query blocks on 132 SMs: 12 waves, 1536 / 1584 of them busy
    p = CostParams(flash_fwd_efficiency=0.5, flash_bwd_efficiency=0.4, flash_causal=True)
    c = op_latencies([flash(), flash(bwd=True)], H100, H100.network, params=p).lat_all_s[0]
    F = 4 * 96 * 2048 * 2048 * 128
    waves = 1536 / 1584
    assert c[0] == pytest.approx(0.5 * F / (H100.peak_flops * 0.5 * waves))
    assert c[1] == pytest.approx(0.5 * 2.5 * F / (H100.peak_flops * 0.4 * waves))


def test_flash_efficiency_closed_form():
    """ceiling x waves x L / (L + L0) x d / (d + d0), every factor by hand."""
    p = CostParams(flash_fwd_efficiency=0.8, flash_bwd_efficiency=0.7, flash_key_overhead=125,
                   flash_head_dim_overhead=48, flash_causal=True)
    n_tc = np.array([132.0, 64.0])
    # 12 heads x 16 query blocks = 192 blocks: 2 waves of 132 (264 slots), 3 of 64 (192)
    e = flash_efficiency(flash(h=12), n_tc, p)
    shape = 1024 / (1024 + 125) * 128 / (128 + 48)     # causal: 1024 of 2048 keys visited
    assert e == pytest.approx([0.8 * 192 / 264 * shape, 0.8 * 1.0 * shape])
    # backward: key blocks over the queries, d = FLOP / (10 heads s keys)
    eb = flash_efficiency(flash(h=12, bwd=True, d=64), n_tc, p)
    assert eb == pytest.approx([0.7 * 192 / 264 * 1024 / 1149 * 64 / 112,
                                0.7 * 1024 / 1149 * 64 / 112])
    # no head count: one full wave, d from the GEMM depth
    assert flash_efficiency(flash(h=12, heads=False), n_tc, p) == pytest.approx([0.8 * shape] * 2)
    # the size terms off (their defaults): the ceiling at every size that fills whole waves
    plain = CostParams(flash_fwd_efficiency=0.8)
    assert flash_efficiency(flash(h=2112, s=128, d=32), n_tc, plain) == pytest.approx([0.8, 0.8])


def test_flash_efficiency_grows_with_sequence_and_head_dim():
    p = kernel_params("h100")
    p = CostParams(**{**p.__dict__, "flash_causal": True})
    n = np.array([132.0])
    by_s = [flash_efficiency(flash(h=33, s=s), n, p)[0] for s in (512, 1024, 2048, 4096, 8192)]
    assert by_s == sorted(by_s) and by_s[-1] < p.flash_fwd_efficiency
    by_d = [flash_efficiency(flash(h=33, d=d), n, p)[0] for d in (32, 64, 128, 256)]
    assert by_d == sorted(by_d)


def test_flash_h100_preset_against_measured_kernels():
    # benchmarks/data: torch SDPA forward on H100; the preset's flash terms are fitted on
    # these 5 rows (benchmarks/bench_h100_preset.py --fit: 2.3 %; 7.3 % leave-one-out)
    p = kernel_params("h100")
    rows = [r for r in csv.DictReader(open(Path(__file__).parent.parent / "benchmarks/data/h100_kernels_measured.csv"))
            if r["kind"] == "attention"]
    errs = []
    for r in rows:
        ex = dict(x.split("=") for x in r["extra"].split(","))
        op = flash(int(r["b"]), int(ex["heads"]), int(r["m"]), int(r["k"]))
        pc = CostParams(**{**p.__dict__, "flash_causal": ex["causal"] == "True"})
        t = op_latencies([op], H100, H100.network, params=pc).lat_all_s[0][0]
        errs.append(abs(t / float(r["seconds"]) - 1))
    assert len(errs) == 5 and sum(errs) / len(errs) < 0.05


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


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise"])
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
    bound = op_latencies(ops, H100, H100.network, tp=2,
                         params=CostParams(hbm_bw_efficiency=0.85)).bound_all[0]
    for j, o in enumerate(ops):
        if o.name in expect:
            # block scales slow the main loop of a compute-bound GEMM to 1.75 / 2 of the
            # per-tensor FP8 rate (cuBLAS 12.9 on Hopper); the others run at 2x bf16
            speedup = 1.75 if recipe == "blockwise" and bound[j] == 0 else 2.0
            assert b[j] == pytest.approx(off[j] / speedup + expect[o.name] / bw), o.name
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


def test_blockwise_fp8_bytes_and_rate_closed_form():
    # TE's block quantizer: one kernel reads 2 B and writes the row-wise and the transposed
    # FP8 copies (1 + 1 B) with an fp32 scale per 128 elements each; no amax pass, and a
    # norm before it runs unfused (as under current scaling)
    from phaze.cost.gemm import COMPUTE, HBM
    from phaze.cost.params import FP8_GEMM_RATE_FRACTION, FP8_QUANTIZE_BYTES

    q = FP8_QUANTIZE_BYTES["blockwise"]
    assert q == {"norm": 4 + 8 / 128, "input": 4 + 8 / 128, "grad": 4 + 8 / 128}
    assert FP8_GEMM_RATE_FRACTION == {"delayed": 1.0, "tensorwise": 1.0, "blockwise": 0.875}
    # a large GEMM (compute-bound) pays the slower main loop; a 16-token one (bound by its
    # weight bytes) does not: same FP8 bytes, a negligible scale read
    big, small = GemmDims(1, 8192, 8192, 8192), GemmDims(1, 16, 8192, 8192)
    ops = [Op(name="mlp.fc1", kind="gemm", gemm=big, flops=big.flops),
           Op(name="mlp.fc2", kind="gemm", gemm=small, flops=small.flops)]
    p = dict(hbm_bw_efficiency=0.85)
    off = op_latencies(ops, H100, H100.network, params=CostParams(**p))
    assert list(off.bound_all[0]) == [COMPUTE, HBM]
    bw = H100.hbm_bw_Bps * 0.85
    t = op_latencies(ops, H100, H100.network,
                     params=CostParams(fp8_gemm=True, fp8_recipe="tensorwise", **p)).lat_all_s[0]
    b = op_latencies(ops, H100, H100.network,
                     params=CostParams(fp8_gemm=True, fp8_recipe="blockwise", **p)).lat_all_s[0]
    for j, (g, rate) in enumerate(((big, 1.75), (small, 2.0))):
        n = g.m * g.k
        assert b[j] == pytest.approx(off.lat_all_s[0][j] / rate + n * q["input"] / bw)
        assert t[j] == pytest.approx(off.lat_all_s[0][j] / 2.0 + n * 6.0 / bw)


def _gemm_terms(g: GemmDims, p: CostParams):
    """(compute, memory) seconds of a bf16 GEMM on all of H100's cores, the two sides of
    phaze.cost.gemm's roofline, by hand from its parts."""
    from phaze.cost.gemm import gemm_core_cycles, gemm_traffic_bytes
    a = H100
    hz = a.clock_hz * p.compute_efficiency * p.sustained_clock_fraction
    c = float(gemm_core_cycles(g.batch, g.m, g.n, g.k, a.tc_rows, a.tc_cols, a.n_tc)) / hz
    hbm, glb = gemm_traffic_bytes(g.batch, g.m, g.n, g.k, a.tc_cols, a.glb_bytes, p)
    mem = max(float(glb) / (a.glb_bw_Bps * p.glb_bw_efficiency),
              float(hbm) / (a.hbm_bw_Bps * p.hbm_bw_efficiency))
    return c, mem


def test_blockwise_rate_applies_to_the_compute_term_across_the_ridge():
    # an FP8 GEMM's compute term runs at fp8_speedup x FP8_GEMM_RATE_FRACTION, its bytes at
    # fp8_speedup: latency = max(compute / 1.75, memory / 2) (+ quantize). Near the ridge a
    # GEMM bf16 bound by its bytes is bound in blockwise FP8 by its slower main loop (choosing
    # the rate by the bf16 bound label undercharged it by up to 12.5 % and made the latency
    # jump at the ridge)
    p = CostParams(hbm_bw_efficiency=0.85)
    pb = CostParams(hbm_bw_efficiency=0.85, fp8_gemm=True, fp8_recipe="blockwise")
    q = 4 + 8 / 128
    switched = 0
    for m in range(160, 480, 16):
        g = GemmDims(1, m, 8192, 8192)
        op = [Op(name="mlp.fc2", kind="gemm", gemm=g, flops=g.flops)]
        c, mem = _gemm_terms(g, p)
        assert op_latencies(op, H100, H100.network, params=p).lat_all_s[0][0] == \
            pytest.approx(max(c, mem))
        got = op_latencies(op, H100, H100.network, params=pb)
        quant = m * 8192 * q / (H100.hbm_bw_Bps * 0.85)
        assert got.lat_all_s[0][0] == pytest.approx(max(c / 1.75, mem / 2) + quant), m
        switched += mem > c and c / 1.75 > mem / 2
    assert switched   # the grid crosses the band where the bound label changes


def test_fp8_does_not_speed_up_a_fused_vector_epilogue():
    # a GEMM with a fused epilogue that outlasts it: FP8 speeds up the GEMM, not the vector
    # pass over its (bf16) output, which still binds
    g = GemmDims(1, 4096, 4096, 4096)
    op = [Op(name="mlp.fc1", kind="gemm", gemm=g, flops=g.flops, fused=("gelu",))]
    slow_vc = dict(vector_cpe={**CostParams().vector_cpe, "gelu": 2000.0})
    bf = op_latencies(op, H100, H100.network, params=CostParams(**slow_vc))
    assert bf.bound_all[0][0] == 0
    epilogue = bf.lat_all_s[0][0]
    assert epilogue > 2 * op_latencies([Op(name="mlp.fc1", kind="gemm", gemm=g, flops=g.flops)],
                                       H100, H100.network).lat_all_s[0][0]
    for recipe in ("tensorwise", "blockwise"):
        f8 = op_latencies(op, H100, H100.network,
                          params=CostParams(fp8_gemm=True, fp8_recipe=recipe, **slow_vc))
        quant = 4096 * 4096 * (6.0 if recipe == "tensorwise" else 4 + 8 / 128) / (
            H100.hbm_bw_Bps * CostParams().hbm_bw_efficiency)
        assert f8.lat_all_s[0][0] == pytest.approx(epilogue + quant), recipe



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


@pytest.mark.parametrize("name,tp,d_fwd,d_bwd", [
    ("llama3-8b", 2, 128, 128),
    # MLA: q/k heads of 128 + 64 (nope + rope), value heads of 128: the forward's two GEMMs
    # are (192 + 128) / 2 deep on average, the backward's five (3 x 192 + 2 x 128) / 5
    ("deepseek-v2-lite", 2, (192 + 128) / 2, (3 * 192 + 2 * 128) / 5),
])
def test_flash_ops_carry_their_heads(name, tp, d_fwd, d_bwd):
    """The graph gives a fused attention op its (sequence, head) pairs per device, so the
    cost model sees its work blocks and head dim; a saved graph keeps them."""
    import json

    from phaze.model.graph import build_graph
    from phaze.model.serialize import graph_from_dict, graph_to_dict
    from phaze.model.zoo import get_model

    spec = get_model(name)
    g = build_graph(spec, seq=1024, mbs=2, tp=tp, attention="flash")
    layer = next(lay for lay in g.layers if any(o.name == "attn.core" for o in lay.fwd))
    fwd = next(o for o in layer.fwd if o.name == "attn.core")
    bwd = next(o for o in layer.bwd if o.name == "attn.core.bwd")
    assert fwd.heads == bwd.heads == 2 * spec.heads // tp
    # the head dim flash_efficiency reads: d / (d + d0) with d0 = 1 -> d = e / (1 - e)
    p = CostParams(flash_fwd_efficiency=1.0, flash_bwd_efficiency=1.0, flash_head_dim_overhead=1.0)
    for op, d in ((fwd, d_fwd), (bwd, d_bwd)):
        one_wave = np.array([op.heads * 1024 / 128.0])   # a core per block: the d factor is left
        e = flash_efficiency(op, one_wave, p)[0]
        assert e / (1 - e) == pytest.approx(d)
    back = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    lay2 = back.layers[g.layers.index(layer)]
    assert next(o for o in lay2.fwd if o.name == "attn.core").heads == fwd.heads


def test_weight_gemm_reads_and_writes_its_accumulation_buffer():
    # Megatron's fused gradient accumulation: the dW GEMM runs with beta = 1 into main_grad
    # (grad dtype), reading and writing it: CostParams.wgrad_accumulation_bytes per weight
    # element beyond the graph's bf16 write; a memory-bound dW (few tokens) pays it at the
    # HBM rate, other GEMMs not at all
    from phaze.cost.gemm import HBM

    dw = GemmDims(1, 4096, 4096, 64)          # a 4096 x 4096 weight from 64 tokens
    ops = [Op(name="mlp.fc2.dW", kind="gemm", gemm=dw, flops=dw.flops,
              bytes_read=2 * 64 * 4096 * 2, bytes_written=4096 * 4096 * 2),
           Op(name="mlp.fc2", kind="gemm", gemm=GemmDims(1, 64, 4096, 4096),
              flops=dw.flops, bytes_read=2 * 64 * 4096 + 4096 * 4096 * 2,
              bytes_written=64 * 4096 * 2)]
    p = CostParams(hbm_bw_efficiency=0.85)
    off = op_latencies(ops, H100, H100.network, params=p)
    on = op_latencies(ops, H100, H100.network,
                      params=CostParams(hbm_bw_efficiency=0.85, wgrad_accumulation_bytes=6.0))
    assert off.bound_all[0][0] == HBM
    extra = 6.0 * 4096 * 4096 / (H100.hbm_bw_Bps * 0.85)
    assert on.lat_all_s[0][0] == pytest.approx(off.lat_all_s[0][0] + extra, rel=1e-9)
    assert on.lat_all_s[0][1] == off.lat_all_s[0][1]


def test_evaluate_sets_the_accumulation_bytes_from_the_gradient_dtype():
    # 2 x grad bytes - 2: fp32 main grads (megatron-core-2024) 6 B, bf16 ones 2 B; none
    # where accumulation is a pass of its own (megatron-lm-2021: grad_accum_bytes_per_param)
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    kw = dict(tp=1, pp=1, dp=8, mbs=1, batch=8, seq=1024, recompute="none")
    got = {}
    for fw, extra in (("megatron-core-2024", {}), ("megatron-lm-2021", {}),
                      ("megatron-core-2024", {"grad_bytes": 2.0})):
        r = evaluate_model(get_model("gpt2-xl"), get_preset("h100"), framework=fw,
                           options=extra or None, **kw)
        got[(fw, bool(extra))] = r["cost_params"]["wgrad_accumulation_bytes"]
    assert got == {("megatron-core-2024", False): 6.0, ("megatron-lm-2021", False): 0.0,
                   ("megatron-core-2024", True): 2.0}


def test_grouped_expert_weight_gemm_pays_each_experts_accumulation():
    # a grouped expert dW of G local experts (slots split in k) is G GEMMs, each writing
    # and accumulating one expert's m x n weight gradient: G x 6 B per element at the HBM
    # rate where the GEMMs are bound by their bytes
    G, m, n, slots = 4, 2048, 1024, 512
    dw = GemmDims(1, m, n, slots)
    op = Op(name="moe.expert.fc1.dW", kind="gemm", gemm=dw, flops=dw.flops, groups=G,
            group_dim="k", bytes_read=2 * slots * (m + n) * 2, bytes_written=G * m * n * 2)
    got = op_latencies([op], H100, H100.network, params=CostParams(
        hbm_bw_efficiency=0.85, wgrad_accumulation_bytes=6.0)).lat_all_s[0][0]
    base = op_latencies([op], H100, H100.network,
                        params=CostParams(hbm_bw_efficiency=0.85)).lat_all_s[0][0]
    assert got - base == pytest.approx(G * 6.0 * m * n / (H100.hbm_bw_Bps * 0.85), rel=1e-6)
