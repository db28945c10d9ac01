"""The report against second routes to its numbers, on tables the workflow's own commands
write (graphs -> ILP schedules -> latency tables -> placement DP -> report):
  * the comparison section's device count and model-FLOPs factor of a context-parallel
    plan against `phaze evaluate --grid` of the same plan (which counts t p d cp devices
    and model FLOPs independent of cp);
  * the join of the placement rows with the grid is strict: a row of an arch the grid
    does not hold is refused (one line naming the files), not silently costed without
    its area and peak."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from place_util import cp_latency_tables

from phaze.cli import main

GiB = 2**30
NET = {"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 1.25e10,
       "intra_latency_s": 2e-6, "inter_latency_s": 5e-6}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """gpt2-xl seq 256 on two archs: one placement table per CP size (1 and 2), so that
    each holds plans of its own CP size only."""
    d = tmp_path_factory.mktemp("report-routes")
    net = json.dumps(NET)
    cp_latency_tables(d, 256, [1, 2], net)
    for cp in (1, 2):
        g = str(d / f"g{cp}.json")
        assert main(["place", "--latency", str(d / f"lat{cp}.parquet"), "--graphs", g,
                     "--grid", str(d / "grid.parquet"), "--devices", "64", "--batch", "128",
                     "--hbm-gib", "32", "--recompute", "none,full", "--optimizer", "adam",
                     "--interleave", "1", "--network", net,
                     "-o", str(d / f"place{cp}.parquet")]) == 0
    return d


def _evaluate(d, row, capsys) -> dict:
    """`phaze evaluate --grid` of a placement row's plan (the report's route 2)."""
    args = ["evaluate", "--model", "gpt2-xl", "--seq", "256", "--grid", str(d / "grid.parquet"),
            "--arch", str(row["arch_id"]), "--tp", str(int(row["t"])), "--pp", str(int(row["p"])),
            "--dp", str(int(row["d"])), "--cp", str(int(row["cp"])), "--mbs", "1",
            "--batch", "128", "--optimizer", "adam", "--fused", "--attention", "flash",
            "--network", json.dumps(NET), "--cache", str(d / "cache"),
            "--recompute", row["recompute"], "--hbm-gib", repr(float(row["hbm_bytes"]) / GiB),
            "--zero-stage", str(int(row["zero_stage"])), "--stages", row["stages"], "--json"]
    capsys.readouterr()
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["time_per_batch_s"] == pytest.approx(row["time_per_batch_s"], rel=1e-9)
    return got


def test_comparison_counts_the_context_parallel_devices(sweep, capsys):
    """A plan of cp 2 runs on t p d cp devices: the comparison table says so, and the
    speedup's factors keep their meaning (same model, batch and sequence: model-FLOPs
    factor 1, the devices factor the ratio of the plans' device counts)."""
    from phaze.report import compare
    from phaze.report.tables import load_place

    grid = pd.read_parquet(sweep / "grid.parquet").set_index("arch_id")
    place = load_place([sweep / "place1.parquet", sweep / "place2.parquet"])
    ok = place[place["feasible"] & (place["row_kind"] == "best")]
    w = ok[ok["cp"] == 2].sort_values("samples_per_s").iloc[-1]
    b = ok[ok["cp"] == 1].sort_values("samples_per_s").iloc[0]
    ew, eb = _evaluate(sweep, w, capsys), _evaluate(sweep, b, capsys)
    assert ew["devices"] == int(w["p"] * w["d"] * w["t"] * 2)

    peak_w, peak_b = (float(grid.loc[r["arch_id"], "peak_flops"]) for r in (w, b))
    shown = dict(compare.plan_rows(w, peak_w))["plan p x d x t"]
    assert f"({ew['devices']} devices)" in shown, shown

    dec = compare.decompose(w, b, peak_w, peak_b)
    assert dec["devices"] == pytest.approx(ew["devices"] / eb["devices"], rel=1e-12)
    assert dec["flops"] == pytest.approx(eb["model_flops"] / ew["model_flops"], rel=1e-9)
    assert dec["flops"] == pytest.approx(1.0, rel=1e-9)
    prod = dec["peak"] * dec["mfu"] * dec["devices"] * dec["flops"]
    assert prod == pytest.approx(dec["speedup"], rel=1e-9)


def test_placement_rows_of_an_arch_outside_the_grid_are_refused(sweep, tmp_path, capsys):
    """The report joins the placement rows with the grid (area, peak FLOP/s) strictly: a
    row whose arch the grid does not hold is a one-line error naming the files, whether
    that arch wins (it used to crash with an IndexError) or not (its rows used to be
    ranked without an area)."""
    grid = pd.read_parquet(sweep / "grid.parquet")
    place = pd.read_parquet(sweep / "place2.parquet")
    best = place[place["feasible"]].sort_values("samples_per_s")["arch_id"].iloc[-1]
    for keep in (grid["arch_id"] != best, grid["arch_id"] == best):
        sub = tmp_path / f"grid-{int(keep.iloc[0])}.parquet"
        grid[keep].to_parquet(sub, index=False)
        capsys.readouterr()
        for out in ([], ["-o", str(tmp_path / "report")]):
            rc = main(["report", "--place", str(sweep / "place2.parquet"), "--grid", str(sub),
                       *out])
            err = capsys.readouterr().err
            assert rc == 2, err
            assert "--grid" in err and "not in" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report" / "report.html").exists()
    # the full grid: the report is written
    assert main(["report", "--place", str(sweep / "place2.parquet"), "--grid",
                 str(sweep / "grid.parquet"), "-o", str(tmp_path / "report")]) == 0
