"""Workflow checks that need no stage code: config validation before any job, the job
graph of the shipped configs, and which config values reach which rules."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import yaml
from workflow_util import (REPO, dry_run_jobs, dry_run_jobs_detail, snakemake, tiny_config,
                           write_config)

SCHEMA = yaml.safe_load((REPO / "phaze" / "data" / "schema.yaml").read_text())


def _bad(mutate):
    cfg = tiny_config()
    mutate(cfg)
    return cfg


BAD_CONFIGS = {
    "unknown model": (
        _bad(lambda c: c["models"].__setitem__(0, {"name": "gpt-9000", "seq": [128], "tp": [1]})),
        "models[0].name",
    ),
    "negative HBM": (
        _bad(lambda c: c["placement"].__setitem__("hbm_gib", [32, -64])),
        "placement.hbm_gib[1]",
    ),
    "empty grid axis": (_bad(lambda c: c["arch"].__setitem__("n_tc", [])), "arch.n_tc"),
    "zero-size buffer": (_bad(lambda c: c["arch"].__setitem__("glb_mib", [0])), "arch.glb_mib[0]"),
    "misspelled field": (
        _bad(lambda c: c["placement"].__setitem__("hbm_gb", [32])),
        "placement.hbm_gb: unknown config field (not in phaze/data/schema.yaml); fix: did you "
        "mean placement.hbm_gib?",
    ),
    "no microbatch": (_bad(lambda c: c.__setitem__("microbatch_sizes", [])), "microbatch_sizes"),
    "bad recompute": (
        _bad(lambda c: c["placement"].__setitem__("recompute", ["sometimes"])),
        "placement.recompute[0]",
    ),
    "chunks zero": (_bad(lambda c: c["scheduling"].__setitem__("n_chunks", 0)), "scheduling.n_chunks"),
    "TP width not dividing heads": (
        _bad(lambda c: c["models"][0].__setitem__("tp", [1, 3])),
        "models[0].tp[1]",
    ),
    "empty grid after the area filter": (
        _bad(lambda c: c["arch"]["area"].update(a_max_mm2=1.0, keep_single_core="none")),
        "arch.area",
    ),
    "seq beyond the learned positions": (
        _bad(lambda c: c["models"][0].update(seq=[100000])),
        # the fix names the config field, not phaze graph's --seq flag
        "models[0].seq[0]: 100000 exceeds the 512 learned positions of bert-large; fix: set "
        "models[0].seq[0] to 512 or less",
    ),
    "fixed plan on more devices than placement.devices": (
        _bad(lambda c: c["models"][0].update(fixed_plan="4x32x1")),   # 128 > 64 devices
        "models[0].fixed_plan: 4x32x1 needs p x d x t = 128 devices",
    ),
    "fixed plan whose p does not divide the blocks": (
        _bad(lambda c: c["models"][0].update(fixed_plan="5x8x1")),    # bert-large: 24
        "models[0].fixed_plan: p = 5 of 5x8x1 does not divide",
    ),
    "MoE model without an ep dividing its experts": (
        _bad(lambda c: (c["models"].append({"name": "mixtral-8x7b", "seq": [128], "tp": [1]}),
                        c["placement"].__setitem__("ep", [3]))),
        "placement.ep: none of the expert-parallel sizes [3] divides mixtral-8x7b's 8 routed "
        "experts",
    ),
    "expert parallelism in a dense sweep": (
        _bad(lambda c: c["placement"].__setitem__("ep", [1, 8])),
        "placement.ep: expert-parallel sizes [1, 8] spread routed experts, and no model of "
        "this sweep has any",
    ),
    "missing hf config": (
        _bad(lambda c: c["models"][0].update(hf_config="nowhere/config.json")),
        "models[0].hf_config",
    ),
}


# A Snakemake start costs about 11 s: the workflow itself refuses one case of each kind of
# check (schema: an unknown field, a bound; a model that cannot build at a TP width; the
# arch grid, checked in the main process only); every case goes through `phaze
# check-config`, which runs the same checks (check_config_schema, SweepSettings,
# semantic_errors) in-process.
WORKFLOW_CASES = ("misspelled field", "negative HBM", "TP width not dividing heads",
                  "empty grid after the area filter")


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_refused_by_check_config(tmp_path, case, capsys):
    from phaze.cli import main

    cfg, field = BAD_CONFIGS[case]
    path = write_config(tmp_path, cfg)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("phaze: error: "), err
    assert field in err, err


@pytest.mark.parametrize("case", WORKFLOW_CASES)
def test_bad_config_rejected_before_any_job(tmp_path, case):
    cfg, field = BAD_CONFIGS[case]
    write_config(tmp_path, cfg)
    # A real run (not -n): it must stop while parsing, before any job starts.
    proc = snakemake(tmp_path, "--cores", "1", check=False, timeout_s=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    # one line, the last on stderr (Snakemake's own "Using workflow specific profile" may
    # precede it), no WorkflowError file/line or stack lines
    line = err.splitlines()[-1]
    assert line.startswith("phaze: error: invalid config: "), err[-2000:]
    assert f"field {field}" in line, line
    assert "Traceback" not in err and 'File "' not in err and "WorkflowError" not in err, err
    assert not (tmp_path / "results").exists(), "a job ran although the config is invalid"


def test_schema_describes_every_field():
    missing = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(SCHEMA, "config")
    assert not missing, f"fields without a description: {missing}"


def test_shipped_configs_validate():
    import jsonschema

    for name in ("default.yaml", "paper.yaml"):
        cfg = yaml.safe_load((REPO / "configs" / name).read_text())
        jsonschema.Draft202012Validator(SCHEMA).validate(cfg)


def test_paper_config_is_the_published_sweep():
    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    arch = cfg["arch"]
    # docs/reference.md#arch-space: 13 x 13 x 8 x 8 x 7 = 75,712 candidates before the area filter.
    n = 1
    for axis in ("n_tc", "n_vc", "tc_rows", "tc_cols", "glb_mib", "clock_hz", "hbm_bw_Bps"):
        n *= len(arch[axis])
    assert n == 75_712
    assert arch["n_tc"] == [2**i for i in range(13)] and arch["n_vc"] == arch["n_tc"]
    assert arch["tc_rows"] == [2**i for i in range(1, 9)] and arch["tc_cols"] == arch["tc_rows"]
    assert arch["glb_mib"] == [2**i for i in range(1, 8)]
    assert arch["area"] == {"a_max_mm2": "tpuv4", "min_frac": 0.3, "keep_single_core": "under_max"}
    p = cfg["placement"]
    assert (p["devices"], p["global_batch"], sorted(p["hbm_gib"])) == (1024, 4096, [32, 64, 80])
    assert sorted(p["recompute"]) == ["full", "none"] and p["optimizer"] == "sgd"
    models = {m["name"]: (m["seq"], m["tp"]) for m in cfg["models"]}
    # docs/reference.md#models
    assert models == {
        "bert-large": ([512], [1]), "gpt2-xl": ([1024], [1]), "opt-350m": ([2048], [1]),
        "llama2-7b": ([4096], [1]), "megatron-bert": ([512], [1, 2, 4, 8]),
        "megatron-gpt2-54": ([1024], [1, 2, 4]), "megatron-gpt2-72": ([1024], [1, 2, 4, 8]),
        "gpt3-175b": ([2048], [4, 8]),
    }
    assert cfg["network"]["inter_bw_Bps"] == cfg["network"]["intra_bw_Bps"] == 4 * 2**30
    # docs/reference.md#models: the published fixed Megatron-style strategies (p x d x t)
    fixed = {m["name"]: m.get("fixed_plan") for m in cfg["models"]}
    assert fixed == {
        "opt-350m": "12x85x1", "bert-large": "8x128x1", "gpt2-xl": "32x32x1",
        "megatron-gpt2-54": "8x32x4", "megatron-gpt2-72": "8x16x8", "gpt3-175b": "32x8x4",
        "llama2-7b": "8x128x1", "megatron-bert": None,
    }


def _dry_run_shell_commands(workdir):
    proc = snakemake(workdir, "-n", "-p", "--cores", "2")
    text = proc.stdout + proc.stderr
    cmds = re.findall(r"^Shell command: (.+)$", text, re.M)
    assert cmds, text[-2000:]
    return [c for c in cmds if c != "None"]


def test_job_graph_of_tiny_sweep(tmp_path):
    cfg = tiny_config()
    cfg["microbatch_sizes"] = [1, 2]
    cfg["models"][0]["tp"] = [1, 2]
    write_config(tmp_path, cfg)
    counts = dry_run_jobs(tmp_path)
    # graphs: bert 2 mbs x 2 tp + gpt2 2 mbs x 1 tp; sched: 2 models x 2 mbs x 2 chunks
    assert counts["graph"] == 2 + 4
    assert counts["arch_grid"] == 1
    assert counts["schedule_chunk"] == 2 * 2 * 2
    assert counts["merge_latency"] == 2 * 2
    assert counts["place"] == 2


def test_graph_variants_one_per_dividing_ep(tmp_path):
    """An MoE model gets one graph per placement.ep value that divides its routed experts
    (3 does not divide Mixtral's 8: skipped), a dense model one of ep 0; the place job
    searches every ep given."""
    cfg = tiny_config()
    cfg["models"].append({"name": "mixtral-8x7b", "seq": [128], "tp": [1]})
    cfg["placement"]["ep"] = [1, 2, 3]
    write_config(tmp_path, cfg)
    eps: dict = {}
    for j in dry_run_jobs_detail(tmp_path):
        if j["rule"] == "graph":
            eps.setdefault(j["wildcards"]["model"], []).append(j["wildcards"]["ep"])
    assert {m: sorted(e) for m, e in eps.items()} == {
        "bert-large": ["0"], "gpt2-xl": ["0"], "mixtral-8x7b": ["1", "2"]}
    place = [shlex.split(c) for c in _dry_run_shell_commands(tmp_path) if " place " in c]
    assert len(place) == 3 and all(a[a.index("--ep") + 1] == "1,2,3" for a in place)
    assert any("s128_b1_t1_sp0_cp1_ep2.json" in " ".join(a) for a in place)


def test_config_values_reach_only_their_rules(tmp_path):
    """HBM sizes, recomputation and devices go only to placement; arch axes only to the
    grid; chunking and solver only to scheduling. (This is what makes a config edit rerun
    exactly the dependent jobs: Snakemake's params trigger.)"""
    cfg = tiny_config()
    cfg["placement"].update(hbm_gib=[33.5], devices=77, global_batch=4099)
    cfg["arch"]["glb_mib"] = [7]
    cfg["scheduling"].update(n_chunks=3, time_limit_s=4.25)
    write_config(tmp_path, cfg)
    cmds = _dry_run_shell_commands(tmp_path)
    by_stage = {}
    for c in cmds:
        argv = shlex.split(c.split(">")[0])
        i = argv.index("phaze")
        by_stage.setdefault(" ".join(argv[i + 1:i + 3]) if argv[i + 1] == "arch" else argv[i + 1], []).append(argv)
    # check-config writes the whole config for the report's evaluate commands: it and the
    # report (cheap, after every placement) depend on everything
    whole = by_stage.pop("check-config")
    assert '"hbm_gib":[33.5]' in " ".join(whole[0])
    assert set(by_stage) - {"report"} == {"graph", "arch grid", "schedule-batch", "merge-latency", "place"}
    for stage, argvs in by_stage.items():
        for argv in argvs:
            text = " ".join(argv)
            assert ("33.5" in text) == (stage == "place"), (stage, text)
            assert ("4099" in text) == (stage == "place"), (stage, text)
            assert ('"glb_mib":[7]' in text) == (stage == "arch grid"), (stage, text)
            assert ("4.25" in text) == (stage == "schedule-batch"), (stage, text)
            assert ("--n-chunks" in argv) == (stage in ("schedule-batch", "merge-latency")), (stage, text)
    place = by_stage["place"][0]
    assert place[place.index("--hbm-gib") + 1] == "33.5"
    assert place[place.index("--recompute") + 1] == "none,full"
    assert place[place.index("--devices") + 1] == "77"
    sched_chunks = sorted(a[a.index("--chunk") + 1] for a in by_stage["schedule-batch"])
    assert sched_chunks == sorted(["0", "1", "2"] * 2)


def test_every_rule_has_log_benchmark_threads_resources(tmp_path):
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "-n", "--cores", "2")
    text = proc.stdout + proc.stderr
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule \w+:)", text) if re.match(r"rule \w+:", b)]
    rules = {}
    for b in blocks:
        rules.setdefault(re.match(r"rule (\w+):", b).group(1), b)
    assert set(rules) >= {"graph", "arch_grid", "schedule_chunk", "merge_latency", "place"}
    for name, b in rules.items():
        if name == "all":
            continue
        assert re.search(r"^\s*log: results/logs/", b, re.M), name
        assert re.search(r"^\s*benchmark: results/benchmarks/", b, re.M), name
        res = re.search(r"^\s*resources: (.*)$", b, re.M).group(1)
        assert "mem_mb=" in res and "runtime=" in res, (name, res)
    assert "tasks=2" in rules["place"] and re.search(r"threads: 2", rules["place"])


