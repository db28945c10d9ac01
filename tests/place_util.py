"""Helpers for the placement tests: a sweep row's plan through `phaze evaluate --grid`."""

from __future__ import annotations

import json

import pytest

from phaze.cli import main

GiB = 2**30


def evaluate_row(row, arch: str, hbm: float, rec: str, flags: list, capsys) -> dict:
    """`phaze evaluate --grid` of a placement row's plan (its t, p, d, cp, ep, ZeRO stage and
    stages on `arch` at HBM `hbm` bytes and recompute mode `rec`; `flags`: the model, grid
    and sweep settings); asserts it gives the row's time and memory; returns its JSON."""
    args = ["evaluate", *flags, "--arch", arch, "--tp", str(int(row.t)), "--pp", str(int(row.p)),
            "--dp", str(int(row.d)), "--cp", str(int(row.cp)), "--ep", str(int(row.ep)),
            "--recompute", rec, "--hbm-gib", repr(hbm / GiB),
            "--zero-stage", str(int(row.zero_stage)), "--stages", row.stages, "--json"]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["time_per_batch_s"] == pytest.approx(row.time_per_batch_s, rel=1e-9)
    assert got["memory_per_device_bytes"] == pytest.approx(row.memory_per_device_bytes, rel=1e-9)
    # the result records how it was obtained: the plan's options, the graph and schedule
    assert (got["plan_options"]["ep"], got["plan_options"]["cp"]) == (int(row.ep), int(row.cp))
    assert got["graph_options"]["attention"] and got["sched"]["solver"] in (
        "cpsat", "highs", "cbc", "gurobi", "heuristic", "bnb")
    # and what its layer schedules proved: every ILP counted, optimal ones among them
    sc = got["sched"]
    assert sc["solvers_used"] and 0 <= sc["ilps_optimal"] <= sc["ilps"] and sc["ilps"] > 0
    assert sc["ilps_optimal"] + sc["ilps_time_limit"] <= sc["ilps"] and sc["worst_gap"] >= 0
    # the optimizer step it charges, with the DP sync, at the arch's HBM bandwidth
    assert got["optimizer_s"] > 0
    return got


def assert_best_of(both, alone: list, axis: str) -> None:
    """Every row of a sweep over several graph variants (`both`, indexed like the tables
    of `alone`) is the fastest feasible row of the sweeps on each variant alone, and takes
    its value of `axis` (cp, ep); infeasible where none fits."""
    for key, row in both.iterrows():
        ok = [t.loc[key] for t in alone if t.loc[key, "feasible"]]
        if not ok:
            assert not row["feasible"], key
            continue
        best = min(ok, key=lambda r: r["time_per_batch_s"])
        assert row["time_per_batch_s"] == pytest.approx(best["time_per_batch_s"], rel=1e-12)
        assert row[axis] == best[axis]


def cp_latency_tables(d, seq: int, n_tc: list, net: str) -> None:
    """The workflow's commands on gpt2-xl at `seq` for CP sizes 1 and 2 into directory d:
    an arch grid of `n_tc` core counts (grid.parquet), one graph per CP size (g{cp}.json),
    scheduled and merged into one latency table per CP size (lat{cp}.parquet)."""
    assert main(["arch", "grid", "--spec", json.dumps(
        {"n_tc": n_tc, "n_vc": [min(n_tc)], "tc_rows": [64], "tc_cols": [64], "glb_mib": [8],
         "clock_hz": [1.05e9], "hbm_bw_Bps": [1.2e12],
         "area": {"a_max_mm2": "tpuv4", "min_frac": 0.0, "keep_single_core": "all"}}),
                 "-o", str(d / "grid.parquet")]) == 0
    for cp in (1, 2):
        g = str(d / f"g{cp}.json")
        assert main(["graph", "--model", "gpt2-xl", "--seq", str(seq), "--mbs", "1", "--tp", "1",
                     "--cp", str(cp), "--fused", "--attention", "flash", "-o", g]) == 0
        assert main(["schedule-batch", "--graphs", g, "--grid", str(d / "grid.parquet"),
                     "--chunk", "0", "--n-chunks", "1", "--network", net, "--solver", "auto",
                     "--formulation", "compact", "--time-limit", "2", "--bnb-share", "0.5",
                     "--cache", str(d / "cache"), "-o", str(d / f"shard{cp}.parquet")]) == 0
        assert main(["merge-latency", str(d / f"shard{cp}.parquet"), "--grid",
                     str(d / "grid.parquet"), "--n-chunks", "1", "-o",
                     str(d / f"lat{cp}.parquet")]) == 0
