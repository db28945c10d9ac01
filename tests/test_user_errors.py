"""The user errors a new user met, each as a test: one line on stderr naming the field and a
fix that works, exit code 2, nothing on stdout (the fix is checked against a second route
written here: the model's dimensions, divisors, the plan's own memory breakdown)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from phaze.cli import build_parser, main
from phaze.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3
GPT3 = ["evaluate", "--model", "gpt3-175b", "--arch", "a100", "--tp", "8", "--pp", "8",
        "--dp", "1", "--mbs", "1", "--batch", "64"]


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _one_line_error(argv, field: str) -> str:
    rc, out, err = _run(argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"phaze: error: {field}: ") and "; fix: " in err, err
    return err.strip()

def _check_config_refuses(tmp_path, cfg: dict, want: str) -> None:
    """check-config of `cfg` gives one line containing `want` and writes no output."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_line_error(["check-config", "--config", str(tmp_path / "c.yaml"), "-o",
                           str(tmp_path / "out.yaml")], "config")
    assert want in err, err
    assert not (tmp_path / "out.yaml").exists()



def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def test_infeasible_plan_is_a_user_error_with_its_memory_and_the_fix():
    err = _one_line_error(GPT3 + ["--recompute", "none", "--json"], "memory")
    rc, out, _ = _run(GPT3 + ["--recompute", "none", "--json", "--allow-infeasible"])
    plan = json.loads(out)
    assert rc == 0 and plan["feasible"] is False
    need, hbm = plan["memory_per_device_bytes"] / GiB, 80
    assert f"memory per device {need:.2f} GiB exceeds the {hbm} GiB HBM" in err, err
    parts = sorted(((plan[f"memory_{k}_bytes"], k) for k in
                    ("weights", "grads", "optimizer", "activations", "buffers")), reverse=True)
    assert f"largest: {parts[0][1]} {parts[0][0] / GiB:.2f} GiB, {parts[1][1]}" in err, err
    assert "--zero-stage" not in err     # dp = 1: sharding over one replica saves nothing
    # every fix offered was evaluated: each alone fits, at the memory it names; the ones
    # left out do not (selective recomputation here), and the HBM that would hold it
    fix = err.split("; fix: each of these alone fits: ")[1].split("; or ")[0]
    offered = dict(re.findall(r"(--[\w-]+ \w+) \(([\d.]+) GiB\)", fix))
    assert "--recompute selective" in offered and "--pp 16" in offered, err
    for flags, gib in offered.items():
        rc, out, _ = _run(GPT3 + ["--recompute", "none", *flags.split(), "--json"])
        got = json.loads(out)["memory_per_device_bytes"] / GiB
        assert rc == 0 and got <= hbm and f"{got:.1f}" == gib, (flags, got)
    assert "--recompute full" not in offered     # the least change of its kind that fits
    assert f"or --hbm-gib {math.ceil(need)} " in err


def test_tp_width_names_the_dimension_it_does_not_divide(tmp_path):
    from phaze.model.zoo import resolve_model

    for model, tp in (("llama2-70b", 16), ("gpt2-xl", 2)):
        spec = resolve_model(model)
        dims = [("attention heads", spec.heads), ("key/value heads", spec.n_kv_heads),
                ("ffn", spec.ffn)]
        name, width = next((n, w) for n, w in dims if w % tp)
        ok = [t for t in _divisors(min(w for _, w in dims)) if all(w % t == 0 for _, w in dims)]
        want = (f"tensor-parallel width {tp} does not divide the {width} {name} of {model}; "
                f"fix: use a width dividing every split dimension: {', '.join(map(str, ok))}")
        cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
        cfg["models"] = [{"name": model, "seq": [1024], "tp": [tp]}]
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        err = _one_line_error(["check-config", "--config", str(tmp_path / "c.yaml"), "-o",
                               str(tmp_path / "out.yaml")], "config")
        assert err.endswith(f"models[0].tp[0]: {want}"), err
        assert not (tmp_path / "out.yaml").exists()
        ev = _one_line_error(["evaluate", "--model", model, "--arch", "a100", "--tp", str(tp),
                              "--pp", "1", "--dp", "1", "--mbs", "1"], "tp")
        assert ev.endswith(want), ev          # one check, the same words on both routes


