"""The workflow's pruned search (search.method: pruned, rules/prune.smk) against the
exhaustive workflow: the same best designs and baselines in summary.csv, fewer ILPs.

Cheapest honest route: the default config's models, grid and placement axes with the
list-scheduling heuristic as solver (its makespans are >= the lower bounds as every
solver's are, so the bounds stay valid), one chunk and serial placement (the job layout
never changes a result). The larger config adds GLB sizes (more archs), a third model
and a 1-arch wave 1, so wave 2 runs."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml
from workflow_util import REPO, dry_run_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

SAME = ["model", "seq", "status", "best_arch_id", "best_plan", "best_samples_per_s",
        "tpuv4_arch_id", "tpuv4_opt_plan", "tpuv4_opt_samples_per_s",
        "tpuv4_fixed_samples_per_s", "spotlight_arch_id", "spotlight_samples_per_s"]


def _config(method: str, larger: bool) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["scheduling"].update(solver="heuristic", n_chunks=1)
    cfg["placement"]["ranks"] = 1
    cfg["search"] = {"method": method}
    if larger:
        cfg["arch"]["glb_mib"] = [32, 64, 128]
        cfg["models"].append({"name": "opt-350m", "seq": [512], "tp": [1]})
        cfg["microbatch_sizes"] = [1, 2]
        cfg["search"]["wave1_archs"] = 1
    return cfg


def _run(tmp_path, method: str, larger: bool):
    work = tmp_path / method
    work.mkdir()
    write_config(work, _config(method, larger))
    snakemake(work, "--cores", "2")
    summary = pd.read_csv(work / "results" / "report" / "summary.csv")
    solves = 0
    for log in (work / "results" / "logs").rglob("*.log"):
        m = re.search(r"rows, (\d+) solves", log.read_text())
        solves += int(m.group(1)) if m else 0
    return work, summary, solves


@pytest.mark.parametrize("larger", [False, True], ids=["default", "larger"])
def test_pruned_workflow_equals_exhaustive(tmp_path, larger):
    ex_dir, ex, ex_solves = _run(tmp_path, "exhaustive", larger)
    pr_dir, pr, pr_solves = _run(tmp_path, "pruned", larger)
    assert (ex["status"] == "ok").all()
    pd.testing.assert_frame_equal(pr[SAME], ex[SAME], check_exact=False, rtol=1e-12)
    assert 0 < pr_solves < ex_solves, (pr_solves, ex_solves)
    waves = pd.concat([pd.read_parquet(p) for p in
                       sorted((pr_dir / "results" / "prune").glob("*/waves.parquet"))])
    assert (waves["wave"] == 0).any()
    # every evaluated arch's placement rows equal the exhaustive run's
    key = ["model", "seq", "arch_id", "mbs", "hbm_bytes", "recompute", "row_kind"]
    got = pd.concat([pd.read_parquet(p) for p in (pr_dir / "results/place").glob("*.parquet")])
    want = pd.concat([pd.read_parquet(p) for p in (ex_dir / "results/place").glob("*.parquet")])
    want = want.merge(got[key], on=key)
    cols = key + ["feasible", "samples_per_s"]
    pd.testing.assert_frame_equal(got[cols].sort_values(key).reset_index(drop=True),
                                  want[cols].sort_values(key).reset_index(drop=True))
    assert len(got) == len(want) < len(pd.concat(
        [pd.read_parquet(p) for p in (ex_dir / "results/place").glob("*.parquet")]))
    if larger:
        assert (waves["wave"] == 2).any(), "wave 2 never ran: the test misses that path"
    else:
        # the MPI ranks of a placement job lay out jobs only: editing them reruns the
        # placement jobs (their command changes) but not the bound pass or the waves
        write_config(pr_dir, {**_config("pruned", False),
                              "placement": {**_config("pruned", False)["placement"], "ranks": 3}})
        jobs = dry_run_jobs(pr_dir)
        assert not {"prune_bound", "prune_schedule_chunk"} & set(jobs), jobs
        # editing one model's fixed_plan reruns that model's bound pass, waves and
        # collect, plus the config and report jobs; the other model's jobs do not rerun
        # (docs/workflow.md's rerun table)
        from workflow_util import dry_run_jobs_detail

        cfg = _config("pruned", False)
        assert cfg["models"][0]["name"] == "bert-large"
        cfg["models"][0]["fixed_plan"] = "4x256x1"
        write_config(pr_dir, cfg)
        jobs = dry_run_jobs_detail(pr_dir)
        assert {j["wildcards"].get("model") for j in jobs} - {None} == {"bert-large"}, jobs
        rules = {j["rule"] for j in jobs}
        assert {"prune_bound", "prune_place", "prune_collect", "report"} <= rules, rules
        assert sum(j["rule"] == "prune_bound" for j in jobs) == 1
    assert "pruned by their bound" in (pr_dir / "results/report/report.html").read_text()
