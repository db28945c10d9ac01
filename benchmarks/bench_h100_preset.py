"""Error of the h100 preset's cost model against bf16 kernel times measured with torch on
an H100 80GB HBM3 (benchmarks/data/h100_kernels_measured.csv, written by
benchmarks/gpu_kernel_timing.py). No GPU needed. Prints, per GEMM and vector kernel, the
measured and modelled time (all cores) and the signed error (model / measured - 1).
Run: PYTHONPATH=. python benchmarks/bench_h100_preset.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from phaze.cost.api import bound_names, op_latencies
from phaze.hw.presets import PRESETS
from phaze.model.ops import GemmDims, Op

DATA = Path(__file__).parent / "data" / "h100_kernels_measured.csv"
VCLASS = {"copy": "copy", "gelu": "gelu", "layernorm": "layernorm", "softmax": "softmax", "add": "add"}


def main() -> None:
    arch = PRESETS["h100"]
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
    c = op_latencies(ops, [arch], arch.network)
    model = c.lat_all_s[0]
    err = model / np.array(meas) - 1
    bounds = bound_names(c.bound_all)[0]
    print(f"{'kernel':34s} {'measured_s':>11s} {'model_s':>11s} {'error':>8s}  bound")
    for lab, me, mo, e, bd in zip(labels, meas, model, err, bounds):
        print(f"{lab:34s} {me:11.3e} {mo:11.3e} {e:+8.1%}  {bd}")
    g = np.array([lab.startswith("gemm") for lab in labels])
    for name, mask in (("gemm", g), ("vector", ~g)):
        print(f"{name}: {mask.sum()} kernels, mean |error| {np.mean(np.abs(err[mask])):.1%}, "
              f"median signed error {np.median(err[mask]):+.1%}")


if __name__ == "__main__":
    main()
