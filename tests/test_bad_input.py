"""Malformed and extreme input never gives a traceback, a hang or a half-written file: every
config field and the numeric flags of the commands are fuzzed (hypothesis), and each case
ends in exit 2 with one line naming the field, nothing written."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phaze.cli import main

BASE = yaml.safe_load(open(__import__("pathlib").Path(__file__).resolve().parents[1]
                           / "configs" / "default.yaml"))

# (path into the config, field name the message must carry)
FIELDS = [
    (("microbatch_sizes", 0), "microbatch_sizes"),
    (("models", 0, "seq", 0), "models[0].seq"),
    (("models", 0, "tp", 0), "models[0].tp"),
    (("arch", "n_tc", 0), "arch.n_tc"),
    (("arch", "glb_mib", 0), "arch.glb_mib"),
    (("arch", "clock_hz", 0), "arch.clock_hz"),
    (("scheduling", "time_limit_s"), "scheduling.time_limit_s"),
    (("scheduling", "bnb_share"), "scheduling.bnb_share"),
    (("scheduling", "n_chunks"), "scheduling.n_chunks"),
    (("placement", "devices"), "placement.devices"),
    (("placement", "global_batch"), "placement.global_batch"),
    (("placement", "hbm_gib", 0), "placement.hbm_gib"),
    (("placement", "interleave", 0), "placement.interleave"),
    (("placement", "ranks"), "placement.ranks"),
    (("network", "intra_bw_Bps"), "network.intra_bw_Bps"),
    (("network", "inter_latency_s"), "network.inter_latency_s"),
]
BAD = st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, -0.5, 2**70, 1e300, 1e-320,
                       "12", "", None, [], {}, True])


def _set(cfg, path, value):
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:      # argparse's own errors
            rc = e.code
    return rc, err.getvalue()


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=BAD)
def test_config_fuzz_names_the_field(tmp_path, field, value):
    path, name = field
    cfg = copy.deepcopy(BASE)
    _set(cfg, path, value)
    if value in (1e-320,) and name in ("arch.glb_mib",):    # tiny but valid numbers
        return
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "checked.yaml"
    out.unlink(missing_ok=True)
    rc, err = _run(["check-config", "--config", str(f), "-o", str(out)])
    if rc == 0:      # a value that is valid after all (e.g. 0 latency, a tiny bandwidth)
        assert value is not None and not isinstance(value, (str, list, dict, bool))
        assert isinstance(value, (int, float)) and math.isfinite(value)
        return
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert name.split("[")[0].split(".")[-1] in err, err
    assert not out.exists()


FLAG_CASES = [
    (["evaluate", "--model", "bert-large", "--arch", "tpuv4", "--tp", "1", "--pp", "2",
      "--dp", "4", "--mbs", "1"], ["--batch", "--interleave", "--seq", "--hbm-gib", "--devices"]),
    (["search", "--model", "bert-large", "--seq", "128", "--grid", "missing.parquet"],
     ["--hbm-gib", "--mbs", "--interleave", "--devices"]),
    (["place", "--work-items", "missing.json", "-o", "o.parquet"],
     ["--hbm-gib", "--interleave", "--devices", "--batch"]),
]


@settings(max_examples=50, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from([(c, f) for c, fs in FLAG_CASES for f in fs]),
       value=st.sampled_from(["nan", "inf", "-1", "0", "1e30", "abc", "", "1,,nan", "2**70"]))
def test_flag_fuzz_exits_2_in_one_line(tmp_path, monkeypatch, case, value):
    monkeypatch.chdir(tmp_path)
    argv, flag = case
    rc, err = _run(argv + [flag, value])
    assert rc == 2, (argv, flag, value, err)
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and flag.lstrip("-").split("-")[0] in err, err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("target", ["/dev/null", "DIR", "LINK", ""])
def test_outputs_are_regular_files_only(tmp_path, target):
    (tmp_path / "DIR").mkdir()
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "LINK").symlink_to(tmp_path / "real.json")
    out = target if target in ("/dev/null", "") else str(tmp_path / target)
    rc, err = _run(["place", "--reference-instance", "examples/reference_instance.json",
                    "-o", out])
    assert rc == 2 and err.count("\n") == 1 and "-o" in err, err
    assert (tmp_path / "real.json").read_text() == "{}" and (tmp_path / "LINK").is_symlink()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"", b"{not json", b"[1, 2]"])
def test_unreadable_inputs_are_one_line(tmp_path, content, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])
    f = tmp_path / "config.json"
    f.write_bytes(content)
    for argv in (["graph", "--model", str(f), "--seq", "64"],
                 ["place", "--reference-instance", str(f), "-o", str(tmp_path / "o.json")],
                 ["check-config", "--config", str(f)]):
        rc, err = _run(argv)
        assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("edit,field", [
    ({"maxDevices": 10**12, "mbsInBatch": 10**12}, "maxDevices"),
    ({"fixedPP": 10**9}, "fixedPP"),
    ({"bandwidth": 1e308}, "bandwidth"),
])
def test_reference_instance_extremes_refused_fast(tmp_path, edit, field):
    """Values that would make the reference DP loop for hours or overflow to Infinity."""
    import json
    from pathlib import Path

    inst = json.loads((Path(__file__).resolve().parents[1] / "examples" /
                       "reference_instance.json").read_text())
    inst.update(edit)
    f = tmp_path / "i.json"
    f.write_text(json.dumps(inst))
    rc, err = _run(["place", "--reference-instance", str(f), "-o", str(tmp_path / "o.json")])
    assert rc == 2 and field in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.json").exists()


def test_graph_takes_the_inline_gpt_evaluate_takes(tmp_path):
    """`phaze graph --hidden/--heads/--layers` builds the inline Megatron GPT `phaze evaluate`
    costs (one resolver, settings.model_from_args): the same parameters and FLOPs; half an
    inline model is one error line naming --model."""
    import json

    from phaze.model.graph import build_graph
    from phaze.model.spec import ModelSpec

    out = tmp_path / "g.json"
    assert main(["graph", "--hidden", "512", "--heads", "8", "--layers", "2", "--seq", "256",
                 "--vocab", "1000", "-o", str(out)]) == 0
    g = json.loads(out.read_text())
    spec = ModelSpec(name="gpt-h512-a8-l2", hidden=512, layers=2, heads=8, ffn=2048,
                     vocab=1000, seq=256, max_positions=256, source="inline")
    want = build_graph(spec, seq=256, mbs=1, tp=1, fused=True)
    assert g["params_total"] == want.params_total
    assert g["model"] == "gpt-h512-a8-l2"
    assert main(["graph", "--hidden", "512", "--seq", "256"]) == 2
