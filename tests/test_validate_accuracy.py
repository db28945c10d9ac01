"""Acceptance: the shipped (calibrated) a100 and h100 models against the published
measurements.

Calibration split: the four a100 parameters (phaze.cost.params.PRESET_PARAMS["a100"]) were
fitted on Korthikanti Table 5; Narayanan Table 1 is held out. The h100 preset's one
run-level parameter (sustained_clock_fraction) is fitted on the nine weak-scaling rows of
the Megatron-LM README's H100 table; its two strong-scaling rows (inferred layout) are
only reported. Bounds: the achieved errors (docs/validate.md) with a small margin; the
issue-16 targets are Korthikanti <= 2 %, Narayanan <= 6 % (not reached: 8.1 %), H100 <= 8 %."""

import pytest

from phaze.cost.params import PRESET_PARAMS
from phaze.hw.presets import get_preset
from phaze.model.zoo import get_model
from phaze.place.evaluate import evaluate_model
from phaze.validate import data
from phaze.validate.calibrate import (A100_FIT_PARAMS, FIT_START, FIT_TABLE, H100_FIT_PARAMS,
                                      H100_FIT_TABLE, fit, table_mae)
from phaze.validate.evaluate import mean_abs_error_pct, plan_evaluator, predict


@pytest.fixture(scope="module")
def preds():
    # the DGX Cloud table (70 held-out rows) and the Megatron-Bridge table (32) are evaluated
    # by `phaze validate --table dgxc` / `--table bridge`; tests/test_validate_data.py
    # evaluates rows of each end to end
    return {t: [predict(c, plan_evaluator) for c in data.cases(t)] for t in data.TABLES
            if t not in (data.TABLE_DGXC, data.TABLE_BRIDGE)}


def test_korthikanti_table5_mae_within_2_percent(preds):
    assert mean_abs_error_pct(preds[data.TABLE_KORTHIKANTI]) <= 2.0   # 1.40 %


def test_narayanan_table1_mae_held_out(preds):
    # issue 16: <= 6 %. 5.96 % (Calculon 12.4 %) with the run scripts' microbatch, interleave
    # and DDP, the 2021 code's kernels, full recomputation of the blocks only and PyTorch
    # DDP's bucket copies; the pipeline-free rows (PyTorch DDP, mbs 16) are still 6-14 %
    # fast, the pipelined ones within 4.5 % (docs/validate.md)
    assert mean_abs_error_pct(preds[data.TABLE_NARAYANAN]) <= 6.0


def test_h100_readme_table_mae_within_8_percent(preds):
    h = preds[data.TABLE_H100]
    weak = [p for p in h if not p.case.caveat]
    assert len(weak) == 9
    assert mean_abs_error_pct(weak) <= 4.0       # 3.18 %, the fitted rows
    assert mean_abs_error_pct(h) <= 4.0          # 3.03 % with the strong-scaling endpoints
    for p in h:   # searched plans fit 80 GB; nothing is published about mbs/v/recompute
        assert p.searched and p.memory_per_device_bytes <= 80 * 1024**3


def test_nemo_h100_fp8_table_held_out(preds):
    # NeMo 24.07 DGX-H100 FP8 rows (held out; nothing fitted on them): 3.83 % with the
    # launcher configs' settings. Every row runs as its config says (no recomputation but
    # Nemotron-340B's selective), so every one must fit 80 GB in the memory model, or phaze
    # would call a measured run infeasible; the Nemotron rows are expressible (squared ReLU)
    n = preds[data.TABLE_NEMO]
    assert len(n) == 11 and {p.case.family for p in n} == {"gpt", "llama", "nemotron"}
    assert mean_abs_error_pct(n) <= 5.0
    for p in n:
        assert p.case.recompute == ("selective" if p.case.name == "Nemotron-340B" else "none")
        assert not p.searched
        assert p.memory_per_device_bytes <= get_preset("h100").hbm_bytes, p.case.name