@pytest.mark.parametrize("path,bad,want", [
    (("placement",), "hbm_gb", "placement.hbm_gib"),
    ((), "microbatch_size", "microbatch_sizes"),
    (("scheduling",), "time_limt_s", "scheduling.time_limit_s"),
])
def test_misspelled_config_field_names_its_path_and_the_closest_field(tmp_path, path, bad, want):
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    node = cfg
    for k in path:
        node = node[k]
    node[bad] = node.pop(want.split(".")[-1], 1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    full = ".".join((*path, bad))
    err = _one_line_error(["check-config", "--config", str(tmp_path / "c.yaml"), "-o",
                           str(tmp_path / "out.yaml")], full)
    assert err.endswith(f"fix: did you mean {want}?"), err
    assert not (tmp_path / "out.yaml").exists()


def test_unknown_config_field_without_a_close_match_lists_the_known_fields(tmp_path):
    from phaze.settings import SCHEMA_PATH

    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["placement"]["qqqq"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_line_error(["check-config", "--config", str(tmp_path / "c.yaml")],
                          "placement.qqqq")
    known = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["placement"]["properties"]
    assert err.endswith("known fields here: " + ", ".join(sorted(known))), err


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    d = tmp_path_factory.mktemp("grid")
    assert main(["arch", "grid", "--config", str(REPO / "configs" / "default.yaml"),
                 "-o", str(d / "grid.parquet")]) == 0
    import pandas as pd

    return d / "grid.parquet", str(pd.read_parquet(d / "grid.parquet").arch_id.iloc[0])


@pytest.mark.parametrize("pp,stages,want", [
    (4, [[0, 10], [10, 20], [20, 26]], "3 ranges given, 4 needed"),
    (2, [[0, 10], [10, 40]], "the last range ends at 40, not at the 26 layers' end"),
    (2, [[0, 10], [11, 26]], "range 1 starts at 11, not where range 0 ends (10)"),
    (2, [[1, 10], [10, 26]], "the first range starts at 1, not 0"),
    (3, [[0, 10], [10, 10], [10, 26]], "range 1 [10, 10) is empty"),
])
def test_bad_stages_say_what_is_wrong(grid, tmp_path, monkeypatch, pp, stages, want):
    from phaze.model.graph import build_graph
    from phaze.model.zoo import resolve_model

    n = build_graph(resolve_model("bert-large"), seq=128, mbs=1, tp=1).n_layers   # 26
    monkeypatch.chdir(tmp_path)
    path, arch = grid
    err = _one_line_error(["evaluate", "--config", str(REPO / "configs" / "default.yaml"),
                           "--grid", str(path), "--arch", arch, "--model", "bert-large",
                           "--seq", "128", "--tp", "1", "--pp", str(pp), "--dp", "1", "--mbs",
                           "1", "--stages", json.dumps(stages)], "--stages")
    assert f"= {pp} non-empty contiguous [start, end) ranges covering layers 0..{n}: {want};" \
        in err, err
    assert "dividing the number of blocks" not in err


def test_pp_not_dividing_the_blocks_lists_the_divisors():
    err = _one_line_error(["evaluate", "--model", "bert-large", "--arch", "a100", "--tp", "1",
                           "--pp", "5", "--dp", "1", "--mbs", "1"], "--pp/--interleave")
    assert f"(divisors of 24: {', '.join(map(str, _divisors(24)))})" in err, err


def test_batch_not_divisible_names_batches_and_dp_values_that_work():
    argv = GPT3[:-2] + ["--batch", "64"]
    argv[argv.index("--dp") + 1], argv[argv.index("--mbs") + 1] = "3", "2"
    err = _one_line_error(argv, "--batch")
    m = re.search(r"multiple of --mbs x --dp = 6 \((\d+), (\d+)\), or a --dp dividing "
                  r"batch / mbs = 32 \(([\d, ]+)\)", err)
    assert m, err
    assert [int(x) for x in m.group(3).split(", ")] == _divisors(32)
    for b in (m.group(1), m.group(2)):        # the batches offered pass the batch check
        rc, _, e = _run(argv[:-1] + [b, "--allow-infeasible", "--json"])
        assert rc == 0, e


def test_missing_chip_file_and_unknown_preset_name_the_alternatives():
    from phaze.hw.presets import PRESETS

    for arch, field in (("nope.json", "--arch"), ("nope", "arch")):
        argv = GPT3.copy()
        argv[argv.index("--arch") + 1] = arch
        err = _one_line_error(argv, field)
        assert f"a preset ({', '.join(sorted(PRESETS))})" in err and "--grid G --arch ID" in err


def test_expert_parallelism_on_a_dense_model_is_one_line():
    # a preset evaluates EP (MoE models); on a dense model it is a user error, not ignored
    err = _one_line_error(GPT3 + ["--ep", "2"], "--ep")
    assert "dense model" in err and "drop --ep" in err


@pytest.mark.parametrize("command", ["evaluate", "place"])
def test_help_shows_every_default_that_matters(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = sub.format_help()
    body = text[text.index("options:"):]
    for action in sub._actions:
        d = action.default
        if not action.option_strings or d is None or d is False or d == [] or action.help \
                == "==SUPPRESS==" or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        start = body.index(f"  {flag}")
        chunk = re.split(r"\n  -", body[start + 2:], maxsplit=1)[0]
        assert "default" in chunk and str(d) in chunk.replace(",", ""), (flag, chunk)
    if command == "evaluate":
        assert re.search(r"--recompute \{none,selective,full\}\s+activation recomputation "
                         r"\(default: full\)", text)


@pytest.mark.parametrize("argv,field,want", [
    (["arch", "grid", "--spec", '{"n_tcc": [1]}', "-o", "g.parquet"], "arch.n_tcc",
     "did you mean arch.n_tc?"),
    (GPT3 + ["--network", '{"intra_bw": 1}'], "network.intra_bw",
     "did you mean network.intra_bw_Bps?"),
])
def test_misspelled_keys_outside_the_config_suggest_too(tmp_path, monkeypatch, argv, field, want):
    monkeypatch.chdir(tmp_path)
    assert _one_line_error(argv, field).endswith(want)
    assert not (tmp_path / "g.parquet").exists()


@pytest.mark.parametrize("flag", [["--framework", "nemo-2024"], ["--fp8"], ["--overlap", "p2p"],
                                  ["--no-overlap", "tp_comm"], ["--ddp-impl", "torch"],
                                  ["--cross-entropy-fusion"], ["--first-stage-layers", "2"],
                                  ["--pipeline-layout", "Et|tL"]])
def test_preset_only_switches_are_refused_on_the_grid_route(flag, tmp_path):
    # the sweep route has no GPU-framework model: a framework switch there is an error
    # naming it (checked before the grid is read), never silently ignored
    argv = ["evaluate", "--model", "gpt2-xl", "--grid", str(tmp_path / "none.parquet"),
            "--arch", "0", "--tp", "1", "--pp", "1", "--dp", "1", "--mbs", "1"] + flag
    err = _one_line_error(argv, flag[0])
    assert "--arch PRESET" in err


def test_fp8_needs_an_arch_with_fp8_tensor_cores():
    err = _one_line_error(GPT3 + ["--fp8"], "--fp8")
    assert "a100 has no FP8" in err and "--arch h100" in err


def test_fp8_needs_a_transformer_engine_profile():
    # the default profile (Megatron-LM 2022) predates Transformer Engine
    err = _one_line_error(["evaluate", "--model", "gpt-1.7b", "--arch", "h100", "--tp", "1",
                           "--pp", "1", "--dp", "8", "--mbs", "1", "--fp8"], "--fp8")
    assert "megatron-lm-2022" in err and "--framework" in err


def test_fp8_recipe_needs_fp8():
    err = _one_line_error(["evaluate", "--model", "gpt-1.7b", "--arch", "h100", "--tp", "1",
                           "--pp", "1", "--dp", "8", "--mbs", "1", "--fp8-recipe",
                           "tensorwise"], "--fp8-recipe")
    assert "add --fp8" in err


def test_interleave_without_a_pipeline_and_devices_that_disagree_are_refused():
    base = ["evaluate", "--model", "gpt-1.7b", "--arch", "a100", "--tp", "1", "--pp", "1",
            "--dp", "2", "--mbs", "1", "--batch", "64"]
    assert "pp > 1" in _one_line_error(base + ["--interleave", "4"], "--interleave")
    assert "give 2" in _one_line_error(base + ["--devices", "100"], "--devices")
    assert _run(base + ["--devices", "2"])[0] == 0


def test_preset_optimizer_sharding_is_the_frameworks_unless_given(capsys):
    # megatron-lm-2022 (default) shards nothing, megatron-core-2024 uses the distributed
    # optimizer; --zero-stage 0 / --no-zero1 turn it off, --zero1 turns ZeRO-1 on
    base = ["evaluate", "--model", "llama2-7b", "--arch", "h100", "--tp", "2", "--pp", "2",
            "--dp", "2", "--mbs", "1", "--batch", "64", "--json"]

    def stage(*extra):
        rc, out, err = _run(base + list(extra))
        assert rc == 0, err
        return json.loads(out)["zero_stage"]

    assert stage() == 0 and stage("--zero1") == 1
    core = ["--framework", "megatron-core-2024"]
    assert stage(*core) == 1 and stage(*core, "--zero-stage", "0") == 0
    assert stage(*core, "--no-zero1") == 0 and stage(*core, "--zero-stage", "3") == 3


def test_sizes_below_one_name_the_flag_and_the_fix():
    for flag in ("--ep", "--cp", "--interleave"):
        err = _one_line_error(GPT3 + [flag, "0"], flag)
        assert "got 0" in err
    base = [a for a in GPT3 if a not in ("--batch", "64")]
    assert "multiple of --mbs x --dp" in _one_line_error(base + ["--batch", "0"], "--batch")


def test_moe_switches_on_a_dense_model_are_one_line():
    for extra in (["--moe-token-dispatcher", "flex"], ["--overlap", "moe_ep_comm"]):
        err = _one_line_error(GPT3 + extra, "--moe-token-dispatcher/--overlap")
        assert "dense model" in err


def test_router_switches_on_a_dense_model_are_one_line():
    for extra in (["--moe-router-fusion"], ["--moe-router-force-load-balancing"],
                  ["--moe-router-load-balancing-type", "aux_loss"]):
        err = _one_line_error(GPT3 + extra, extra[0])
        assert "no routed experts" in err


def test_graph_errors_name_the_evaluate_flag():
    """build_graph calls its option expert_tp; `phaze evaluate` users set --expert-tp: the
    error names the flag, in the field and in the fix."""
    err = _one_line_error(GPT3 + ["--expert-tp", "1"], "--expert-tp")
    assert "drop --expert-tp" in err and "expert_tp" not in err
    moe = ["evaluate", "--model", "qwen3-30b-a3b", "--arch", "h100", "--tp", "2", "--pp", "1",
           "--dp", "8", "--ep", "8", "--expert-tp", "3", "--mbs", "1", "--batch", "64",
           "--seq", "4096", "--recompute", "none"]
    err = _one_line_error(moe, "--expert-tp")
    assert "--expert-tp = tp" in err


def test_recompute_modules_naming_nothing_is_one_line():
    for value in (",", ""):
        err = _one_line_error(GPT3 + ["--recompute", "selective", "--recompute-modules", value],
                              "--recompute-modules")
        assert "names no module" in err


def test_recompute_module_the_model_lacks_is_one_line():
    """mla_up_proj on a model without MLA (Megatron-Core refuses it too) or moe on a dense
    model re-runs nothing: refused instead of silently recomputing nothing."""
    for mod, part in (("mla_up_proj", "multi-latent attention"), ("moe_act", "MoE layer")):
        err = _one_line_error(GPT3 + ["--recompute", "selective", "--recompute-modules", mod],
                              "--recompute-modules")
        assert "re-runs nothing" in err and part in err


@pytest.mark.parametrize("key,value", [("num_key_value_heads", 0), ("hidden_size", -64),
                                       ("num_hidden_layers", 0), ("intermediate_size", 0)])
def test_a_zero_or_negative_size_in_a_config_json_is_refused(tmp_path, key, value):
    """phaze's "kv_heads 0 = heads" convention is not Hugging Face's: a 0 (or negative)
    size in a config.json is refused, naming the key and the file, not read as a default."""
    import json

    from phaze.model.hf import load_hf_config

    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=96, vocab_size=101,
               max_position_embeddings=256)
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        load_hf_config(tmp_path / "config.json")
    assert e.value.field == key and "config.json" in str(e.value) and str(value) in str(e.value)


def test_a_renamed_config_json_is_named_after_its_file(tmp_path):
    """A Hugging Face config saved under another name is called by that name (not its
    directory's or model_type's); config.json keeps its directory's name."""
    import json

    from phaze.model.hf import load_hf_config

    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=96, vocab_size=101, max_position_embeddings=256)
    (tmp_path / "my-llama.json").write_text(json.dumps(cfg))
    assert load_hf_config(tmp_path / "my-llama.json").name == "my-llama"
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_hf_config(d).name == "tiny-llama"


@pytest.mark.parametrize("extra, named", [
    (["--account-for-embedding-in-pipeline-split"], "--account-for-embedding-in-pipeline-split"),
    (["--first-stage-layers", "11", "--account-for-loss-in-pipeline-split"],
     "--first-stage-layers, --account-for-loss-in-pipeline-split"),
])
def test_pipeline_layout_excludes_the_other_split_flags(extra, named):
    # Megatron-Core refuses the same combination (TransformerConfig.__post_init__)
    err = _one_line_error(GPT3 + ["--pipeline-layout", "Et*11|(t*12|)*6t*11L"] + extra,
                          "--pipeline-layout")
    assert f"cannot be combined with {named};" in err, err


@pytest.mark.parametrize("layout, want, fix", [
    ("Et*11|(t*12|)*6t*12L", "95 decoder layers (t), the model has 96", "one t per decoder"),
    ("Et*11|(t*12|)*14t*11L", "16 chunks, pp x interleave = 8 x 1 = 8 needed (with pp 8: "
     "give interleave 2)", "--interleave"),
    ("Et*11|(t*12|)*6t*11QL", "unknown symbol 'Q'", "--help"),
    ("Et*11|(t*12|)*6t*11mL", "but phaze has no MTP block", "--mtp-layers"),
    ("Et*11|(t*12|*6t*11L", "unbalanced parentheses", "--help"),
])
def test_bad_pipeline_layout_says_what_is_wrong(layout, want, fix):
    err = _one_line_error(GPT3 + ["--pipeline-layout", layout], "--pipeline-layout")
    assert want in err and fix in err.split("; fix: ")[1], err


def test_pipeline_layout_runs_and_spells_out_the_uniform_split():
    rc, out, _ = _run(GPT3 + ["--json", "--allow-infeasible"])
    rc2, out2, _ = _run(GPT3 + ["--json", "--allow-infeasible",
                                "--pipeline-layout", "Et*12|(t*12|)*6t*12L"])
    a, b = json.loads(out), json.loads(out2)
    assert rc == rc2 == 0 and b.pop("pipeline_layout") == "Et*12|(t*12|)*6t*12L"
    a.pop("pipeline_layout")
    assert a == b


@pytest.mark.parametrize("models, placement, want", [
    # the default config on 1000 devices: the published 8x128x1 needs 1024
    (None, {"devices": 1000},
     "models[0].fixed_plan: 8x128x1 needs p x d x t = 1024 devices, more than "
     "placement.devices 1000; fix: use a plan of at most 1000 devices, raise "
     "placement.devices to 1024, or drop fixed_plan"),
    ([{"name": "llama2-7b", "seq": [4096], "tp": [1], "fixed_plan": "3x100x1"}], {},
     "models[0].fixed_plan: p = 3 of 3x100x1 does not divide llama2-7b's 32 transformer "
     "blocks (Megatron's uniform split); fix: use a p dividing 32: 1, 2, 4, 8, 16, 32"),
    ([{"name": "llama2-7b", "seq": [4096], "tp": [1], "fixed_plan": "7x128x1"}], {},
     "models[0].fixed_plan: p = 7 of 7x128x1 does not divide llama2-7b's 32"),
    ([{"name": "gpt2-xl", "seq": [1024], "tp": [1, 5], "fixed_plan": "16x16x2"}], {},
     "models[0].fixed_plan: t = 2 of 16x16x2: tensor-parallel width 2 does not divide the "
     "25 attention heads of gpt2-xl; fix: use a width dividing every split dimension: 1, 5"),
    # d = 96 x mbs 1/2/4 divides no global batch of 4096 (Megatron's batch / (d mbs))
    ([{"name": "llama2-7b", "seq": [4096], "tp": [1], "fixed_plan": "8x96x1"}], {},
     "models[0].fixed_plan: d = 96 of 8x96x1 times no microbatch size in microbatch_sizes "
     "[1, 2, 4] divides placement.global_batch 4096 (Megatron's batch / (d x mbs) "
     "microbatches); fix: set placement.global_batch to a multiple of 96 (e.g. 4128)"),
    ([{"name": "llama2-7b", "seq": [4096], "tp": [1], "fixed_plan": "8x64x2"}], {},
     "models[0].fixed_plan: t = 2 of 8x64x2 is not among the model's tp widths [1], so the "
     "plan has no graphs to run on; fix: add 2 to models[0].tp"),
])
def test_a_fixed_plan_that_cannot_run_is_refused_by_check_config(tmp_path, models,
                                                                 placement, want):
    """A fixed baseline needing more devices than placement.devices, whose p does not
    divide the blocks (not the published baseline of that model) or whose t does not
    divide the heads / is not configured, is one line naming models[i].fixed_plan."""
    from phaze.model.zoo import resolve_model

    spec = resolve_model((models or [{"name": "bert-large"}])[0]["name"])
    if "blocks" in want:
        p = int(want.split("p = ")[1].split()[0])
        assert spec.layers % p and f"{spec.layers} transformer blocks" in want
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    if models:
        cfg["models"] = models
    cfg["placement"].update(placement)
    _check_config_refuses(tmp_path, cfg, want)


def test_published_fixed_plans_are_kept_even_where_they_cannot_split_the_blocks(capsys,
                                                                               tmp_path):
    """The shipped configs stay valid: their fixed plans are the published baselines
    (configcheck.PUBLISHED_FIXED_PLANS); gpt2-xl's 32x32x1 does not divide its 48 blocks
    and stays, giving no row with a note in the report, as docs/report.md says. Another
    model's entry with the same plan is refused."""
    from phaze.configcheck import PUBLISHED_FIXED_PLANS, semantic_errors
    from phaze.model.zoo import resolve_model

    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    assert {m["name"]: m["fixed_plan"] for m in paper["models"] if "fixed_plan" in m} \
        == PUBLISHED_FIXED_PLANS
    for name in ("default.yaml", "paper.yaml"):
        assert main(["check-config", "--config", str(REPO / "configs" / name)]) == 0
        assert capsys.readouterr().out == "config ok\n"
    assert resolve_model("gpt2-xl").layers % 32
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    hf = dict(model_type="gpt2", n_embd=64, n_layer=48, n_head=4, vocab_size=101,
              n_positions=1024)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    cfg["models"] = [{"name": "gpt2-xl", "seq": [1024], "tp": [1], "fixed_plan": "32x32x1",
                      "hf_config": str(tmp_path / "config.json")}]
    assert semantic_errors(cfg, check_grid=False)[0].startswith(
        "field models[0].fixed_plan: p = 32 of 32x32x1 does not divide")


def _config_with(tmp_path, text: str) -> list[str]:
    (tmp_path / "part.yaml").write_text(text)
    return ["check-config", "--config", str(tmp_path / "part.yaml"), "--over",
            str(REPO / "configs" / "default.yaml")]


def test_settings_errors_carry_a_fix_and_readable_bounds(tmp_path):
    """Each of these was an error without a fix part (or with an unreadable bound)."""
    from phaze.errors import UserError
    from phaze.settings import MAX_HBM_GIB, parse_list

    ev = ["evaluate", "--model", "gpt2-xl", "--arch", "a100", "--tp", "1", "--pp", "1",
          "--dp", "1", "--mbs", "1"]
    err = _one_line_error(ev + ["--network", '{"devices_per_node": 0}'],
                          "network.devices_per_node")
    assert "must be a positive integer, got 0; fix: give the accelerators per node" in err
    err = _one_line_error(["schedule", "--model", "bert-large", "--arch", "tpuv4",
                           "--time-limit", "0"], "--time-limit")
    assert "fix: give the seconds one layer ILP may run" in err
    with pytest.raises(UserError) as e:
        parse_list("32,2000000", float, "--hbm-gib", minimum=1e-9, maximum=MAX_HBM_GIB)
    assert str(e.value) == ("--hbm-gib: must be <= 1048576, got 2000000.0; fix: give values "
                            "> 0 and <= 1048576")
    (tmp_path / "broken.json").write_text('{"hidden_size": 64,\n "n_layer": 2,}\n')
    err = _one_line_error(ev[:2] + [str(tmp_path / "broken.json")] + ev[3:], "model")
    assert "is not valid JSON at line 2, column 15: Expecting property name" in err
    assert "fix: at line 2, column 15, quote keys and strings with double quotes and drop " \
           "any trailing comma" in err


@pytest.mark.parametrize("text, field, fix", [
    ("placement: {recompute: [none, partial]}\n", "placement.recompute[1]",
     "'partial' is not one of ['none', 'selective', 'full']; fix: use one of: none, "
     "selective, full"),
    ("models: [{seq: [128], tp: [1]}]\n", "models[0]",
     "'name' is a required property; fix: give name: with a zoo model (`phaze models` "
     "lists them), or a label for the model together with hf_config: path/to/config.json"),
    ("models: [{name: bert-large, seq: [128], tp: [1], fixed_plan: 8-128-1}]\n",
     "models[0].fixed_plan", "fix: write it as PxDxT (pipeline x data x tensor degrees), "
     "e.g. 8x128x1"),
    ("microbatch_sizes: [1.0]\n", "microbatch_sizes[0]", "fix: give an integer (1, not 1.0)"),
    ("scheduling: {time_limit_s: 0}\n", "scheduling.time_limit_s", "fix: give a value > 0"),
])
def test_schema_errors_name_what_to_give(tmp_path, text, field, fix):
    err = _one_line_error(_config_with(tmp_path, text), field)
    assert err.endswith(fix), err


def test_a_name_alone_or_hf_config_with_a_label_is_what_a_model_entry_needs(tmp_path):
    """The fix of a models[i] entry without name is right: hf_config alone is refused by
    the schema too, a label with hf_config passes."""
    cfg = {"name": "tiny", "hf_config": str(tmp_path / "config.json"), "seq": [64],
           "tp": [1]}
    (tmp_path / "config.json").write_text(json.dumps(dict(
        model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, vocab_size=101, max_position_embeddings=256)))
    assert _run(_config_with(tmp_path, yaml.safe_dump({"models": [cfg]})))[0] == 0
    no_name = {k: v for k, v in cfg.items() if k != "name"}
    _one_line_error(_config_with(tmp_path, yaml.safe_dump({"models": [no_name]})), "models[0]")


@pytest.mark.parametrize("text, where, fix", [
    ("models: [{name: bert-large, seq: [128], tp: [1]}\nmicrobatch_sizes: [1]\n",
     "at line 2, column 1: expected ',' or ']'",
     "fix: close the '[' opened at line 1, column 9 with ']', separating its items with "
     "commas"),
    ("placement:\n\thbm_gib: [32]\n", "at line 2, column 1: found character '\\t'",
     "fix: replace the tab at line 2, column 1 with spaces (YAML indents with spaces only)"),
])
def test_a_yaml_syntax_error_gives_its_line_and_a_fitting_fix(tmp_path, text, where, fix):
    err = _one_line_error(_config_with(tmp_path, text), "--config")
    assert "part.yaml is not valid YAML " + where in err and err.endswith(fix), err


@pytest.mark.parametrize("extra, field, want", [
    (["--model", "llama2-7b", "--seq", "4096", "--fixed", "8x128x1", "--devices", "1000"],
     "--fixed", "--fixed: 8x128x1 needs p x d x t = 1024 devices, more than --devices 1000; "
     "fix: use a plan of at most 1000 devices, raise --devices to 1024, or drop --fixed"),
    (["--model", "llama2-7b", "--seq", "4096", "--fixed", "3x100x1"], "--fixed",
     "--fixed: p = 3 of 3x100x1 does not divide llama2-7b's 32 transformer blocks "
     "(Megatron's uniform split); fix: use a p dividing 32: 1, 2, 4, 8, 16, 32"),
    (["--model", "gpt2-xl", "--seq", "1024", "--tp", "1,5", "--fixed", "16x16x2"], "--fixed",
     "--fixed: t = 2 of 16x16x2: tensor-parallel width 2 does not divide the 25 attention "
     "heads of gpt2-xl; fix: use a width dividing every split dimension: 1, 5"),
    (["--model", "llama2-7b", "--seq", "4096", "--fixed", "8x64x2"], "--fixed",
     "; fix: add 2 to --tp or use a plan with t in it"),
    (["--model", "llama2-7b", "--seq", "4096", "--fixed", "8x96x1", "--batch", "4096",
      "--mbs", "1,2"], "--fixed",
     "--fixed: d = 96 of 8x96x1 times no microbatch size in --mbs [1, 2] divides --batch "
     "4096 (Megatron's batch / (d x mbs) microbatches); fix: set --batch to a multiple of 96 "
     "(e.g. 4128), use a d that divides it, or drop --fixed"),
    # the config's fixed plan, checked against the devices the flags leave the search
    (["--config", str(REPO / "configs" / "default.yaml"), "--model", "bert-large",
      "--devices", "1000"], "models[0].fixed_plan",
     "8x128x1 needs p x d x t = 1024 devices, more than --devices 1000; fix: use a plan of "
     "at most 1000 devices, raise --devices to 1024, or drop models[0].fixed_plan"),
])
def test_search_refuses_a_fixed_plan_that_cannot_run(tmp_path, extra, field, want):
    """`phaze search` runs check-config's fixed-plan check (configcheck.fixed_plan_problems)
    with its own devices and TP widths, before the grid is read, naming the flags."""
    argv = ["search", "--grid", str(tmp_path / "none.parquet")] + extra
    err = _one_line_error(argv, field)
    assert want in err, err


# UserError calls without a fix, each with the reason no single fix is right. Keyed by
# (file, enclosing function) so that the list survives edits that move lines.
USER_ERRORS_WITHOUT_FIX = {
    # the fallback for plan messages _plan_error does not recognise: any of --pp,
    # --interleave or --stages may be at fault; the recognised ones above it carry a fix
    ("phaze/place/commands.py", "_plan_error"),
    # NEST's plan does not fit phaze's memory model or is not a chain: a finding of the
    # comparison, not something the user's flags can change
    ("phaze/place/commands.py", "_place_reference"),
    # NEST's own DP fails at reconstruction / re-evaluation (it does too): no input change
    # is known to avoid it
    ("phaze/place/nest.py", "_reconstruct"),
    ("phaze/place/nest.py", "_evaluate"),
}


def test_every_user_error_names_a_fix():
    """Every UserError(...) in phaze passes fix= (or a third positional argument, or a
    *(message, field, fix) tuple), apart from USER_ERRORS_WITHOUT_FIX."""
    import ast

    missing, allowed_seen = [], set()
    for path in sorted((REPO / "phaze").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        stack = [(tree, "<module>")]
        while stack:
            node, func = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    else func
                stack.append((child, name))
                if not isinstance(child, ast.Call):
                    continue
                f = child.func
                if (f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)) \
                        != "UserError":
                    continue
                if any(k.arg in ("fix", None) for k in child.keywords) \
                        or len(child.args) >= 3 \
                        or any(isinstance(a, ast.Starred) for a in child.args):
                    continue
                if (rel, func) in USER_ERRORS_WITHOUT_FIX:
                    allowed_seen.add((rel, func))
                else:
                    missing.append(f"{rel}:{child.lineno} ({func})")
    assert not missing, "UserError without fix=: " + ", ".join(missing)
    assert allowed_seen == USER_ERRORS_WITHOUT_FIX, \
        f"allow-list entries that no longer need it: {USER_ERRORS_WITHOUT_FIX - allowed_seen}"


def test_evaluate_takes_the_configs_seq_for_its_model(tmp_path):
    """`evaluate --config C --model M` without --seq runs M at the one seq C lists for it
    (what the sweep ran), not the model's own; several: one line asking which."""
    cfg = yaml.safe_load((REPO / "configs/default.yaml").read_text())
    cfg["models"] = [{"name": "llama2-7b", "seq": [1024], "tp": [1]}]
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(cfg))
    argv = ["evaluate", "--model", "llama2-7b", "--arch", "h100", "--tp", "1", "--pp", "1",
            "--dp", "8", "--mbs", "1", "--hbm-gib", "400", "--json", "--config", str(one)]
    rc, out, err = _run(argv)
    assert rc == 0, err
    rc2, out2, _ = _run(argv + ["--seq", "1024"])
    rc3, out3, _ = _run(argv[:-2])                          # no config: the zoo's 4096
    assert json.loads(out)["time_per_batch_s"] == json.loads(out2)["time_per_batch_s"]
    assert json.loads(out3)["time_per_batch_s"] > 2 * json.loads(out)["time_per_batch_s"]
    cfg["models"][0]["seq"] = [1024, 2048]
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(cfg))
    msg = _one_line_error(argv[:-1] + [str(two)], "--seq")
    assert "1024, 2048" in msg


