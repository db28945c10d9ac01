"""The report of a small real sweep (the workflow: graphs -> ILPs -> latency -> placement
-> report) and of an infeasible one, rendered in headless Chromium: every section in the
DOM; the best plan's Megatron arguments, translated back into `phaze evaluate` flags,
reproduce the reported throughput; the chip JSON is read by `phaze arch show` and
`phaze evaluate --arch FILE`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from html import escape as html_escape

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


@pytest.fixture(scope="module")
def baseline_sweep(tmp_path_factory):
    """gpt2-xl seq 1024 swept at 16 and 64 GiB of HBM, not at the TPUv4-like chip's 32: its
    baselines are the swept rows that fit in 32 GiB; its optimised plan has uneven
    stages (the DP's 11, 13, 13, 11 blocks), its fixed plan 4x16x1 the uniform split."""
    wd = tmp_path_factory.mktemp("baselines")
    cfg = small_config(hbm_gib=(16, 64))
    cfg["models"] = [{"name": "gpt2-xl", "seq": [1024], "tp": [1], "fixed_plan": "4x16x1"}]
    write_config(wd, cfg)
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


def test_tpuv4_hbm_reads_the_same_everywhere(baseline_sweep):
    """32 GiB is not swept: the TPUv4-like chip is still compared at its own 32 GiB, and
    summary.csv's column, its plan strings, the note and report.html (comparison and
    memory sections) all name that one size (the plan string and report.html used to name
    the swept size of the row, 16 GiB, next to a 32 GiB column)."""
    s = pd.read_csv(baseline_sweep / "results/report/summary.csv").iloc[0]
    assert s.tpuv4_hbm_bytes == 32 * 2**30 and "HBM=32GiB" in s.tpuv4_opt_plan
    assert "32 GiB of HBM is not among the swept sizes (16, 64 GiB)" in s.notes
    assert "add 32 to placement.hbm_gib" in s.notes
    html = (baseline_sweep / "results/report/report.html").read_text()
    compare = html.split('id="compare"')[1].split('id="sensitivity"')[0]
    roles = re.findall(r"<th>([^<]+)</th>", compare.split("</thead>")[0])
    hbm = re.findall(r"<td[^>]*>([^<]*)</td>", compare.split("<th>HBM capacity</th>")[1]
                     .split("</tr>")[0])
    shown = dict(zip(roles, hbm))
    assert shown["TPUv4-like"] == shown["TPUv4-like fixed"] == "32 GiB", shown
    memory = html.split('id="memory-split"')[1].split('id="solver"')[0]
    tpu = memory.split("TPUv4-like")[1]
    assert re.findall(r"[0-9.]+ / ([0-9.]+)</td>", tpu) and \
        set(re.findall(r"[0-9.]+ / ([0-9.]+)</td>", tpu)) == {"32"}


def test_every_baseline_has_a_command_that_reproduces_it(baseline_sweep, capsys, monkeypatch):
    """The best design and each baseline (TPUv4-like optimised plan, fixed plan) have a
    `phaze evaluate` command in summary.csv, report.html and the terminal that recomputes
    the summary's number, with the row's stages: the TPUv4-like plan's uneven split (in its
    plan string too) gives another number under Megatron's uniform split."""
    s = pd.read_csv(baseline_sweep / "results/report/summary.csv").iloc[0]
    html = (baseline_sweep / "results/report/report.html").read_text()
    monkeypatch.chdir(baseline_sweep)
    got = {}
    for col, want in (("evaluate_command", "best_samples_per_s"),
                      ("tpuv4_opt_evaluate_command", "tpuv4_opt_samples_per_s"),
                      ("tpuv4_fixed_evaluate_command", "tpuv4_fixed_samples_per_s")):
        cmd = shlex.split(s[col])
        assert cmd[:2] == ["phaze", "evaluate"] and "--stages" in cmd, cmd
        assert html_escape(s[col]) in html.split('id="reproduce"')[1]
        capsys.readouterr()
        assert main([*cmd[1:], "--json"]) == 0
        got[col] = json.loads(capsys.readouterr().out)["samples_per_s"]
        assert got[col] == pytest.approx(s[want], rel=1e-9), col
    assert "blocks=11,13,13,11" in s.tpuv4_opt_plan, s.tpuv4_opt_plan
    uniform = shlex.split(s.tpuv4_opt_evaluate_command)
    uniform = uniform[1:uniform.index("--stages")]
    assert main([*uniform, "--json"]) == 0
    other = json.loads(capsys.readouterr().out)["samples_per_s"]
    assert other != pytest.approx(s.tpuv4_opt_samples_per_s, rel=1e-6)
    assert main(["report", "--results", "results"]) == 0
    out = capsys.readouterr().out
    assert f"TPUv4-like, optimised plan: {s.tpuv4_opt_evaluate_command}" in out
    assert f"TPUv4-like, fixed plan: {s.tpuv4_fixed_evaluate_command}" in out


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


def test_chip_json_is_read_back(sweep, capsys, tmp_path):
    chip = sweep / "results/report/chip_bert-large_s128.json"
    s = pd.read_csv(sweep / "results/report/summary.csv").iloc[0]
    assert main(["arch", "show", str(chip), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arch_id"] == s.best_arch_id and shown["network"]["devices_per_node"] == 8
    assert shown["hbm_bytes"] > 0
    assert main(["evaluate", "--model", "bert-large", "--seq", "128", "--arch", str(chip),
                 "--tp", "1", "--pp", "2", "--dp", "32", "--mbs", "1", "--batch", "256",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["samples_per_s"] > 0
    # what `arch show FILE --json` prints (derived area fields included) reads back the same
    shown_file = tmp_path / "shown_chip.json"
    shown_file.write_text(json.dumps(shown))
    assert main(["evaluate", "--model", "bert-large", "--seq", "128", "--arch", str(shown_file),
                 "--tp", "1", "--pp", "2", "--dp", "32", "--mbs", "1", "--batch", "256",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == got
    bad = chip.parent / "bad_chip.json"
    bad.write_text(json.dumps({**json.loads(chip.read_text()), "n_tc": 3}))
    assert main(["arch", "show", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disagrees" in err[0]
    bad.unlink()


def test_infeasible_pruned_sweep_says_what_was_evaluated_and_tried(tmp_path, capsys):
    """hbm_gib [0.01] and a pruned search: the note counts the archs evaluated of the
    grid's (it said 'on all 2 archs' of 4), suggests only what was not tried (full
    recomputation was swept), and the pruned-search line claims no exact best design."""
    cfg = small_config(hbm_gib=(0.01,))
    cfg["search"] = {"method": "pruned", "wave1_archs": 1}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "--cores", "2", timeout_s=600)
    s = pd.read_csv(tmp_path / "results/report/summary.csv").iloc[0]
    waves = pd.read_parquet(tmp_path / "results/prune/bert-large_s128/waves.parquet")
    n = int((waves.wave > 0).sum())
    assert s.status == "infeasible" and 0 < n < len(waves) == 4
    assert (s.n_archs_evaluated, s.n_archs_grid, s.n_feasible_archs) == (n, 4, 0)
    assert (f"on the {n} archs evaluated of the 4 in the grid (the bound pass pruned the "
            f"other {4 - n})") in s.notes, s.notes
    assert "recompute full,none" in s.notes and "recomputation" not in s.notes.split("fix:")[1]
    assert "placement.hbm_gib" in s.notes and "models[0].tp" in s.notes
    html = (tmp_path / "results/report/report.html").read_text()
    capsys.readouterr()
    assert main(["report", "--results", str(tmp_path / "results")]) == 0
    for text in (html, capsys.readouterr().out):
        assert "pruned search" in text and "are exact" not in text
        assert "No design fits on the evaluated archs" in text


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
