"""Error of the h100 preset's cost model against bf16 kernel times measured with torch on
an H100 80GB HBM3 (benchmarks/data/h100_kernels_measured.csv, written by
benchmarks/gpu_kernel_timing.py). No GPU needed. Prints, per GEMM and vector kernel, the
measured and modelled time (all cores) and the signed error (model / measured - 1).
Run: PYTHONPATH=. python benchmarks/bench_h100_preset.py [--fit]

--fit re-derives the h100 preset's calibrated CostParams (PRESET_PARAMS["h100"]): a grid
search of compute_efficiency, hbm_bw_efficiency and op_overhead_s minimising the mean
|log(model / measured)| over the EVEN rows of the measurement file; the ODD rows are held
out and their error is printed separately.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

import itertools
import sys

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
    if "--fit" in sys.argv:
        p = fit(ops, meas)
        print("fitted on even rows:", p)
        report(ops, meas, labels, CostParams(**p), "fitted parameters")


if __name__ == "__main__":
    main()