@pytest.mark.parametrize("models,placement,want", [
    ([{"name": "bert-large", "seq": [512], "tp": [8]}], {"devices": 4},
     "config: models[0].tp: every tp x cp of bert-large needs more than placement.devices 4 "
     "(the smallest: tp 8 x cp 1 = 8 devices), so no plan can run it; fix: add a tp width "
     "of at most 4 to models[0].tp, or raise placement.devices to 8"),
    ([{"name": "llama2-7b", "seq": [4096], "tp": [1], "cp": [2]}], {"devices": 1},
     "config: models[0].cp: every tp x cp of llama2-7b needs more than placement.devices 1 "
     "(the smallest: tp 1 x cp 2 = 2 devices), so no plan can run it; fix: add cp 1 to "
     "models[0].cp, or raise placement.devices to 2"),
    ([{"name": "mixtral-8x7b", "seq": [2048], "tp": [1]}], {"devices": 2, "ep": [4, 8]},
     "config: placement.ep: every expert-parallel size of mixtral-8x7b [4, 8] needs more "
     "than placement.devices 2, so no plan can run it; fix: add an ep of at most 2 "
     "dividing its 8 routed experts to placement.ep (1, 2), or raise placement.devices to 4"),
])
def test_a_model_no_plan_fits_on_the_devices_is_refused_by_check_config(tmp_path, models,
                                                                        placement, want):
    """A sweep whose every TP x CP width (or every EP size) needs more devices than
    placement.devices cannot place the model at all; before, check-config passed it and
    the report called it 'out of memory at every mbs/recompute/HBM tried'."""
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["models"] = models
    cfg["graph"]["attention"] = "flash"
    cfg["placement"].update(placement)
    _check_config_refuses(tmp_path, cfg, want)
    cfg["placement"]["devices"] = 1024                  # the same models fit on more devices
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 0


