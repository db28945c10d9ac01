"""The report of a small real sweep (the workflow: graphs -> ILPs -> latency -> placement
-> report) and of an infeasible one, rendered in headless Chromium: every section in the
DOM; the best plan's Megatron arguments, translated back into `phaze evaluate` flags,
reproduce the reported throughput; the chip JSON is read by `phaze arch show` and
`phaze evaluate --arch FILE`."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from test_report_html import _run_chromium
from workflow_util import snakemake, write_config

from phaze.cli import main

SECTIONS = ("context", "summary", "compare", "sensitivity", "memory-split", "solver",
            "runnable")


def small_config(hbm_gib=(16, 32)) -> dict:
    return {
        "models": [{"name": "bert-large", "seq": [128], "tp": [1], "fixed_plan": "2x32x1"}],
        "microbatch_sizes": [1],
        "graph": {"fused": True, "sequence_parallel": False},
        "arch": {"n_tc": [4, 8], "n_vc": [2], "tc_rows": [128], "tc_cols": [128],
                 "glb_mib": [32, 128], "clock_hz": [1.05e9], "hbm_bw_Bps": [1.2e12],
                 "area": {"a_max_mm2": "tpuv4", "min_frac": 0.0, "keep_single_core": "all"}},
        "scheduling": {"solver": "auto", "formulation": "compact", "time_limit_s": 1,
                       "n_chunks": 1, "cache_dir": "results/cache/sched"},
        "placement": {"devices": 64, "global_batch": 256, "hbm_gib": list(hbm_gib),
                      "recompute": ["none", "full"], "optimizer": "adam", "zero1": True,
                      "interleave": [1], "ranks": 1},
        "network": {"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 2.5e10,
                    "intra_latency_s": 2e-6, "inter_latency_s": 5e-6},
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    wd = tmp_path_factory.mktemp("sweep")
    write_config(wd, small_config())
    snakemake(wd, "--cores", "2", timeout_s=600)
    return wd


def _dom(html_path, tmp_path, name):
    shot = tmp_path / f"{name}.png"
    _run_chromium([f"--screenshot={shot}", "--window-size=1400,5000", "--hide-scrollbars",
                   html_path.as_uri()], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("PHAZE_KEEP_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, shot.name))
    return _run_chromium(["--dump-dom", html_path.as_uri()], tmp_path).stdout


def test_report_sections_render(sweep, tmp_path):
    html = sweep / "results/report/report.html"
    dom = _dom(html, tmp_path, "small_sweep")
    for ident in SECTIONS:
        assert f'id="{ident}' in dom, ident
    assert "TFLOP/s per device" in dom and "per GPU" not in dom
    assert "devices" in dom and "global batch" in dom and "adam + ZeRO-1" in dom
    assert "edge of the grid" in dom            # the 2-value axes put the winner on an edge
    assert "layer ILPs:" in dom and "--use-distributed-optimizer" in dom
    assert "weights" in dom and "activations" in dom


def test_tpuv4_compared_at_its_own_hbm(sweep):
    s = pd.read_csv(sweep / "results/report/summary.csv").iloc[0]
    assert s.tpuv4_hbm_bytes == 32 * 2**30
    place = pd.read_parquet(sweep / "results/place/bert-large_s128.parquet")
    tpu = place[(place.arch_id == s.tpuv4_arch_id) & (place.row_kind == "best") & place.feasible
                & (place.memory_per_device_bytes <= 32 * 2**30)]
    assert s.tpuv4_opt_samples_per_s == pytest.approx(tpu.samples_per_s.max(), rel=1e-12)


def megatron_to_evaluate(text: str, n_layers: int) -> list[str]:
    """Megatron-LM arguments -> `phaze evaluate` flags (written here independently)."""
    a = {}
    for ln in text.splitlines():
        if ln.startswith("# world size"):
            a["world"] = int(ln.split()[3])
        elif ln.startswith("--"):
            k, *v = ln.split()
            a[k] = v[0] if v else True
    t, p = int(a["--tensor-model-parallel-size"]), int(a["--pipeline-model-parallel-size"])
    assert a["--context-parallel-size"] == "1"
    rec = {"full": "full", "selective": "selective"}.get(a.get("--recompute-granularity"), "none")
    blocks = n_layers - 2
    first = int(a.get("--decoder-first-pipeline-num-layers", blocks // p))
    last = int(a.get("--decoder-last-pipeline-num-layers", blocks // p))
    mid = [(blocks - first - last) // (p - 2)] * (p - 2) if p > 2 else []
    sizes = [first + 1] + mid + [last + 1] if p > 1 else [n_layers]
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    flags = ["--tp", str(t), "--pp", str(p), "--dp", str(a["world"] // (t * p)),
             "--mbs", a["--micro-batch-size"], "--recompute", rec,
             "--interleave", "1", "--batch", a["--global-batch-size"],
             "--stages", json.dumps([[x, y] for x, y in zip(bounds, bounds[1:])])]
    if "--sequence-parallel" in a:
        flags.append("--sequence-parallel")
    return flags


def test_megatron_arguments_reproduce_the_throughput(sweep, capsys, monkeypatch):
    s = pd.read_csv(sweep / "results/report/summary.csv").iloc[0]
    text = (sweep / "results/report/megatron_bert-large_s128.txt").read_text()
    place = pd.read_parquet(sweep / "results/place/bert-large_s128.parquet")
    row = place[(place.arch_id == s.best_arch_id) & (place.samples_per_s == s.best_samples_per_s)]
    n_layers = json.loads(row.stages.iloc[0])[-1][1]
    hbm = float(row.hbm_bytes.iloc[0]) / 2**30
    monkeypatch.chdir(sweep)
    capsys.readouterr()
    assert main(["evaluate", "--model", "bert-large", "--seq", "128", "--config",
                 "results/config.yaml", "--grid", "results/arch/grid.parquet", "--arch",
                 s.best_arch_id, "--hbm-gib", repr(hbm), *megatron_to_evaluate(text, n_layers),
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["samples_per_s"] == pytest.approx(s.best_samples_per_s, rel=1e-9)


def test_chip_json_is_read_back(sweep, capsys):
    chip = sweep / "results/report/chip_bert-large_s128.json"
    s = pd.read_csv(sweep / "results/report/summary.csv").iloc[0]
    assert main(["arch", "show", str(chip), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arch_id"] == s.best_arch_id and shown["network"]["devices_per_node"] == 8
    assert shown["hbm_bytes"] > 0
    assert main(["evaluate", "--model", "bert-large", "--seq", "128", "--arch", str(chip),
                 "--tp", "1", "--pp", "2", "--dp", "32", "--mbs", "1", "--batch", "256",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples_per_s"] > 0
    bad = chip.parent / "bad_chip.json"
    bad.write_text(json.dumps({**json.loads(chip.read_text()), "n_tc": 3}))
    assert main(["arch", "show", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disagrees" in err[0]
    bad.unlink()


def test_infeasible_report_renders(tmp_path):
    from report_synth import make_grid, make_place

    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    make_place(grid, "llama2-7b", 4096, feasible=False).to_parquet(tmp_path / "l.parquet")
    assert main(["report", "--place", str(tmp_path / "l.parquet"), "--grid",
                 str(tmp_path / "grid.parquet"), "-o", str(tmp_path / "rep")]) == 0
    dom = _dom(tmp_path / "rep" / "report.html", tmp_path, "infeasible")
    assert "llama2-7b, seq 4096: no feasible design" in dom
    assert 'id="context' in dom and 'id="summary' in dom and 'id="solver' in dom
