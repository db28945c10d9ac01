"""Error of the h100 preset's cost model against bf16 kernel times measured with torch on
an H100 80GB HBM3 (benchmarks/data/h100_kernels_measured.csv, written by
benchmarks/gpu_kernel_timing.py). No GPU needed. Prints, per GEMM and vector kernel, the
measured and modelled time (all cores) and the signed error (model / measured - 1).
Run: PYTHONPATH=. python benchmarks/bench_h100_preset.py [--fit]

--fit re-derives the h100 preset's calibrated CostParams (PRESET_PARAMS["h100"]): a grid
search of compute_efficiency, hbm_bw_efficiency and op_overhead_s minimising the mean
|log(model / measured)| over the EVEN GEMM and vector rows of the measurement file; the
ODD rows are held out and their error is printed separately. Then, with that overhead, a
grid search of the fused attention terms (flash_fwd_efficiency, flash_key_overhead,
flash_head_dim_overhead: phaze.cost.api.flash_efficiency) on the attention rows, too few
to split: their leave-one-out error is printed instead.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

import itertools
import sys
from dataclasses import replace

from phaze.cost.api import bound_names, op_latencies
from phaze.cost.params import CostParams, kernel_params
from phaze.hw.presets import PRESETS
from phaze.model.ops import GemmDims, Op

DATA = Path(__file__).parent / "data" / "h100_kernels_measured.csv"
VCLASS = {"copy": "copy", "gelu": "gelu", "layernorm": "layernorm", "softmax": "softmax", "add": "add"}


def load():
    """(ops, measured seconds, labels) for the GEMM and vector rows of the data file."""
    rows = list(csv.DictReader(open(DATA)))
    ops, meas, labels = [], [], []
    for r in rows:
        b, m, n, k = (int(r[x]) for x in ("b", "m", "n", "k"))
        if r["kind"] == "gemm":
            ops.append(Op(f"g{len(ops)}", "gemm", gemm=GemmDims(b, m, n, k)))
            labels.append(f"gemm b={b} {m}x{n}x{k}")
        elif r["kind"] == "vector":
            e = m  # elements
            # add reads two tensors; the others read one; every kernel writes one
            reads = 2 if r["extra"] == "add" else 1
            ops.append(Op(f"v{len(ops)}", "vector", vclass=VCLASS[r["extra"]], elements=e,
                          bytes_read=2.0 * e * reads, bytes_written=2.0 * e))
            labels.append(f"{r['extra']} {e} elems")
        else:
            continue  # fused attention kernels have no single-op counterpart here
        meas.append(float(r["seconds"]))
    return ops, np.array(meas), labels


def load_attention():
    """(ops, causal flags, measured seconds, labels) of the fused attention rows (torch
    SDPA forward): one attn.core op each, as phaze.model.graph builds it."""
    ops, causal, meas, labels = [], [], [], []
    for r in csv.DictReader(open(DATA)):
        if r["kind"] != "attention":
            continue
        ex = dict(x.split("=") for x in r["extra"].split(","))
        b, s, d, h = int(r["b"]), int(r["m"]), int(r["k"]), int(ex["heads"])
        g = GemmDims(2 * b * h, s, s, d)
        ops.append(Op(name="attn.core", kind="gemm", gemm=g, flops=g.flops, fused=("softmax",),
                      heads=b * h))
        causal.append(ex["causal"] == "True")
        meas.append(float(r["seconds"]))
        labels.append(f"attention b={b} h={h} s={s} d={d}{' causal' if causal[-1] else ''}")
    return ops, causal, np.array(meas), labels


def attention_s(ops, causal, params: CostParams):
    """Modelled seconds of each attention op, with its own causal flag."""
    arch = PRESETS["h100"]
    return np.array([op_latencies([o], [arch], arch.network,
                                  params=replace(params, flash_causal=c)).lat_all_s[0][0]
                     for o, c in zip(ops, causal)])


FLASH_FIT = ("flash_fwd_efficiency", "flash_key_overhead", "flash_head_dim_overhead")


def fit_attention(ops, causal, meas, base: CostParams, rows=None):
    """Grid search (coarse, then fine) of FLASH_FIT on the attention rows `rows` (all by
    default), the other parameters from `base`; the backward ceiling keeps FlashAttention-2's
    backward / forward ratio (Dao 2023: about 63 % / 73 % of A100 peak)."""
    rows = np.ones(len(ops), bool) if rows is None else rows

    def loss(x):
        p = replace(base, **dict(zip(FLASH_FIT, x)))
        m = attention_s([o for o, r in zip(ops, rows) if r], [c for c, r in zip(causal, rows) if r], p)
        return float(np.mean(np.abs(np.log(m / meas[rows]))))

    grid = (np.linspace(0.4, 1.0, 13), np.linspace(0, 800, 17), np.linspace(0, 128, 17))
    best = min(itertools.product(*grid), key=loss)
    fine = [np.clip(np.linspace(v - st, v + st, 9), lo, hi) for v, st, lo, hi
            in zip(best, (0.05, 50.0, 8.0), (0.05, 0.0, 0.0), (1.0, 1e4, 1e3))]
    best = min(itertools.product(*fine), key=loss)
    ce, l0, d0 = (float(x) for x in best)
    return dict(flash_fwd_efficiency=round(ce, 3), flash_bwd_efficiency=round(ce * 0.63 / 0.73, 3),
                flash_key_overhead=round(l0), flash_head_dim_overhead=round(d0))


def report_attention(ops, causal, meas, labels, params, title):
    model = attention_s(ops, causal, params)
    err = model / meas - 1
    print(f"== {title}: fused attention (forward)")
    for lab, me, mo, e in zip(labels, meas, model, err):
        print(f"{lab:34s} {me:11.3e} {mo:11.3e} {e:+8.1%}")
    print(f"attention: {len(ops)} kernels, mean |error| {np.mean(np.abs(err)):.1%}")


def model_s(ops, params: CostParams):
    arch = PRESETS["h100"]
    c = op_latencies(ops, [arch], arch.network, params=params)
    return c.lat_all_s[0], bound_names(c.bound_all)[0]


def fit(ops, meas):
    """Grid search (coarse, then fine around the best) on the even rows."""
    fit_rows = np.arange(len(ops)) % 2 == 0

    def loss(ce, he, oh):
        m, _ = model_s(ops, CostParams(compute_efficiency=ce, hbm_bw_efficiency=he, op_overhead_s=oh))
        return float(np.mean(np.abs(np.log(m[fit_rows] / meas[fit_rows]))))

    grid = (np.linspace(0.5, 1.0, 11), np.linspace(0.5, 1.0, 11), np.linspace(0, 60e-6, 13))
    best = min(itertools.product(*grid), key=lambda x: loss(*x))
    fine = [np.clip(np.linspace(v - 2 * st, v + 2 * st, 9), lo, hi)
            for v, st, lo, hi in zip(best, (0.05, 0.05, 5e-6), (0.3, 0.3, 0.0), (1.0, 1.0, 1e-3))]
    best = min(itertools.product(*fine), key=lambda x: loss(*x))
    return dict(compute_efficiency=round(float(best[0]), 3), hbm_bw_efficiency=round(float(best[1]), 3),
                op_overhead_s=round(float(best[2]), 7))


def report(ops, meas, labels, params, title):
    model, bounds = model_s(ops, params)
    err = model / meas - 1
    print(f"== {title}")
    print(f"{'kernel':34s} {'measured_s':>11s} {'model_s':>11s} {'error':>8s}  bound")
    for lab, me, mo, e, bd in zip(labels, meas, model, err, bounds):
        print(f"{lab:34s} {me:11.3e} {mo:11.3e} {e:+8.1%}  {bd}")
    g = np.array([lab.startswith("gemm") for lab in labels])
    for name, mask in (("gemm", g), ("vector", ~g)):
        print(f"{name}: {mask.sum()} kernels, mean |error| {np.mean(np.abs(err[mask])):.1%}, "
              f"median signed error {np.median(err[mask]):+.1%}")
    held = np.arange(len(ops)) % 2 == 1
    print(f"held-out (odd) rows: mean |error| {np.mean(np.abs(err[held])):.1%}; "
          f"fit (even) rows: {np.mean(np.abs(err[~held])):.1%}")


def main() -> None:
    ops, meas, labels = load()
    report(ops, meas, labels, CostParams(), "uncalibrated defaults (CostParams())")
    report(ops, meas, labels, kernel_params("h100"),
           "shipped h100 preset parameters (kernels alone: sustained_clock_fraction 1)")
    aops, causal, ameas, alabels = load_attention()
    report_attention(aops, causal, ameas, alabels, kernel_params("h100"), "shipped h100 preset")
    if "--fit" in sys.argv:
        p = fit(ops, meas)
        print("fitted on even rows:", p)
        report(ops, meas, labels, CostParams(**p), "fitted parameters")
        base = replace(kernel_params("h100"), **p)
        fa = fit_attention(aops, causal, ameas, base)
        print("fused attention, fitted on all its rows:", fa)
        report_attention(aops, causal, ameas, alabels, replace(base, **fa), "fitted parameters")
        loo = []
        for i in range(len(aops)):
            rows = np.arange(len(aops)) != i
            pi = replace(base, **fit_attention(aops, causal, ameas, base, rows))
            loo.append(attention_s([aops[i]], [causal[i]], pi)[0] / ameas[i] - 1)
        print("fused attention, leave-one-out errors:", " ".join(f"{e:+.1%}" for e in loo),
              f"(mean |error| {np.mean(np.abs(loo)):.1%})")


if __name__ == "__main__":
    main()