def test_a_global_batch_no_microbatch_size_divides_is_refused_by_check_config(tmp_path):
    """global_batch 3 with microbatch sizes 2 and 4 has no plan (d x mbs must divide the
    batch); before, the sweep ran and the report called it out of memory."""
    err = _one_line_error(_config_with(tmp_path, "microbatch_sizes: [2, 4]\n"
                                                 "placement: {global_batch: 3}\n"), "config")
    assert ("placement.global_batch: no microbatch size [2, 4] divides the global batch 3"
            in err and "fix: add to microbatch_sizes a size that divides 3 (e.g. 3 or 1)"
            in err), err
    assert main(_config_with(tmp_path, "microbatch_sizes: [2, 4]\n"
                                       "placement: {global_batch: 6}\n")) == 0


@pytest.mark.parametrize("name,near", [("Llama2-7B", "llama2-7b"), ("GPT2-XL", "gpt2-xl"),
                                       ("llama2_7b", "llama2-7b")])
def test_a_model_name_off_by_case_gets_did_you_mean_on_the_command_line_too(name, near):
    """check-config suggested the zoo name; `phaze evaluate` and `phaze graph` did not."""
    for argv in (["graph", "--model", name],
                 ["evaluate", "--model", name, "--arch", "h100", "--tp", "1", "--pp", "1",
                  "--dp", "8", "--mbs", "1"]):
        err = _one_line_error(argv, "model")
        assert f"fix: did you mean {near!r}? run `phaze models`" in err, err


