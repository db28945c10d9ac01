"""Default mode vs NEST on NEST's two shipped instances, under phaze's own cost model
(phaze.place.nest_compare; docs/nest.md): NEST's optimum plan is a point of phaze's search
space (contiguous stages of a = t ep cp devices, p d a <= devices, fits phaze's memory
model), so phaze's DP optimum is never slower; the figures of docs/nest.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from phaze.place.nest import load_nest_instance
from phaze.place.nest_compare import compare_with_nest, nest_chain, nest_job

DATA = Path(__file__).parent / "data" / "nest"
CASES = {   # instance -> (phaze's speed-up over NEST's plan, phaze's (p, d)) of docs/nest.md
    "nest_dp_input_llama2_mbs1_64dev_tpuv4_fatTree.json": (1.2668, (1, 64)),
    "nest_dp_input_mixtral_ep4_mbs1_128dev_h100_spineLeaf.json": (1.2450, (8, 4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_mode_beats_or_equals_nest_plan(name):
    inst = load_nest_instance(DATA / name)
    r = compare_with_nest(inst)
    nest, raw, ph = r["nest"], r["nest_raw"], r["phaze"]
    # NEST's plan lies in phaze's search space
    a = raw["tensorParallelDegree"] * inst.ep * inst.cp
    assert all(s["devicesForStage"] == a for s in raw["stages"])
    assert nest["feasible"]
    assert nest["p"] * nest["d"] * a <= inst.max_devices
    assert nest["p"] == len(raw["stages"]) and nest["d"] == raw["dataParallelDegree"]
    # ... so phaze's optimum is at least as fast, by construction
    assert ph["feasible"] and ph["time_per_batch_s"] <= nest["time_per_batch_s"] * (1 + 1e-12)
    speedup, (p, d) = CASES[name]
    assert r["speedup"] == pytest.approx(speedup, abs=1e-4)
    assert (ph["p"], ph["d"]) == (p, d)
    assert ph["devices"] <= inst.max_devices


def test_nest_chain_units():
    """Latencies ms -> s, weight bytes -> parameters, the stage group of t ep cp devices."""
    inst = load_nest_instance(DATA / "nest_dp_input_mixtral_ep4_mbs1_128dev_h100_spineLeaf.json")
    ch = nest_chain(inst, 1)
    w = inst.widths[1]
    assert ch.t == 4
    assert ch.fwd_s[5] == pytest.approx(w.fw[5] * 1e-3)
    assert ch.param_count[5] == pytest.approx(w.param[5] / 2)
    job = nest_job(inst)
    assert [g for g, _b, _l in job["links"].levels] == [8, 32, 0]
    assert job["recompute"] == "full" and job["batch"] == 1024


def test_cli_vs_default(capsys):
    import json

    from phaze.cli import main

    f = DATA / "nest_dp_input_mixtral_ep4_mbs1_128dev_h100_spineLeaf.json"
    assert main(["place", "--nest-instance", str(f), "--vs-default", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["speedup"] == pytest.approx(CASES[f.name][0], abs=1e-4)
    assert out["phaze_plan"]["time_per_batch_s"] <= out["nest_plan"]["time_per_batch_s"]
    assert main(["place", "--reference-instance", str(f), "--vs-default"]) == 2
