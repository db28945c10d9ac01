"""The validation harness (search, errors, calibration, report) with closed-form
evaluators written here, independent of the performance model."""

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from phaze.validate import data
from phaze.validate.calibrate import FitParam, fit, table_mae
from phaze.validate.evaluate import PlanResult, candidates, mean_abs_error_pct, predict
from phaze.validate.flops import eq3_time_s

N = data.narayanan_cases()
K = data.korthikanti_cases()
# the Narayanan rows as the paper alone gives them (no run script): microbatch and
# interleave searched
N_UNPUBLISHED = [replace(c, microbatch=None, interleave=None) for c in N]


def _measured_time(c):
    if c.metric == "seconds_per_iteration":
        return c.measured
    if c.metric == "mfu_pct":
        from phaze.validate.evaluate import mfu_pct
        return mfu_pct(c, 1.0) / c.measured
    if c.metric == "tokens_per_s_per_gpu":
        return c.batch * c.seq / (c.measured * c.gpus)
    return eq3_time_s(c.measured, c.gpus, c.batch, c.seq, c.layers, c.hidden, c.vocab)


def test_candidates_brute_force():
    for c in N_UNPUBLISHED:
        per_rep = c.batch // c.dp
        want = set()
        for b in (1, 2, 4, 8, 16):
            if per_rep % b:
                continue
            for v in range(1, c.layers + 1):
                if v == 1 or (c.pp > 1 and (c.layers // c.pp) % v == 0
                              and (per_rep // b) % c.pp == 0):
                    want.add((b, v))
        assert set(candidates(c)) == want, c.name
    for c in K + N:  # published values are used as given
        assert candidates(c) == [(c.microbatch, c.interleave)]


@given(st.integers(0, 9), st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_predict_picks_fastest_feasible(i, seed):
    c = N_UNPUBLISHED[i]

    def ev(case, b, v, params):
        h = hash((seed, b, v)) % 1000
        return PlanResult(time_per_batch_s=1.0 + h, memory_per_device_bytes=0.0,
                          feasible=(h % 3 != 0))
    p = predict(c, ev)
    allc = [(b, v, ev(c, b, v, None)) for b, v in candidates(c)]
    feas = [x for x in allc if x[2].feasible] or allc
    assert p.time_per_batch_s == min(x[2].time_per_batch_s for x in feas)
    assert p.searched


@pytest.mark.parametrize("table", data.TABLES)
def test_errors_and_mae_from_known_offsets(table):
    rows = data.cases(table)
    deltas = {c.name: (-1) ** i * 0.01 * (i + 1) for i, c in enumerate(rows)}

    def ev(case, b, v, params):
        d = deltas[case.name]
        t = _measured_time(case)
        # a rate table errs by +d when the time is t/(1+d); a seconds table when t(1+d)
        t = t / (1 + d) if case.metric in ("tflops_per_gpu", "mfu_pct", "tokens_per_s_per_gpu") \
            else t * (1 + d)
        return PlanResult(time_per_batch_s=t, memory_per_device_bytes=1.0)

    preds = [predict(c, ev) for c in rows]
    for p in preds:
        assert p.error_pct == pytest.approx(100 * deltas[p.case.name])
    assert mean_abs_error_pct(preds) == pytest.approx(
        100 * sum(abs(d) for d in deltas.values()) / len(rows))


def test_calibration_recovers_a_hidden_efficiency():
    # the "true" machine runs at efficiency 0.62 plus a fixed 0.05 s per iteration
    def ev(case, b, v, params):
        t = (_measured_time(case) - 0.05) * 0.62 / params["eff"] + params["iter_s"]
        return PlanResult(time_per_batch_s=t, memory_per_device_bytes=0.0)

    start = {"eff": 0.9, "iter_s": 0.5}
    assert table_mae(data.TABLE_KORTHIKANTI, ev, start) > 20
    got, mae = fit(data.TABLE_KORTHIKANTI, ev, [FitParam("eff", 0.3, 1.0),
                                                 FitParam("iter_s", 0.0, 1.0)], start,
                   sweeps=6, iters=30)
    assert mae < 0.2
    assert got["eff"] == pytest.approx(0.62, rel=0.01)
    assert got["iter_s"] == pytest.approx(0.05, abs=0.01)
    # the held-out table is then predicted too (same model, no refit)
    assert table_mae(data.TABLE_NARAYANAN, ev, got) < 1.0


def test_validate_cli_json_and_plot(tmp_path, monkeypatch, capsys):
    from phaze.cli import main
    from phaze.validate import evaluate

    def ev(case, b, v, params):
        return PlanResult(time_per_batch_s=_measured_time(case) * 1.02, memory_per_device_bytes=1.0)

    monkeypatch.setattr(evaluate, "plan_evaluator", ev)
    monkeypatch.setattr("phaze.cli.COMMAND_MODULES", ("phaze.validate.commands",))
    out = tmp_path / "v.png"
    assert main(["validate", "--json", "--plot", str(out)]) == 0
    obj = json.loads(capsys.readouterr().out)
    # every row of the shipped tables (both A100 tables, the H100 README and NeMo rows)
    assert len(obj["rows"]) == sum(len(data.cases(t)) for t in data.TABLES)
    assert obj["tables"][data.TABLE_H100]["mae_pct"] == pytest.approx(100 * (1 - 1 / 1.02))
    assert obj["tables"][data.TABLE_NEMO]["mae_pct"] == pytest.approx(100 * (1 - 1 / 1.02))
    # the DGX Cloud table (seconds per step, BF16 and FP8 rows) with its split by precision
    dg = obj["tables"][data.TABLE_DGXC]
    assert dg["mae_pct"] == pytest.approx(2.0) and dg["rows"] == 70
    assert {k: (v["rows"], round(v["mae_pct"], 6)) for k, v in dg["by_precision"].items()} == \
        {"bf16": (35, 2.0), "fp8": (35, 2.0)}
    assert "by_precision" not in obj["tables"][data.TABLE_NEMO]   # FP8 only
    assert {r["fp8"] for r in obj["rows"] if r["table"] == data.TABLE_DGXC} == {False, True}
    assert obj["tables"][data.TABLE_KORTHIKANTI]["mae_pct"] == pytest.approx(2.0)
    # Eq. 3 TFLOP/s fall by 1/1.02 when the time grows by 2 %
    assert obj["tables"][data.TABLE_NARAYANAN]["mae_pct"] == pytest.approx(100 * (1 - 1 / 1.02))
    assert out.stat().st_size > 1000
    assert main(["validate", "--table", "korthikanti"]) == 0
    assert "mean |error| 2.00%" in capsys.readouterr().out
    assert main(["validate", "--table", "dgxc"]) == 0
    out = capsys.readouterr().out
    assert "BF16 (35 rows): mean |error| 2.00%" in out and "FP8  (35 rows): mean |error| 2.00%" in out
    assert "held out (never fitted), per GPU type" in out and "h100: 70 rows of dgxc_h100" in out
    held = obj["held_out"]        # every row of the tables not fitted on, per preset
    assert held["h100"]["rows"] == sum(len(data.cases(t)) for t in
                                       (data.TABLE_NEMO, data.TABLE_DGXC, data.TABLE_BRIDGE))
    assert held["a100"]["tables"] == [data.TABLE_NARAYANAN]
    assert held["a100"]["mae_pct"] == pytest.approx(100 * (1 - 1 / 1.02))


def test_fp8_pairs_are_the_same_plans_and_their_speedups():
    """`phaze validate`'s FP8 speedup check pairs a table's BF16 and FP8 rows of one plan:
    on the DGX Cloud table the 35 pairs its names give (".../bf16/N" and ".../fp8/N"),
    with speedups equal to the ratios of the two rows; predictions equal to the
    measurements give no error, a model 10 % slow on the FP8 rows only gives -10/110."""
    from phaze.validate import data
    from phaze.validate.evaluate import Prediction
    from phaze.validate.report import fp8_pair_summary, fp8_pairs

    cases = data.cases(data.TABLE_DGXC)

    def pred(c, slow_fp8=1.0):
        return Prediction(case=c, mbs=1, interleave=1, searched=False,
                          time_per_batch_s=c.measured * (slow_fp8 if c.fp8 else 1.0),
                          tflops_per_gpu=0.0, memory_per_device_bytes=0.0, breakdown={})

    exact = fp8_pairs([pred(c) for c in cases])
    by_name = {c.name: c for c in cases}
    want = {(c.name, c.name.replace("/bf16/", "/fp8/")) for c in cases if "/bf16/" in c.name}
    assert {(x["bf16"], x["fp8"]) for x in exact} == want and len(want) == 35
    for x in exact:
        assert x["measured"] == pytest.approx(by_name[x["bf16"]].measured
                                              / by_name[x["fp8"]].measured, rel=1e-12)
        assert x["predicted"] == pytest.approx(x["measured"], rel=1e-12)
    s = fp8_pair_summary(fp8_pairs([pred(c, 1.1) for c in cases]))
    assert s["pairs"] == 35 and s["mean_error_pct"] == pytest.approx(-100 * 0.1 / 1.1)
    assert s["mae_pct"] == pytest.approx(100 * 0.1 / 1.1)
    assert fp8_pair_summary(fp8_pairs([pred(c) for c in cases if not c.fp8])) is None


def test_held_out_summary_per_gpu_type():
    """The held-out figure per preset: every row of the tables not fitted on, with and
    without the caveat rows; predictions off by closed-form factors give those errors."""
    from phaze.validate.calibrate import FIT_TABLE, H100_FIT_TABLE
    from phaze.validate.evaluate import Prediction, mfu_pct
    from phaze.validate.report import held_out_summary, held_out_text

    from phaze.validate.flops import eq3_tflops_per_gpu

    def pred(c, k):   # a prediction whose time is the measured one x k
        t = _measured_time(c) * k
        tf = eq3_tflops_per_gpu(t, c.gpus, c.batch, c.seq, c.layers, c.hidden, c.vocab)
        return Prediction(case=c, mbs=1, interleave=1, searched=False, time_per_batch_s=t,
                          tflops_per_gpu=tf, memory_per_device_bytes=0.0, breakdown={})

    tables = {t: data.cases(t) for t in data.TABLES}
    # tokens/s and seconds tables: 1.25x the time -> -20 % / +25 %; the fit tables anything
    preds = {t: [pred(c, 1.25 if c.caveat else 1.0) if t not in (FIT_TABLE, H100_FIT_TABLE)
                 else pred(c, 3.0) for c in cs] for t, cs in tables.items()}
    s = held_out_summary(preds, (FIT_TABLE, H100_FIT_TABLE))
    assert set(s) == {"a100", "h100"}
    assert s["a100"]["tables"] == [data.TABLE_NARAYANAN]
    assert set(s["h100"]["tables"]) == {data.TABLE_NEMO, data.TABLE_DGXC, data.TABLE_BRIDGE}
    h = [c for t in s["h100"]["tables"] for c in tables[t]]
    cav = [c for c in h if c.caveat]
    assert s["h100"]["rows"] == len(h) and s["h100"]["caveat_rows"] == len(cav) > 0
    want = sum(20.0 if c.metric == "tokens_per_s_per_gpu" else 25.0 for c in cav) / len(h)
    assert s["h100"]["mae_pct"] == pytest.approx(want, rel=1e-9)
    assert s["h100"]["mae_pct_without_caveats"] == pytest.approx(0.0, abs=1e-9)
    assert s["a100"]["mae_pct"] == pytest.approx(0.0, abs=1e-9)
    text = held_out_text(s)
    assert "h100: " in text and "(met)" in text and "caveat rows 0.00%" in text
    assert mfu_pct(tables[H100_FIT_TABLE][0], 1.0) > 0      # the fit tables stay out