def test_published_plans_are_used_and_fit_memory(preds):
    for t in (data.TABLE_NARAYANAN, data.TABLE_KORTHIKANTI):
        for p in preds[t]:
            assert not p.searched and (p.mbs, p.interleave) == (p.case.microbatch, p.case.interleave)
            assert p.memory_per_device_bytes <= 80 * 1024**3


def test_breakdown_terms_are_explicit_and_sum_to_the_time(preds):
    for ps in preds.values():
        for p in ps:
            b = p.breakdown
            assert sum(b.values()) == pytest.approx(p.time_per_batch_s, rel=1e-9)
            assert b["optimizer_s"] > 0 and b["compute_s"] > 0
            assert (b["tp_s"] > 0) == (p.case.tp > 1)
            assert (b["bubble_s"] > 0) == (p.case.pp > 1)
            assert (b["dp_sync_s"] > 0) == (p.case.dp > 1)
            # unfused accumulation over microbatches: only the 2021 (fp16, SC'21) runs
            assert (b["grad_accum_s"] > 0) == (p.case.framework == "megatron-lm-2021"
                                                and p.case.batch > p.case.dp * p.mbs)


def test_phaze_evaluate_defaults_are_the_validated_model():
    # the zoo's gpt-22b through evaluate_model's defaults gives the same time as validate
    c = data.korthikanti_cases()[0]
    r = evaluate_model(get_model("gpt-22b"), get_preset("a100"), tp=8, pp=1, dp=1, mbs=4,
                       batch=4, recompute="full")
    assert r["time_per_batch_s"] == pytest.approx(plan_evaluator(c, 4, 1).time_per_batch_s)
    assert PRESET_PARAMS["a100"]["compute_efficiency"] < 1.0


@pytest.mark.slow
def test_fit_on_table5_reproduces_the_shipped_parameters():
    got, mae = fit(FIT_TABLE, plan_evaluator, A100_FIT_PARAMS, FIT_START)   # = validate --fit
    assert mae < 3.65
    for p in A100_FIT_PARAMS:
        assert got[p.name] == pytest.approx(PRESET_PARAMS["a100"][p.name], rel=0.02, abs=1e-6)


@pytest.mark.slow
def test_h100_shipped_fraction_is_the_fit_on_the_readme_rows():
    # cheaper than re-running the fit (`phaze validate --fit`): the shipped value is the
    # minimum of the fitted rows' MAE against its neighbours 0.01 away
    f0 = PRESET_PARAMS["h100"]["sustained_clock_fraction"]
    (p,) = H100_FIT_PARAMS
    maes = [table_mae(H100_FIT_TABLE, plan_evaluator, {p.name: f}) for f in (f0 - 0.01, f0, f0 + 0.01)]
    assert maes[1] <= 5.0 and maes[1] < min(maes[0], maes[2])


def test_phaze_evaluate_inline_gpt_matches_validate(capsys):
    # Korthikanti 175B, SP + selective, through the CLI with an inline model: the same
    # time as the validate row, and Eq. 3 TFLOP/s (no-recompute form) from that time
    import json

    from phaze.cli import main

    c = [k for k in data.korthikanti_cases() if k.name == "175B/selective"][0]
    argv = ["evaluate", "--hidden", "12288", "--heads", "96", "--layers", "96", "--seq", "2048",
            "--arch", "a100", "--tp", "8", "--pp", "8", "--dp", "1", "--mbs", "1", "--batch",
            "64", "--interleave", "3", "--recompute", "selective", "--sequence-parallel", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["time_per_batch_s"] == pytest.approx(plan_evaluator(c, 1, 3).time_per_batch_s)
    B, s, l, h, V = 64, 2048, 96, 12288, 51200
    F = 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))
    assert out["tflops_per_gpu_eq3"] == pytest.approx(F / out["time_per_batch_s"] / 64 / 1e12)
    assert out["memory_per_device_bytes"] < 80 * 1024**3
    # half an inline model is a user error
    assert main(["evaluate", "--hidden", "12288", "--arch", "a100", "--tp", "1", "--pp", "1",
                 "--dp", "1", "--mbs", "1", "--batch", "1"]) == 2
