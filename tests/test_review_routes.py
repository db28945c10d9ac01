"""Routes that must agree on the recent settings: placement.cp_comm_type / --cp-comm-type
reaches every route that costs or exports a CP plan (the DP, `phaze evaluate --grid`,
`phaze search`, the Megatron and NeMo exports), and every route refuses what the others
refuse (an all-to-all CP that cannot split a TP rank's heads; --cp-comm-type without CP)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from place_util import cp_latency_tables

from phaze.cli import main

NET = {"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 1.25e10,
       "intra_latency_s": 2e-6, "inter_latency_s": 5e-6}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """gpt2-xl s1024 (25 heads) graphs of cp 1 and 2, scheduled on one arch."""
    d = tmp_path_factory.mktemp("routes")
    cp_latency_tables(d, 1024, [2], json.dumps(NET))
    return d


def _place_args(d, out, comm):
    return ["place", "--latency", str(d / "lat2.parquet"), "--graphs", str(d / "g2.json"),
            "--grid", str(d / "grid.parquet"), "--devices", "64", "--batch", "256",
            "--hbm-gib", "32", "--recompute", "none,full", "--optimizer", "adam",
            "--interleave", "1", "--network", json.dumps(NET), "--cp-comm-type", comm,
            "-o", str(out)]


def _arch(d) -> str:
    return str(pd.read_parquet(d / "grid.parquet")["arch_id"].iloc[0])


def _error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_place_and_search_refuse_a2a_cp_that_evaluate_grid_refuses(stages, capsys):
    """cp 2 does not split gpt2-xl's 25 heads (Transformer Engine's a2a CP needs heads % cp
    == 0): check-config and `phaze evaluate --grid` refuse it; `phaze place` and `phaze
    search` costed it (4 feasible rows, a cp 2 best design) instead of refusing."""
    base = ["evaluate", "--model", "gpt2-xl", "--seq", "1024", "--grid",
            str(stages / "grid.parquet"), "--arch", _arch(stages), "--tp", "1", "--pp", "1",
            "--dp", "32", "--cp", "2", "--mbs", "1", "--batch", "256", "--attention", "flash",
            "--recompute", "full", "--hbm-gib", "32", "--network", json.dumps(NET),
            "--cache", str(stages / "cache"), "--cp-comm-type", "a2a"]
    assert main(base) == 2
    assert "--cp-comm-type: cp = 2 must divide the 25 query heads" in _error(capsys)
    out = stages / "a2a.parquet"
    assert main(_place_args(stages, out, "a2a")) == 2
    assert "--cp-comm-type" in _error(capsys) and not out.exists()
    assert main(_place_args(stages, stages / "ag.parquet", "allgather")) == 0   # others run
    capsys.readouterr()
    search = ["search", "--model", "gpt2-xl", "--seq", "1024", "--cp", "2", "--tp", "1",
              "--mbs", "1", "--attention", "flash", "--devices", "64", "--batch", "256",
              "--hbm-gib", "32", "--recompute", "full", "--optimizer", "adam",
              "--method", "exhaustive", "--grid", str(stages / "grid.parquet"),
              "--network", json.dumps(NET), "--cache", str(stages / "cache")]
    assert main(search + ["--cp-comm-type", "a2a"]) == 2
    assert "--cp-comm-type: cp = 2 must divide the 25 query heads" in _error(capsys)


def test_evaluate_grid_refuses_cp_comm_type_without_cp(stages, capsys):
    """--cp-comm-type with --cp 1: the preset route refuses it (it sets nothing); the grid
    route ignored it silently."""
    for arch in (["--arch", "a100"],
                 ["--grid", str(stages / "grid.parquet"), "--arch", _arch(stages),
                  "--attention", "flash", "--cache", str(stages / "cache")]):
        args = ["evaluate", "--model", "gpt2-xl", "--seq", "1024", *arch, "--tp", "1",
                "--pp", "1", "--dp", "32", "--cp", "1", "--mbs", "1", "--batch", "256",
                "--recompute", "full", "--cp-comm-type", "a2a"]
        assert main(args) == 2
        assert _error(capsys) == ("phaze: error: --cp-comm-type: sets how context parallelism "
                                  "exchanges keys, which is off; fix: add --cp N (N > 1), or "
                                  "drop --cp-comm-type")


def test_megatron_and_nemo_exports_run_the_costed_cp_comm_type(stages, tmp_path, capsys):
    """A sweep with placement.cp_comm_type allgather costs its cp 2 rows with exposed K/V
    all-gathers; the report's Megatron arguments and NeMo keys must say so (Megatron-Core's
    default is p2p, a faster ring than the row was costed with), in Transformer Engine's
    spelling all_gather (it raises on allgather)."""
    from phaze.report.commands import build, runnable_files
    from phaze.report.runnable import megatron_args, nemo_yaml

    out = tmp_path / "ag.parquet"
    assert main(_place_args(stages, out, "allgather")) == 0
    capsys.readouterr()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"placement": {"cp_comm_type": "allgather",
                                                 "global_batch": 256, "optimizer": "adam"}}))
    sweep, summary = build([str(out)], str(stages / "grid.parquet"),
                           [str(stages / "lat2.parquet")], str(cfg))
    files = runnable_files(tmp_path / "report", sweep, summary)
    (f,) = files.values()
    assert "--context-parallel-size 2" in f["megatron"]
    assert "--cp-comm-type all_gather" in f["megatron"].splitlines()
    assert "  cp_comm_type: all_gather" in f["nemo"].splitlines()
    row = {"t": 1, "p": 2, "d": 8, "interleave": 1, "stages": "[]", "mbs": 1, "seq": 1024,
           "recompute": "none", "ep": 1.0, "cp": 2.0, "zero_stage": 0.0}
    assert "--cp-comm-type a2a" in megatron_args(row, 256, cp_comm_type="a2a")
    assert "cp_comm_type: p2p" in nemo_yaml(row, 256, 8)
    one = dict(row, cp=1.0)       # no CP: no communication type to name
    assert "cp-comm-type" not in megatron_args(one, 256, cp_comm_type="a2a")
    assert "cp_comm_type" not in nemo_yaml(one, 256, 8, cp_comm_type="a2a")


def test_search_json_records_its_version_and_settings(stages, capsys):
    """`phaze search --json` records how it was obtained: phaze's version and the placement,
    graph, scheduling and network settings it ran with (the flags given among them)."""
    from phaze import __version__

    args = ["search", "--model", "gpt2-xl", "--seq", "1024", "--tp", "1", "--mbs", "1",
            "--attention", "flash", "--devices", "64", "--batch", "256", "--hbm-gib", "32",
            "--recompute", "full", "--optimizer", "sgd", "--method", "pruned",
            "--grid", str(stages / "grid.parquet"), "--network", json.dumps(NET),
            "--cache", str(stages / "cache"), "--json"]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)
    st = got["settings"]
    assert got["phaze_version"] == __version__
    assert (st["placement"]["optimizer"], st["placement"]["devices"],
            st["placement"]["global_batch"], st["placement"]["hbm_gib"]) == ("sgd", 64, 256, [32.0])
    assert st["graph"]["attention"] == "flash" and st["sched"]["solver"]
    assert st["network"]["devices_per_node"] == NET["devices_per_node"]


def test_place_table_records_the_settings_it_was_placed_with(stages, capsys):
    """A `phaze place` table carries, in its parquet metadata, how its rows were obtained
    beyond their columns: phaze's version, the placement settings (optimizer, ZeRO, devices,
    batch, cp_comm_type), the graph options and the network."""
    from phaze import __version__
    from phaze.place.table import read_place

    out = stages / "prov.parquet"
    assert main(_place_args(stages, out, "allgather")) == 0
    capsys.readouterr()
    meta = read_place(out).attrs["phaze"]
    pl = meta["placement"]
    assert meta["phaze_version"] == __version__
    assert (pl["optimizer"], pl["devices"], pl["global_batch"], pl["cp_comm_type"]) == \
        ("adam", 64, 256, "allgather")
    assert meta["network"]["devices_per_node"] == NET["devices_per_node"]
    assert "attention" in meta["graph"]
