"""The h100 preset's calibrated cost parameters against kernel times measured on a real
H100 (benchmarks/data/h100_kernels_measured.csv): the rows held out of the fit (odd rows)
must stay within 15% mean absolute error, and the calibration must beat the defaults."""

import importlib.util
from pathlib import Path

import numpy as np

from phaze.cost.params import CostParams, kernel_params

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_h100_preset.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_h100_preset", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_h100_preset_held_out_error():
    b = _bench()
    ops, meas, _ = b.load()
    held = np.arange(len(ops)) % 2 == 1
    calibrated, _ = b.model_s(ops, kernel_params("h100"))
    default, _ = b.model_s(ops, CostParams())
    err_cal = np.mean(np.abs(calibrated[held] / meas[held] - 1))
    err_def = np.mean(np.abs(default[held] / meas[held] - 1))
    assert err_cal < 0.15
    assert err_cal < err_def / 2