@pytest.mark.parametrize("edit,field", [
    (lambda c: c["models"].append(dict(c["models"][0])), "models[2].name"),
    (lambda c: c["models"][0].update(hf_config="/nonexistent/config.json"), "models[0].hf_config"),
    (lambda c: c["models"][1].update(cp=[2]), "models[1].cp"),
    (lambda c: (c["models"].__setitem__(1, {"name": "mixtral-8x7b", "seq": [1024], "tp": [1],
                                            "fixed_plan": "2x16x1"}),
                c["placement"].update(ep=[2])), "placement.ep"),
])
def test_every_check_config_refusal_names_a_fix(tmp_path, edit, field):
    """The refusals the new-user pass found without a fix part now have one."""
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    edit(cfg)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_line_error(["check-config", "--config", str(tmp_path / "c.yaml")], "config")
    assert f"{field}: " in err and "; fix: " in err.split(f"{field}: ", 1)[1], err


def test_arch_given_as_a_non_json_file_says_so(tmp_path):
    chip = tmp_path / "chip.yaml"
    chip.write_text("n_tc: 4\n")
    argv = ["evaluate", "--model", "gpt2-xl", "--tp", "1", "--pp", "1", "--dp", "1", "--mbs", "1"]
    err = _one_line_error(argv + ["--arch", str(chip)], "arch")
    assert "is a file, but a chip file is JSON" in err
    err = _one_line_error(argv + ["--arch", "h1000"], "arch")
    assert "'h1000' is an unknown arch preset" in err and "h100" in err


