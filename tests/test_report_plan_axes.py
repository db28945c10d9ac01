"""The report's outputs against each other on a real sequence-parallel row (graph ->
schedule-batch -> merge-latency -> place -> report): the comparison section of
report.html, the Megatron arguments, the NeMo keys and the `phaze evaluate` command must
all say the plan runs with sequence parallelism when the placement row does."""

from __future__ import annotations

import json
import re

import pandas as pd

from phaze.cli import main

NET = json.dumps({"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 1.25e10,
                  "intra_latency_s": 2e-6, "inter_latency_s": 5e-6})


def test_sequence_parallel_row_reads_the_same_in_every_output(tmp_path):
    d = tmp_path
    assert main(["arch", "grid", "--spec", json.dumps(
        {"n_tc": [2], "n_vc": [1], "tc_rows": [64], "tc_cols": [64], "glb_mib": [8],
         "clock_hz": [1.05e9], "hbm_bw_Bps": [1.2e12],
         "area": {"a_max_mm2": "tpuv4", "min_frac": 0.0, "keep_single_core": "all"}}),
                 "-o", str(d / "grid.parquet")]) == 0
    assert main(["graph", "--model", "bert-large", "--seq", "128", "--mbs", "1", "--tp", "2",
                 "--sequence-parallel", "--fused", "-o", str(d / "g.json")]) == 0
    assert main(["schedule-batch", "--graphs", str(d / "g.json"), "--grid", str(d / "grid.parquet"),
                 "--chunk", "0", "--n-chunks", "1", "--network", NET, "--solver", "heuristic",
                 "--formulation", "compact", "--time-limit", "1", "--bnb-share", "0.5",
                 "--cache", "", "-o", str(d / "s.parquet")]) == 0
    assert main(["merge-latency", str(d / "s.parquet"), "--grid", str(d / "grid.parquet"),
                 "--n-chunks", "1", "-o", str(d / "lat.parquet")]) == 0
    assert main(["place", "--latency", str(d / "lat.parquet"), "--graphs", str(d / "g.json"),
                 "--grid", str(d / "grid.parquet"), "--devices", "16", "--batch", "32",
                 "--hbm-gib", "32", "--recompute", "none", "--network", NET,
                 "-o", str(d / "place.parquet")]) == 0
    row = pd.read_parquet(d / "place.parquet").iloc[0]
    assert row["feasible"] and row["sequence_parallel"] and int(row["t"]) == 2
    out = d / "rep"
    assert main(["report", "--place", str(d / "place.parquet"), "--grid", str(d / "grid.parquet"),
                 "-o", f"{out}/"]) == 0
    assert "--sequence-parallel" in (out / "megatron_bert-large_s128.txt").read_text()
    assert "sequence_parallel: true" in (out / "nemo_bert-large_s128.yaml").read_text()
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    assert "--sequence-parallel" in summary["evaluate_command"].split()
    html = (out / "report.html").read_text()
    shown = re.findall(r"interleave, sequence parallel, ZeRO stage</th>((?:<td[^>]*>[^<]*</td>)+)",
                       html)
    assert shown, "no plan row in the comparison section"
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", shown[0])
    assert cells and all(", yes, " in c for c in cells), cells
