"""End-to-end CLI of the scheduling stage on real graphs and cost (graph + hw stages)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from phaze.cli import main


def _grid(tmp_path, n=4):
    from phaze.hw.arch import grid_chunks
    from phaze.hw.grid import enumerate_grid

    g = enumerate_grid()
    pick = pd.concat([g[g["n_tc"] == 1].head(1), g[g["n_vc"] == 1].head(1),
                      g[(g["n_tc"] > 1) & (g["n_vc"] > 1)].head(n - 2)]).drop_duplicates("arch_id")
    # both of the tests' 2 scheduling chunks (by arch family) hold an arch
    of = grid_chunks(pick, 2)
    if len(set(of.values())) < 2:
        other = 1 - next(iter(of.values()))
        every = grid_chunks(g, 2)
        pick = pd.concat([pick, g[[every[str(a)] == other for a in g["arch_id"]]].head(1)])
    path = tmp_path / "grid.parquet"
    pick.to_parquet(path, index=False)
    return path, pick


def test_schedule_json_bert_on_tpuv4(capsys):
    assert main(["schedule", "--model", "bert-large", "--arch", "tpuv4", "--seq", "128",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    kinds = [layer["kind"] for layer in out["layers"]]
    assert kinds == ["prologue", "block", "epilogue"]
    for layer in out["layers"]:
        assert {"kind", "fwd_s", "bwd_s", "status", "gap"} <= set(layer)
        for ps in ("fwd", "bwd"):
            d = layer[ps]
            assert d["lower_bound_s"] <= layer[f"{ps}_s"] * (1 + 1e-12)
            # the makespan is the latest end of the listed ops
            assert max(o["end_s"] for o in d["ops"]) == pytest.approx(layer[f"{ps}_s"])


def test_schedule_json_records_the_solvers_that_ran(tmp_path, capsys):
    """The top-level solver is what solved the passes (per-pass solvers joined), not only
    the one asked for: Gurobi without a licence falls back to CBC per problem."""
    from phaze import __version__

    assert main(["schedule", "--model", "bert-large", "--arch", "tpuv4", "--seq", "128",
                 "--solver", "cbc", "--cache", str(tmp_path / "c"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    used = {layer[ps]["solver"] for layer in out["layers"] for ps in ("fwd", "bwd", "recompute")}
    assert out["solver"] == "+".join(sorted(used)) and out["solver_requested"] == "cbc"
    assert used <= {"cbc", "bound", "none"} and out["phaze_version"] == __version__


def test_schedule_batch_cache_and_merge(tmp_path, capsys):
    grid, pick = _grid(tmp_path)
    gfile = tmp_path / "g.json"
    assert main(["graph", "--model", "bert-large", "--seq", "128", "-o", str(gfile)]) == 0
    capsys.readouterr()
    net = json.dumps({"devices_per_node": 8, "intra_bw_Bps": 3e11, "intra_latency_s": 3e-6,
                      "inter_bw_Bps": 2.5e10, "inter_latency_s": 6e-6})
    shards = []
    for chunk in range(2):
        out = tmp_path / f"{chunk}.parquet"
        batch = ["schedule-batch", "--graphs", str(gfile), "--grid", str(grid),
                 "--chunk", str(chunk), "--n-chunks", "2", "--network", net,
                 "--solver", "cpsat", "--time-limit", "10", "--cache",
                 str(tmp_path / "cache"), "--json"]
        assert main(batch + ["-o", str(out)]) == 0
        first = json.loads(capsys.readouterr().out)
        shards.append(out)
        # rerun of the same sweep: zero solves, every row a cache hit, same latencies
        out2 = tmp_path / f"{chunk}b.parquet"
        assert main(batch + ["-o", str(out2)]) == 0
        second = json.loads(capsys.readouterr().out)
        assert second["solves"] == 0 and second["rows"] == first["rows"]
        a, b = pd.read_parquet(out), pd.read_parquet(out2)
        # every row a cache hit, but the empty passes (nothing to recompute): no ILP at all
        assert (b["cache_hit"] | (b["solver"] == "none")).all()
        assert set(b.loc[b["solver"] == "none", "pass"]) == {"recompute"}
        assert (a["latency_s"].to_numpy() == b["latency_s"].to_numpy()).all()
    lat = tmp_path / "lat.parquet"
    assert main(["merge-latency", *map(str, shards), "-o", str(lat)]) == 0
    df = pd.read_parquet(lat)
    assert sorted(df["arch_id"].unique()) == sorted(pick["arch_id"])
    assert len(df) == len(pick) * 3
    assert (df["fwd_s"] > 0).all() and (df["bwd_s"] > 0).all()
    # selective recomputation re-runs the attention core: blocks only
    assert ((df["recompute_s"] > 0) == (df["layer_kind"] == "block")).all()
    assert (df["recompute_s"] < df["fwd_s"]).all()


def test_schedule_batch_empty_chunk_writes_an_empty_shard(tmp_path, capsys):
    """A chunk that holds no arch (a small grid or pruning wave; archs hashed by family)
    is not an error: its shard has no rows, and merging it with the others loses nothing."""
    from phaze.hw.arch import grid_chunks
    from phaze.hw.grid import enumerate_grid

    one = enumerate_grid().head(1)
    grid = tmp_path / "grid.parquet"
    one.to_parquet(grid, index=False)
    empty = 1 - grid_chunks(one, 2)[str(one["arch_id"].iloc[0])]
    gfile = tmp_path / "g.json"
    assert main(["graph", "--model", "bert-large", "--seq", "128", "-o", str(gfile)]) == 0
    net = json.dumps({"devices_per_node": 8, "intra_bw_Bps": 3e11, "intra_latency_s": 3e-6,
                      "inter_bw_Bps": 2.5e10, "inter_latency_s": 6e-6})
    shards = []
    for chunk in range(2):
        shards.append(tmp_path / f"{chunk}.parquet")
        assert main(["schedule-batch", "--graphs", str(gfile), "--grid", str(grid), "--chunk",
                     str(chunk), "--n-chunks", "2", "--network", net, "--solver", "cpsat",
                     "--time-limit", "5", "--cache", str(tmp_path / "cache"),
                     "-o", str(shards[-1])]) == 0
    assert len(pd.read_parquet(shards[empty])) == 0
    lat = tmp_path / "lat.parquet"
    assert main(["merge-latency", *map(str, shards), "--grid", str(grid), "--n-chunks", "2",
                 "-o", str(lat)]) == 0
    assert len(pd.read_parquet(lat)) == 3          # prologue, block, epilogue of the one arch
    capsys.readouterr()


def test_schedule_unknown_arch_is_user_error(capsys):
    assert main(["schedule", "--model", "bert-large", "--arch", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("flag,value", [("--bnb-share", "1.5"), ("--bnb-share", "-0.1"),
                                        ("--time-limit", "0"), ("--threads", "0")])
def test_schedule_bad_solver_setting_is_user_error(flag, value, tmp_path, capsys):
    from phaze.sched.problem import SchedProblem

    f = tmp_path / "p.json"
    f.write_text(json.dumps(SchedProblem(("tc",), (1.0,), (0.5,), (), 1, 1).to_dict()))
    assert main(["schedule", "--problem", str(f), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag.lstrip("-") in err and err.count("\n") == 1


def test_unavailable_gurobi_falls_back_to_cbc_with_one_warning_per_job(tmp_path, capsys):
    """The pip Gurobi's size-limited licence cannot hold the reference formulation of a
    BERT block: CBC solves instead, every such row names CBC, and the job prints the
    warning once with its count, not once per ILP."""
    grid, pick = _grid(tmp_path, n=3)
    gfile = tmp_path / "g.json"
    assert main(["graph", "--model", "bert-large", "--seq", "128", "-o", str(gfile)]) == 0
    capsys.readouterr()
    out = tmp_path / "s.parquet"
    assert main(["schedule-batch", "--graphs", str(gfile), "--grid", str(grid),
                 "--network", "dgx-a100", "--solver", "gurobi", "--formulation", "reference",
                 "--bnb-share", "0", "--time-limit", "2", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    df = pd.read_parquet(out)
    assert set(df["solver"]) <= {"gurobi", "cbc", "bound", "none", "cpsat"}
    fell_back = (df["solver"] == "cbc").sum()
    warn_lines = [ln for ln in err.splitlines() if "warning" in ln]
    if fell_back:
        assert 1 <= len(warn_lines) < fell_back + 1 and "of this job" in warn_lines[0]
        assert "cbc" in warn_lines[0]


def test_solver_worker_dies_with_its_parent():
    """A job killed with SIGKILL leaves no solver worker running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("from phaze.sched import worker\n"
            "p = worker._start('cbc')\nprint(p.pid, flush=True)\nimport time\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        try:
            state = open(f"/proc/{pid}/stat").read().split()[2]
        except FileNotFoundError:
            return                                  # gone
        if state in ("Z", "X"):                     # dead, waiting to be reaped
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} still running (state {state})")
