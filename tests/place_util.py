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