def test_paper_sweep_is_thousands_of_jobs_not_millions(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    cfg["search"] = {"method": "exhaustive"}     # every job known before any runs
    write_config(tmp_path, copy.deepcopy(cfg))
    counts = dry_run_jobs(tmp_path)
    n_model_seq = sum(len(m["seq"]) for m in cfg["models"])
    expected_sched = n_model_seq * len(cfg["microbatch_sizes"]) * cfg["scheduling"]["n_chunks"]
    assert counts["schedule_chunk"] == expected_sched
    assert 1_000 <= sum(counts.values()) <= 10_000
    assert counts["place"] == n_model_seq


def test_every_config_field_is_documented():
    """docs/workflow.md's field table names every field of the config schema (a user reads
    the fields there; three were missing before)."""
    from pathlib import Path

    import yaml

    from phaze.settings import SCHEMA_PATH

    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())
    defs = schema.get("$defs", {})
    doc = (Path(__file__).resolve().parents[1] / "docs" / "workflow.md").read_text()

    def walk(node, path, out):
        node = defs[node["$ref"].split("/")[-1]] if "$ref" in node else node
        for k, v in node.get("properties", {}).items():
            out.append(f"{path}.{k}" if path else k)
            walk(v, out[-1], out)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]", out)
        return out

    fields = walk(schema, "", [])
    assert len(fields) > 40
    assert [f for f in fields if f"`{f}`" not in doc] == []


