"""One answer, end to end: the composed workflow (graphs -> ILP schedules -> latency tables
-> placement DP -> report) against second routes to the same numbers:
  * a sweep over two microbatch sizes equals, row for row, the sweeps of each size alone;
  * a placement row's plan, fed to `phaze evaluate --grid --arch` (and each best design's
    command printed by the report), gives the row's time per batch and memory;
  * `phaze search --config --method all` finds the workflow's best design and throughput.
Every recompute mode (none, selective, full), sequence parallelism, context parallelism and
expert parallelism (an MoE model's graph per ep) as DP axes, fused and unfused graphs. The runs share one ILP cache, which keys ILPs by content only: a run never
sees another microbatch size's layer times through it."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_util import REPO, env, snakemake, write_config

from phaze.cli import main

pytestmark = pytest.mark.slow

GiB = 2**30
PROVENANCE = ["item", "solve_seconds", "phaze_version"]


def e2e_config(cache_dir: str, **over) -> dict:
    """.test/e2e.yaml (a runnable config) with its ILP cache at `cache_dir`."""
    cfg = yaml.safe_load((REPO / ".test" / "e2e.yaml").read_text())
    cfg["scheduling"]["cache_dir"] = cache_dir
    cfg.update(over)
    return cfg


def run(workdir, cfg):
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", timeout_s=900)
    return workdir


def place_rows(workdir) -> pd.DataFrame:
    df = pd.concat([pd.read_parquet(p) for p in sorted((workdir / "results/place").glob("*.parquet"))],
                   ignore_index=True)
    keys = ["model", "seq", "arch_id", "mbs", "hbm_bytes", "recompute", "row_kind"]
    return df.drop(columns=PROVENANCE).sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    cache = str(base / "ilp-cache")
    out = {"both": run(base / "both", e2e_config(cache))}
    for b in (1, 2):
        out[b] = run(base / f"mbs{b}", e2e_config(cache, microbatch_sizes=[b]))
    unfused = e2e_config(cache, microbatch_sizes=[1])
    unfused["graph"] = {"fused": False, "sequence_parallel": [False, True], "attention": "flash"}
    out["unfused"] = run(base / "unfused", unfused)
    nothing_fits = e2e_config(cache, microbatch_sizes=[1])
    nothing_fits["placement"]["hbm_gib"] = [0.001]
    out["infeasible"] = run(base / "infeasible", nothing_fits)
    return out


def test_microbatch_sizes_together_equal_each_alone(runs):
    both = place_rows(runs["both"])
    alone = pd.concat([place_rows(runs[1]), place_rows(runs[2])], ignore_index=True)
    alone = alone.sort_values(["model", "seq", "arch_id", "mbs", "hbm_bytes", "recompute",
                               "row_kind"]).reset_index(drop=True)
    assert set(both["recompute"]) == {"none", "selective", "full"}
    assert both["feasible"].any() and not both["feasible"].all()
    assert both["sequence_parallel"].eq(True).any(), "sequence parallelism never chosen"
    assert set(both.loc[both.model == "gpt2-xl", "cp"].dropna()) == {1, 2}, "cp never chosen"
    moe = both[(both.model == "mixtral-8x7b") & both.feasible]
    assert set(moe.loc[moe.row_kind == "best", "ep"]) <= {1, 2}
    assert 2 in set(moe.loc[moe.row_kind == "best", "ep"]), "ep 2 never chosen"
    assert set(moe.loc[moe.row_kind == "fixed", "ep"]) == {1}, "no fixed row on the ep-1 graph"
    pd.testing.assert_frame_equal(both, alone, check_exact=False, rtol=1e-12)


def _evaluate_args(row, workdir) -> list[str]:
    args = ["evaluate", "--config", str(workdir / "results/config.yaml"),
            "--grid", str(workdir / "results/arch/grid.parquet"), "--arch", row.arch_id,
            "--model", row.model, "--seq", str(row.seq), "--tp", str(int(row.t)),
            "--pp", str(int(row.p)), "--dp", str(int(row.d)), "--mbs", str(row.mbs),
            "--recompute", row.recompute, "--hbm-gib", repr(float(row.hbm_bytes) / GiB),
            "--interleave", str(int(row.interleave)), "--cp", str(int(row.cp)),
            "--ep", str(int(row.ep)), "--json"]
    if row.sequence_parallel:
        args.append("--sequence-parallel")
    if row.row_kind == "best":        # the DP's stages; fixed rows use the uniform split
        args += ["--stages", row.stages]
    return args


@pytest.mark.parametrize("which", ["both", "unfused"])
def test_evaluate_reproduces_sampled_placement_rows(runs, which, capsys, monkeypatch):
    workdir = runs[which]
    monkeypatch.chdir(workdir)          # the config's cache_dir and paths are the run's
    df = place_rows(workdir)
    ok = df[df["feasible"]]
    rng = np.random.default_rng(14)
    # every (mbs, HBM, recompute, row kind) present, then random extra rows
    picks = [g.index[rng.integers(len(g))] for _, g in
             ok.groupby(["mbs", "hbm_bytes", "recompute", "row_kind"])]
    # and every (model, ep): an MoE model's rows at ep 1 and 2 (a graph built for each)
    picks += [g.index[rng.integers(len(g))] for _, g in ok.groupby(["model", "ep"])]
    picks += list(rng.choice(ok.index, size=min(6, len(ok)), replace=False))
    assert len(picks) >= 8
    for i in dict.fromkeys(picks):
        row = ok.loc[i]
        assert main(_evaluate_args(row, workdir)) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["time_per_batch_s"] == pytest.approx(row.time_per_batch_s, rel=1e-9), dict(row)
        assert got["memory_per_device_bytes"] == pytest.approx(row.memory_per_device_bytes,
                                                               rel=1e-9)
        assert got["feasible"]


def test_report_commands_reproduce_best_designs(runs):
    workdir = runs["both"]
    summary = pd.read_csv(workdir / "results/report/summary.csv")
    best = place_rows(workdir).query("row_kind == 'best' and feasible")
    for _, r in summary[summary.status == "ok"].iterrows():
        cmd = shlex.split(r.evaluate_command)
        assert cmd[:2] == ["phaze", "evaluate"]
        proc = subprocess.run([sys.executable, "-m", "phaze", *cmd[1:], "--json"], cwd=workdir,
                              env=env(), capture_output=True, text=True, check=True)
        got = json.loads(proc.stdout)
        assert got["samples_per_s"] == pytest.approx(r.best_samples_per_s, rel=1e-9)
        top = best[best.model == r.model]["samples_per_s"].max()
        assert r.best_samples_per_s == pytest.approx(top, rel=1e-12)


def test_search_finds_the_workflow_best(runs, capsys, monkeypatch):
    workdir = runs["both"]
    monkeypatch.chdir(workdir)
    grid = pd.read_parquet(workdir / "results/arch/grid.parquet")
    area = dict(zip(grid.arch_id, grid.area_mm2))
    best = place_rows(workdir).query("row_kind == 'best' and feasible")
    assert main(["search", "--config", "results/config.yaml", "--grid",
                 "results/arch/grid.parquet", "--method", "all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in out["runs"]} == {"bert-large", "gpt2-xl", "mixtral-8x7b"}
    for r in out["runs"]:
        rows = best[best.model == r["model"]]
        top = rows["samples_per_s"].max()
        # the documented order: throughput, then smaller area, then arch id
        winners = rows[rows.samples_per_s == top]
        want = min(winners.arch_id, key=lambda a: (area[a], a))
        for method in ("exhaustive", "pruned"):
            m = r["methods"][method]
            assert m["best_samples_per_s"] == pytest.approx(top, rel=1e-12), method
            assert m["best_arch_id"] == want, method


def test_hf_config_tp_width_rejected_before_any_job(tmp_path):
    hf = tmp_path / "tiny-gpt2.json"
    hf.write_text(json.dumps({"model_type": "gpt2", "n_embd": 256, "n_head": 4, "n_layer": 2,
                              "vocab_size": 1000, "n_positions": 256}))
    cfg = e2e_config(str(tmp_path / "cache"))
    cfg["models"] = [{"name": "tiny", "hf_config": str(hf), "seq": [128], "tp": [1, 3]}]
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "models[0].tp[1]" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()
    good = copy.deepcopy(cfg)
    good["models"][0]["tp"] = [1, 2]
    good["placement"].pop("ep", None)     # a dense sweep has no experts to spread
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(good))
    assert main(["check-config", "--config", str(tmp_path / "ok.yaml")]) == 0
    assert main(["check-config", "--config", str(tmp_path / "config.yaml")]) == 2


def test_infeasible_sweep_writes_the_whole_report(runs):
    """HBM too small for every design: the workflow still ends, every declared report file
    exists, and the page says INFEASIBLE for each model."""
    rep = runs["infeasible"] / "results/report"
    for name in ("summary.csv", "pareto.png", "throughput_per_area.png", "breakdown.png",
                 "memory.png", "report.html"):
        assert (rep / name).stat().st_size > 0, name
    summary = pd.read_csv(rep / "summary.csv")
    assert set(summary.status) == {"infeasible"}
    html = (rep / "report.html").read_text()
    assert html.count("no feasible design") >= 2