def test_hf_config_models_are_named_as_the_config_names_them(tmp_path):
    """A model built from a Hugging Face config.json is named in messages by the config's
    `name`, not by the file's stem ('config')."""
    hf = dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, vocab_size=101, n_positions=256)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["models"] = [{"name": "my-gpt", "seq": [128], "tp": [3],
                      "hf_config": str(tmp_path / "config.json")}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_line_error(["check-config", "--config", str(tmp_path / "c.yaml")], "config")
    assert "heads of my-gpt" in err and "of config" not in err, err


@pytest.mark.parametrize("extra, want", [
    (["--cp", "1", "--cp-comm-type", "a2a"],
     "--cp-comm-type: sets how context parallelism exchanges keys, which is off; fix: add "
     "--cp N (N > 1), or drop --cp-comm-type"),
    (["--cp", "8", "--cp-comm-type", "a2a"],
     "--cp-comm-type: cp = 8 must divide the 4 key/value heads of llama3-8b per TP rank "
     "(t = 2); fix: use --cp-comm-type p2p or allgather, or another cp"),
    (["--cp", "2", "--cp-comm-type", "p2p", "--model", "mistral-7b"],
     "--cp-comm-type: mistral-7b's sliding-window layers (window 4096 < seq 32768) cannot run in "
     "the p2p context-parallel ring (Transformer Engine runs them with cp_comm_type allgather or "
     "a2a); fix: use --cp-comm-type allgather or a2a, or another cp"),
])
def test_cp_comm_type_user_errors(extra, want):
    argv = ["evaluate", "--arch", "h100", "--framework", "megatron-core-2024", "--model",
            "llama3-8b", "--seq", "32768", "--tp", "2", "--pp", "1", "--dp", "1", "--mbs", "1",
            "--batch", "8", "--recompute", "none", "--sequence-parallel"] + extra
    assert _one_line_error(argv, "--cp-comm-type") == "phaze: error: " + want


def test_check_config_refuses_a2a_cp_that_cannot_split_the_heads(tmp_path):
    # placement.cp_comm_type a2a (Ulysses) splits a TP rank's heads over cp: llama3-8b has
    # 8 kv heads, 1 per rank at t = 8, which cp 2 cannot split
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["models"] = [{"name": "llama3-8b", "seq": [4096], "tp": [1, 8], "cp": [1, 2]}]
    cfg["graph"]["attention"] = "flash"
    cfg["placement"]["cp_comm_type"] = "a2a"
    _check_config_refuses(tmp_path, cfg,
                          "models[0].cp[1]: cp = 2 must divide the 1 key/value heads of "
                          "llama3-8b per TP rank (t = 8) (placement.cp_comm_type a2a); fix: "
                          "use placement.cp_comm_type p2p or allgather, or another cp")
    cfg["placement"]["cp_comm_type"] = "allgather"
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    rc, out, err = _run(["check-config", "--config", str(tmp_path / "ok.yaml")])
    assert rc == 0, err


@pytest.mark.parametrize("flags,field", [(["--zero-stage", "0", "--zero1"], "--zero1"),
                                         (["--zero-stage", "1", "--no-zero1"], "--no-zero1"),
                                         (["--zero-stage", "3", "--zero1"], "--zero1")])
def test_contradicting_zero_flags_are_refused(flags, field):
    """--zero-stage with a --zero1 / --no-zero1 that says another stage is one line, exit 2
    (one of them was silently dropped: --zero-stage 0 --zero1 ran ZeRO-1); agreeing flags
    run."""
    argv = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--tp", "1", "--pp", "1",
            "--dp", "8", "--mbs", "1", "--batch", "64", "--seq", "1024", "--recompute", "full"]
    err = _one_line_error(argv + flags, field)
    assert "--zero-stage" in err
    rc, _, _ = _run(argv + ["--zero-stage", "1", "--zero1"])
    assert rc == 0