def test_check_config_merges_a_partial_copy_over_the_default(tmp_path, capsys):
    """`phaze check-config --config COPY --over configs/default.yaml` checks what
    `snakemake --configfile COPY` runs: mappings merged key by key, lists replaced
    (settings.merge_config, Snakemake's update_config); without --over a partial copy is one
    line naming the missing field and pointing at --over."""
    from phaze.cli import main
    from phaze.settings import load_config, merge_config

    assert merge_config({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}, "c": 2}) == \
        {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    part = tmp_path / "part.yaml"
    part.write_text("placement:\n  hbm_gib: [16]\n")
    cfg = load_config(str(part), over=str(REPO / "configs" / "default.yaml"))
    default = load_config(str(REPO / "configs" / "default.yaml"))
    assert cfg["placement"]["hbm_gib"] == [16]
    assert {k: v for k, v in cfg["placement"].items() if k != "hbm_gib"} == \
        {k: v for k, v in default["placement"].items() if k != "hbm_gib"}
    assert main(["check-config", "--config", str(part), "--over",
                 str(REPO / "configs" / "default.yaml")]) == 0
    capsys.readouterr()
    assert main(["check-config", "--config", str(part)]) == 2
    err = capsys.readouterr().err
    assert "required property" in err and "--over configs/default.yaml" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("placement:\n  hbm_gib: 80\n")
    assert main(["check-config", "--config", str(bad), "--over",
                 str(REPO / "configs" / "default.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "placement.hbm_gib" in err and "[80]" in err


@pytest.mark.parametrize("text", ["- 1\n", "hello\n"])
def test_a_config_that_is_no_mapping_is_one_line_with_or_without_over(tmp_path, capsys, text):
    """A config file holding a list or a scalar is refused in one line naming the file
    (with --over, merging it crashed with an AttributeError)."""
    from phaze.cli import main

    bad = tmp_path / "list.yaml"
    bad.write_text(text)
    for extra in ([], ["--over", str(REPO / "configs" / "default.yaml")]):
        assert main(["check-config", "--config", str(bad)] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--config" in err and "mapping" in err, err
    assert main(["check-config", "--config", str(REPO / "configs" / "default.yaml"),
                 "--over", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--over" in err and "mapping" in err, err


@pytest.mark.parametrize("text", ["", "# my sweep, to be written\n"])
def test_an_empty_config_file_says_it_is_empty(tmp_path, capsys, text):
    """An empty file (or comments only) is one line saying so and what to put in it, with
    or without --over (it said "(top level): None is not of type 'object'")."""
    from phaze.cli import main

    empty = tmp_path / "my.yaml"
    empty.write_text(text)
    for over in ([], ["--over", str(REPO / "configs" / "default.yaml")]):
        assert main(["check-config", "--config", str(empty), *over]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--config: {empty} is empty" in err, err
        assert "fix: copy configs/default.yaml" in err and "None is not" not in err


def test_a_model_name_off_by_case_gets_the_zoo_name(tmp_path, capsys):
    from phaze.cli import main

    bad = tmp_path / "case.yaml"
    bad.write_text("models:\n  - name: mixtral-8x7B\n    seq: [1024]\n    tp: [1]\n")
    assert main(["check-config", "--config", str(bad), "--over",
                 str(REPO / "configs" / "default.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "models[0].name" in err
    assert "fix: did you mean 'mixtral-8x7b'?" in err
