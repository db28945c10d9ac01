import json
import subprocess
import sys

import pytest

from phaze.cost.params import CostParams


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "phaze", *args], capture_output=True, text=True)


def test_cost_cli_json_gemm_and_gemv():
    r = _cli("cost", "--arch", "tpuv4", "--gemm", "1,8192,8192,8192", "--gemm", "1,1,8192,8192",
             "--vector", "layernorm:1048576", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    big, gemv, ln = d["ops"]
    assert 2 * 8192**3 / big["lat_all_s"] >= 0.9 * 275e12 and big["bound_all"] == "compute"
    assert gemv["bound_all"] == "hbm"
    assert ln["core_class"] == "vc" and ln["lat_one_s"] >= ln["lat_all_s"]


@pytest.mark.parametrize("args", [
    ["--gemm", "1,0,4,4"], ["--gemm", "1,-2,4,4"], ["--gemm", "1,2.5,4,4"], ["--gemm", "1,2,3"],
    ["--vector", "gelu:0"], ["--vector", "gelu:-3"], [],
])
def test_cost_cli_bad_input_exit_2(args):
    r = _cli("cost", "--arch", "tpuv4", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_cost_cli_unknown_arch_exit_2():
    r = _cli("cost", "--arch", "nosuch", "--gemm", "1,2,2,2")
    assert r.returncode == 2


def test_overhead_param_adds_fixed_time():
    from phaze.cost.api import op_latencies
    from phaze.hw.presets import PRESETS
    from phaze.model.ops import GemmDims, Op

    t = PRESETS["tpuv4"]
    ops = [Op("g", "gemm", gemm=GemmDims(1, 64, 64, 64))]
    base = op_latencies(ops, [t], t.network).lat_all_s[0, 0]
    more = op_latencies(ops, [t], t.network, params=CostParams(op_overhead_s=1e-5)).lat_all_s[0, 0]
    assert more == pytest.approx(base + 1e-5)


def test_cost_model_flag_covers_every_op_and_respects_peak(capsys):
    """`phaze cost --model` costs the built graph: every op appears once per pass, and no
    GEMM beats FLOPs / peak on all cores (closed-form lower bound)."""
    from phaze.cli import main as phaze_main
    from phaze.hw.presets import PRESETS
    from phaze.model.graph import build_graph
    from phaze.model.zoo import resolve_model

    assert phaze_main(["cost", "--model", "bert-large", "--arch", "tpuv4", "--seq", "512", "--mbs", "2",
                       "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from phaze.settings import GraphSettings

    # the CLI builds with the sweep's graph settings (fused by default)
    g = build_graph(resolve_model("bert-large"), seq=512, mbs=2, tp=1,
                    **GraphSettings().build_kwargs())
    assert len(out["ops"]) == sum(len(layer.fwd) + len(layer.bwd) for layer in g.layers)
    peak = PRESETS["tpuv4"].peak_flops
    for r in out["ops"]:
        if r["kind"] == "gemm":
            assert r["lat_all_s"] >= r["flops"] / peak * (1 - 1e-9)
