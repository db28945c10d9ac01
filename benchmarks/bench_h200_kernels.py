"""The h100 preset's kernel model against kernels timed on an H200 (2026-11-30; no GPU needed
here). Files in benchmarks/data, written on the device by gpu_kernel_timing_extra.py and
gpu_sustained_timing.py (torch 2.11, CUDA 13.0, cuDNN 9.19):
  h200_kernels_measured.csv  gpu_kernel_timing.py's own set, for a same-shape H100 comparison
  h200_kernels_extra.csv     attention forward + backward (cuDNN, FlashAttention-2), FP8 GEMMs
  h200_expert_loops.csv      per-expert GEMM loops, eager and CUDA-graph replayed
  h200_sustained_gemm.csv, h200_sustained_mix.csv   rates under unbroken load, with clocks
  h200_layers.csv            whole layers, forward + backward (gpu_layer_timing.py): the
                             Megatron-LM README's GPT layers as one TP rank holds them
                             (with and without dropout) and a Llama-3-8B layer; section 6
                             fits the h100 preset's flash_dropout_cpe on the pairs

The H200 is the H100's GH100 die (132 SMs, same clocks and 700 W cap) with HBM3e at 4.8
instead of 3.35 TB/s: compute-bound kernels should match the H100's, memory-bound ones run
faster. Section 1 checks that on the shapes both files share; the model is then compared on
compute-bound kernels only, with the h100 preset's kernel parameters (kernel_params: no
training-run derating). Prints each figure and its ratio to the model or to the H100.

Run: PYTHONPATH=. python benchmarks/bench_h200_kernels.py
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from pathlib import Path

from phaze.cost.api import op_latencies
from phaze.cost.params import FP8_GEMM_RATE_FRACTION, kernel_params, preset_params
from phaze.hw.presets import PRESETS
from phaze.model.graph import build_graph
from phaze.model.ops import GemmDims, Op
from phaze.model.zoo import get_model
from phaze.place.evaluate import megatron_layout

DATA = Path(__file__).parent / "data"
ARCH = PRESETS["h100"]
KP = kernel_params("h100")


def rows(name):
    return list(csv.DictReader(open(DATA / name)))


def latency(op, params):
    return float(op_latencies([op], [ARCH], ARCH.network, params=params).lat_all_s[0][0])


def summary(label, errs):
    """Print and return (mean |error|, median signed error) of model / measured - 1."""
    mae, med = statistics.mean(abs(e) for e in errs), statistics.median(errs)
    print(f"  {label}: {len(errs)} kernels, mean |model / measured - 1| {mae:.1%}, median {med:+.1%}")
    return mae, med


def same_shapes():
    print("== 1. H200 / H100 time ratio on the same shapes (gpu_kernel_timing.py's set)")
    h100 = {(r["kind"], r["b"], r["m"], r["n"], r["k"], r["extra"]): float(r["seconds"])
            for r in rows("h100_kernels_measured.csv")}
    ratio = {}
    for r in rows("h200_kernels_measured.csv"):
        key = (r["kind"], r["b"], r["m"], r["n"], r["k"], r["extra"])
        if key in h100:
            big = r["kind"] != "gemm" or int(r["m"]) * int(r["n"]) * int(r["k"]) >= 2 ** 33
            ratio.setdefault(r["kind"] + (" (>= 2^33 MNK)" if r["kind"] == "gemm" and big else ""),
                             []).append(float(r["seconds"]) / h100[key])
    for kind, x in ratio.items():
        print(f"  {kind:22s} {len(x):2d} kernels: median {statistics.median(x):.3f}, "
              f"range {min(x):.2f} .. {max(x):.2f}")
    return {kind: statistics.median(x) for kind, x in ratio.items()}


def attention_op(r):
    ex = dict(x.split("=") for x in r["extra"].split(","))
    b, s, dqk, h, dv = int(r["b"]), int(r["m"]), int(r["k"]), int(ex["heads"]), int(ex["v_dim"])
    bwd = r["kind"] == "attention_bwd"
    # as phaze.model.graph builds attn.core (_Layer.flash) and its backward (_bwd_flash):
    # Q K^T and P V as 2 GEMMs (backward 5) of the head dim, or, with d_qk != d_v (MLA),
    # one GEMM d_qk + d_v deep (backward 3 d_qk + 2 d_v)
    if dqk == dv:
        g = GemmDims((5 if bwd else 2) * b * h, s, s, dqk)
    else:
        g = GemmDims(b * h, s, s, 3 * dqk + 2 * dv if bwd else dqk + dv)
    return ex["backend"], Op(name="attn.core.bwd" if bwd else "attn.core", kind="gemm", gemm=g,
                             flops=g.flops, heads=b * h)


def model_vs_kernels():
    print("== 2. model (h100 kernel parameters) / H200 measured, compute-bound kernels")
    errs, fp8_ratio, block_ratio = {}, [], []
    gemm_s = {}
    for r in rows("h200_kernels_extra.csv"):
        t = float(r["seconds"])
        if r["kind"].startswith("attention"):
            backend, op = attention_op(r)
            errs.setdefault(f"{r['kind']} ({backend})", []).append(
                latency(op, replace(KP, flash_causal=True)) / t - 1)
        elif r["kind"] == "gemm":
            m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
            scaling = r["extra"].split("scaling=")[1] if "scaling=" in r["extra"] else "bf16"
            gemm_s.setdefault((m, n, k), {})[scaling] = t
            # a ".dW" name: the GEMM alone, without the activation quantization the model
            # adds to a forward FP8 GEMM (the timed kernel had its operands in FP8 already)
            op = Op("mlp.fc1.dW", "gemm", gemm=GemmDims(1, m, n, k))
            p = KP if scaling == "bf16" else replace(KP, fp8_gemm=True, fp8_recipe=scaling)
            errs.setdefault(f"gemm {scaling}", []).append(latency(op, p) / t - 1)
    out = {label: summary(label, e) for label, e in errs.items()}
    for s in gemm_s.values():
        fp8_ratio.append(s["bf16"] / s["tensorwise"])
        if "blockwise" in s:
            block_ratio.append(s["tensorwise"] / s["blockwise"])
    print(f"  FP8 (per-tensor) rate / bf16 rate, same shapes: median {statistics.median(fp8_ratio):.2f} "
          f"(range {min(fp8_ratio):.2f} .. {max(fp8_ratio):.2f}); model "
          f"{KP.fp8_speedup * FP8_GEMM_RATE_FRACTION['tensorwise']:.2f}")
    if block_ratio:
        print(f"  block-scaled / per-tensor FP8 rate: median {statistics.median(block_ratio):.3f}; "
              f"model {FP8_GEMM_RATE_FRACTION['blockwise']:.3f} (cuBLAS 12.9 post: 1.75 / 2)")
    out["fp8_rate_vs_bf16"] = statistics.median(fp8_ratio)
    out["blockwise_vs_tensorwise"] = statistics.median(block_ratio) if block_ratio else None
    return out


def expert_loops():
    print("== 3. per-expert GEMM loops (one GEMM per local expert), CUDA-graph replayed")
    errs = {}
    for r in rows("h200_expert_loops.csv"):
        g, tok, n, k = (int(r[x]) for x in ("groups", "tokens", "n", "k"))
        fp8 = r["dtype"] == "fp8"
        p = replace(KP, fp8_gemm=True, fp8_recipe="tensorwise") if fp8 else KP
        # g GEMMs of tok rows (grouped_gemm_split); a ".dW" name: no activation quantization
        op = Op("moe.expert.fc1.dW", "gemm", gemm=GemmDims(1, g * tok, n, k), groups=g)
        t, eager = float(r["graph_s"]), float(r["eager_s"])
        bare = latency(op, replace(p, op_overhead_s=0.0))
        errs.setdefault(r["dtype"], []).append(bare / t - 1)
        print(f"  {r['model']:20s} {r['gemm']} {r['dtype']:4s} {g:2d} x {tok}x{n}x{k}: graph "
              f"{t * 1e6:7.1f} us (eager {eager / t:.2f}x), model without launch overheads "
              f"{bare * 1e6:7.1f} us ({bare / t - 1:+.0%})")
    # the host's cost per eager kernel where the GPU work is short (the 512-token bf16
    # loops: one cuBLAS GEMM per expert): what the h100 preset's eager_kernel_s charges
    # each further kernel of a multi-kernel eager op (an unfused MoE router)
    gaps = [(float(r["eager_s"]) - float(r["graph_s"])) / int(r["groups"])
            for r in rows("h200_expert_loops.csv")
            if r["dtype"] == "bf16" and int(r["tokens"]) <= 512]
    gap = statistics.mean(gaps)
    print(f"  eager launch cost per kernel, short bf16 loops: {', '.join(f'{g * 1e6:.1f}' for g in gaps)}"
          f" us, mean {gap * 1e6:.2f} us; preset eager_kernel_s {KP.eager_kernel_s * 1e6:.2f} us "
          f"(ratio {KP.eager_kernel_s / gap:.3f}); op_overhead_s {KP.op_overhead_s * 1e6:.1f} us")
    return {dt: summary(f"expert loops {dt}", e) for dt, e in errs.items()}


def sustained():
    print("== 4. sustained / first-batch rate under unbroken load (700 W cap)")
    gemm = rows("h200_sustained_gemm.csv")
    mix = rows("h200_sustained_mix.csv")
    series = {"gemm_bf16_8192x8192x8192": [(float(r["elapsed_s"]), float(r["tflops"]) * 1e12,
                                            r["sm_clock_mhz"]) for r in gemm]}
    for r in mix:
        series.setdefault(r["workload"], []).append((float(r["elapsed_s"]), float(r["rate_per_s"]),
                                                    r["sm_clock_mhz"]))
    out = {}
    for name, s in series.items():
        first = statistics.mean(x[1] for x in s if x[0] < 0.15)   # still at boost clock
        late = [x for x in s if x[0] >= 3.0]
        rate = statistics.mean(x[1] for x in late)
        clock = statistics.mean(float(x[2]) for x in late)
        print(f"  {name:34s} first 0.15 s {first / 1e12:7.1f} TF/s, after 3 s {rate / 1e12:7.1f} TF/s: "
              f"{rate / first:.3f} (SM clock {clock:.0f} MHz = {clock / 1980:.3f} of 1980)")
        out[name] = rate / first
    layer = series["layer_bf16_llama8b_s4096_fwd_bwd"]
    start = statistics.mean(x[1] for x in layer if x[0] < 0.15)
    late = statistics.mean(x[1] for x in layer if x[0] >= 3.0)
    # the same layer in phaze: Llama-3-8B, 4096 tokens, microbatch 1, t = 1, flash attention
    g = build_graph(megatron_layout(get_model("llama3-8b")), seq=4096, mbs=1, tp=1, attention="flash")
    layer_ops = g.layers[len(g.layers) // 2]
    h, ffn, heads, kv, s = 4096, 14336, 32, 8, 4096
    flops = 3 * 2 * s * (h * (h + 2 * h * kv // heads) + h * h + 2 * h * ffn + ffn * h) \
        + 0.5 * heads * s * s * (h // heads) * 14
    for label, p in (("kernel parameters", KP), ("shipped training preset", preset_params("h100"))):
        p = replace(p, flash_causal=True, unfused_cross_entropy=False)
        t = sum(float(op_latencies(list(layer_ops.ops(ps)), [ARCH], ARCH.network, params=p)
                      .lat_all_s[0].sum()) for ps in ("fwd", "bwd"))
        out[f"layer model / measured ({label})"] = start * t / flops
        print(f"  Llama-3-8B layer fwd+bwd, model with {label}: {flops / t / 1e12:6.1f} TF/s; "
              f"measured in the first 0.15 s {start / 1e12:.1f} ({flops / t / start:.3f}), sustained "
              f"{late / 1e12:.1f} ({flops / t / late:.3f})")
    print(f"  shipped h100 sustained_clock_fraction {preset_params('h100').sustained_clock_fraction}"
          f" (fitted on the Megatron-LM README's H100 table)")
    return out


# gpu_layer_timing.py's GPT layers: the README rows they are cut from
README_ROWS = {"gpt-1.7b": "1.7B", "gpt-7.1b": "7.1B", "gpt-16b": "16B", "gpt-177b": "177B",
               "gpt-177b-mbs2": "177B"}


def layer_times(params) -> dict:
    """{key: (model s, measured s)} of every whole layer of h200_layers.csv (forward +
    backward, one TP rank, no sequence parallelism): the sum of the model's kernel times
    under `params` over the layer's non-collective ops, and the measured step."""
    from phaze.place.evaluate import FRAMEWORKS
    from phaze.validate import data
    from phaze.validate.evaluate import model_spec_of

    cases = {c.name: c for c in data.cases(data.TABLE_H100)}
    p = replace(params, flash_causal=True)
    out = {}
    for r in rows("h200_layers.csv"):
        tp, mbs, dropout = int(r["tp"]), int(r["mbs"]), r["dropout"] == "True"
        if r["layer"] in README_ROWS:
            spec = replace(model_spec_of(cases[README_ROWS[r["layer"]]]), dropout=dropout)
            kw = FRAMEWORKS["megatron-core-2024"]["graph"]
        else:
            spec, kw = get_model(r["layer"]), dict(attention="flash")
        g = build_graph(megatron_layout(spec), seq=int(r["seq"]), mbs=mbs, tp=tp,
                        sequence_parallel=False, **kw)
        layer = g.layers[len(g.layers) // 2]
        t = sum(float(op_latencies([o for o in layer.ops(ps) if o.kind != "collective"], [ARCH],
                                   ARCH.network, tp=tp, params=p, groups=g.collective_groups)
                      .lat_all_s[0].sum()) for ps in ("fwd", "bwd"))
        out[f"{r['layer']} t={tp} mbs={mbs}{' dropout' if dropout else ''}"] = (t, float(r["seconds"]))
    return out


def layers():
    """Whole layers against the model's kernel sum (layer_times), as model / measured."""
    print("== 5. whole layers, forward + backward at boost clock: model kernel sum / measured")
    out = {}
    for key, (t, meas) in layer_times(KP).items():
        out[key] = t / meas
        print(f"  {key:34s} measured {meas * 1e3:7.3f} ms, model {t * 1e3:7.3f} ms: {t / meas:.3f}")
    return out


def dropout_pairs(params) -> dict:
    """{layer: (model, measured) seconds that dropout adds}: each layer of h200_layers.csv
    timed with and without dropout 0.1, the difference (hidden dropouts in eager PyTorch,
    a dropout and an add kernel each, and attention dropout inside cuDNN's fused kernel)."""
    t = layer_times(params)
    return {k[:-len(" dropout")]: (t[k][0] - t[k[:-len(" dropout")]][0],
                                   t[k][1] - t[k[:-len(" dropout")]][1])
            for k in t if k.endswith(" dropout")}


def fit_dropout():
    """The h100 preset's flash_dropout_cpe: least squares over the dropout pairs (the model's
    added time is linear in the cycles, so two evaluations give the exact solution)."""
    print("== 6. attention dropout inside the fused kernel: cycles per score element and pass")
    base, unit = dropout_pairs(replace(KP, flash_dropout_cpe=0.0)), dropout_pairs(replace(KP, flash_dropout_cpe=1.0))
    slope = {k: unit[k][0] - base[k][0] for k in base}
    gap = {k: base[k][1] - base[k][0] for k in base}
    cpe = sum(slope[k] * gap[k] for k in base) / sum(slope[k] ** 2 for k in base)
    shipped = dropout_pairs(KP)
    for k, (m, meas) in shipped.items():
        print(f"  {k:22s} dropout adds: measured {meas * 1e3:6.3f} ms, model {m * 1e3:6.3f} ms "
              f"(without the in-kernel term {base[k][0] * 1e3:6.3f} ms): {m / meas:.3f}")
    print(f"  least-squares flash_dropout_cpe {cpe:.1f}; shipped {KP.flash_dropout_cpe}")
    return dict(fitted=cpe, shipped=KP.flash_dropout_cpe, pairs={k: m / meas for k, (m, meas) in shipped.items()})


def main() -> dict:
    """Every figure printed, by section (tests/test_cost_h200_kernels.py reads them)."""
    return dict(same_shapes=same_shapes(), kernels=model_vs_kernels(), expert_loops=expert_loops(),
                sustained=sustained(), layers=layers(), dropout=fit_dropout())


if __name__ == "__main__":
    main()