def test_a_zero1_the_searched_zero_stages_leave_out_is_refused(tmp_path):
    """placement.zero1: true with a zero_stage list without 1: the stages searched are the
    list's, so the zero1 asked for would be ignored; refused naming both fields."""
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["placement"].update(zero1=True, zero_stage=[0, 2])
    _check_config_refuses(tmp_path, cfg, "placement.zero1")
    cfg["placement"].update(zero_stage=[1, 2])
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    rc, _, err = _run(["check-config", "--config", str(tmp_path / "ok.yaml"), "-o",
                       str(tmp_path / "out.yaml")])
    assert rc == 0, err


@pytest.mark.parametrize("extra, field, want", [
    (["--pp", "1", "--first-stage-layers", "4"], "--pp", "need pipeline parallelism: pp = 1"),
    (["--pp", "4", "--first-stage-layers", "40"], "--first-stage-layers/--last-stage-layers",
     "hold 40 blocks, more than the model's 32"),
    (["--pp", "2", "--first-stage-layers", "10", "--last-stage-layers", "10"],
     "--first-stage-layers/--last-stage-layers", "with pp = 2 both ends must hold all 32"),
])
def test_uneven_pipeline_ends_say_what_is_wrong(extra, field, want):
    """The uneven ends' errors name the flag and say why, with no Python None in them."""
    argv = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--tp", "1", "--dp", "4",
            "--mbs", "1", "--batch", "64", *extra]
    err = _one_line_error(argv, field)
    assert want in err and "None" not in err, err


def test_cp_without_flash_names_the_flag_once():
    err = _one_line_error(["evaluate", "--model", "llama3-8b", "--arch", "h100", "--tp", "1",
                           "--pp", "1", "--dp", "4", "--cp", "2", "--seq", "8192", "--mbs", "1"],
                          "--attention")
    assert "graph.--" not in err and "use --attention flash or --framework" in err, err


def test_tp_comm_overlap_needs_sequence_parallelism():
    """Megatron-LM asserts sequence parallelism for --tp-comm-overlap: asked for without it
    at t > 1, a one-line refusal; a profile's default overlap is off where it cannot run
    (NeMo turns it off), recorded off, with the figures of --no-overlap tp_comm."""
    base = ["evaluate", "--model", "llama2-7b", "--arch", "h100", "--tp", "2", "--pp", "2",
            "--dp", "2", "--mbs", "1", "--batch", "64", "--seq", "4096", "--recompute",
            "selective", "--json"]
    err = _one_line_error(base + ["--overlap", "tp_comm"], "--overlap")
    assert "add --sequence-parallel" in err
    rc, out, _ = _run(base + ["--framework", "nemo-2024"])
    rc2, out2, _ = _run(base + ["--framework", "nemo-2024", "--no-overlap", "tp_comm"])
    a, b = json.loads(out), json.loads(out2)
    assert rc == rc2 == 0 and a["plan_options"]["tp_comm_overlap"] is False
    assert a["time_per_batch_s"] == b["time_per_batch_s"]
    rc, out, _ = _run(base + ["--framework", "nemo-2024", "--sequence-parallel"])
    assert rc == 0 and json.loads(out)["plan_options"]["tp_comm_overlap"] is True


@pytest.mark.parametrize("extra, field, want, fix", [
    (["--cp-comm-type", "a2a+p2p", "--cp-a2a-size", "3"], "--cp-a2a-size",
     "all-to-all level of 3 devices must divide cp = 4", "use --cp-a2a-size 1 or 2 or 4"),
    (["--cp-comm-type", "a2a+p2p", "--cp-a2a-size", "0"], "--cp-a2a-size", "must be >= 1",
     "a divisor of --cp"),
    (["--cp-comm-type", "a2a+p2p", "--cp-a2a-size", "4", "--tp", "4"], "--cp-a2a-size",
     "all-to-all level = 4 must divide the 2 key/value heads", "use --cp-a2a-size 1 or 2"),
])
def test_hierarchical_cp_level_errors_name_the_level(extra, field, want, fix):
    """A problem of a2a+p2p's all-to-all level names --cp-a2a-size and the levels that work
    (a review found the placement's 'cp = A' wording and a --pp fallback)."""
    argv = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--framework",
            "megatron-core-2024", "--pp", "1", "--dp", "2", "--mbs", "1", "--seq", "16384",
            "--cp", "4", "--sequence-parallel", *extra]
    if "--tp" not in extra:
        argv += ["--tp", "1"]
    err = _one_line_error(argv, field)
    assert want in err and fix in err.split("; fix: ")[1], err


@pytest.mark.parametrize("flag, field, want", [
    ("--arch", "arch", "is a directory, not a chip file"),
    ("--grid", "--grid", "is a directory, not a parquet file"),
    ("--config", "--config", "is not a UTF-8 text file"),
])
def test_a_directory_or_binary_file_is_named_as_such(tmp_path, flag, field, want):
    """A directory given as a chip file or grid, or a binary file as a config, is called
    what it is (it was 'a file, but ...', 'lacks columns', 'give an existing file')."""
    (tmp_path / "d").mkdir()
    (tmp_path / "b.yaml").write_bytes(bytes(range(128, 256)) * 4)
    path = str(tmp_path / ("b.yaml" if flag == "--config" else "d"))
    argv = ["evaluate", "--model", "gpt2-xl", "--tp", "1", "--pp", "1", "--dp", "1",
            "--mbs", "1", flag, path] + (["--arch", "x"] if flag == "--grid" else
                                          ["--arch", "a100"] if flag == "--config" else [])
    assert want in _one_line_error(argv, field)


@pytest.mark.parametrize("extra, field", [
    (["--model", "llama3-8b", "--expert-tp", "2", "--sequence-parallel"], "--expert-tp"),
    (["--model", "llama3-8b", "--ddp-impl", "torch", "--framework", "megatron-core-2024"],
     "--ddp-impl"),
    (["--model", "llama3-8b", "--ddp-impl", "torch", "--framework", "megatron-deepspeed"],
     "--ddp-impl"),
    (["--model", "llama3-8b", "--optimizer", "sgd", "--optimizer-state-dtype", "bf16"],
     "--optimizer-state-dtype"),
])
def test_flags_that_would_be_silent_no_ops_are_refused(extra, field):
    """--expert-tp on a dense model (even = --tp), Megatron-LM's --DDP-impl under a profile
    that has its own data-parallel engine, Adam's state dtype under SGD: each did nothing
    and was accepted (a boundary helper's report); now one line naming the flag."""
    argv = ["evaluate", "--arch", "h100", "--tp", "2", "--pp", "1", "--dp", "1", "--mbs", "1",
            "--batch", "4", "--seq", "1024"] + extra
    _one_line_error(argv, field)
