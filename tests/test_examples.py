"""The shipped example instance (examples/reference_instance.json) runs through the CLI
exactly as README.md shows, and the answer agrees with an exhaustive search written here
from the formulas of docs/reference.md#placement-dp (chain stage times, memory rule, final
round, fixed strategy), independently of phaze/place/refdp.py."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from phaze.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reference_instance.json"


def _width(raw, t):
    """Layers of width t in file order (the example is a chain listed in order)."""
    nl = raw["nodes"][str(t)]
    ids = [nd["id"] for nd in nl]
    cost = {}
    for e in raw["edges"][str(t)]:
        src, dst = ids.index(e["sourceId"]), ids.index(e["destId"])
        assert dst == src + 1, "the example must be a chain listed in order"
        cost[dst] = e["communicationCost"]     # cost of the edge into layer dst
    assert sorted(cost) == list(range(1, len(nl)))
    return nl, ids, cost


def _stage(raw, t, i, j, pos):
    """(load, fits, devices, P) of the stage [i, j) at position pos (1 = last stage)."""
    nl, _, cost = _width(raw, t)
    n, bw = len(nl), raw["bandwidth"]
    rec = raw["activationRecomputation"]
    F = sum(nl[k]["optimalLatencyFw"] for k in range(i, j))
    B = sum(nl[k]["optimalLatencyBw"] for k in range(i, j))
    P = sum(nl[k]["parameterSize"] for k in range(i, j))
    A = sum(nl[k]["activationSize"] for k in range(i, j))
    cin = cost[i] / bw if i > 0 else 0.0
    cout = cost[j] / bw if j < n else 0.0
    load = cin + F + (max(F, cout) if rec and pos >= 2 else cout) + B
    const = 2 * P + (P if raw["optimizerAlgorithm"] == "Adam" else 0) + A
    stash = (cost[i] if i > 0 else 0.0) if rec else A
    fits = const + (pos - 1) * stash <= raw["maxMemoryPerDevice"]
    devices = t if any(nl[k]["isTensorParallelized"] for k in range(i, j)) else 1
    return load, fits, devices, P


def _tpb(raw, t, bounds, d):
    """Time per batch of the stages given by `bounds` (cuts 0 = b0 < ... < bp = n) with
    data-parallel degree d; inf when a stage does not fit or devices run out."""
    p = len(bounds) - 1
    loads, devs = [], 0
    for idx in range(p):
        load, fits, a, P = _stage(raw, t, bounds[idx], bounds[idx + 1], p - idx)
        if not fits:
            return math.inf
        loads.append(load)
        devs += a
        if idx == 0:
            P0 = P
    if devs > raw["maxDevices"] // d:
        return math.inf
    M = -(-raw["mbsInBatch"] // d)
    return max(loads) * (M + p - 1) + 4 * (d - 1) * P0 / (raw["bandwidth"] * d)


def _brute_force(raw):
    best = math.inf
    for tkey in raw["nodes"]:
        t = int(tkey)
        n = len(raw["nodes"][tkey])
        for cuts in itertools.product((False, True), repeat=n - 1):
            bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [n]
            for d in range(1, min(raw["maxDevices"], raw["mbsInBatch"]) + 1):
                best = min(best, _tpb(raw, t, bounds, d))
    return best


def _fixed(raw):
    """Fixed strategy: c = ceil(L / p) layers per stage, the last stage also holds L..n-1,
    empty stages have load 0 and need no memory but count in p; stage 0's P is synced."""
    p, t, d = raw["fixedPP"], raw["fixedTMPC"], raw["fixedDP"]
    L = raw["numTransformerLayers"]
    n = len(raw["nodes"][str(t)])
    c = -(-L // p)
    worst, P0 = 0.0, 0.0
    for k in range(p):
        lo, hi = min(k * c, L), min((k + 1) * c, L)
        if k == p - 1:
            lo, hi = (lo if hi > lo else L), n
        if hi <= lo:
            continue
        load, fits, _, P = _stage(raw, t, lo, hi, p - k)
        if not fits:
            return None
        worst = max(worst, load)
        if k == 0:
            P0 = P
    M = -(-raw["mbsInBatch"] // d)
    return worst * (M + p - 1) + 4 * (d - 1) * P0 / (raw["bandwidth"] * d)


def test_readme_names_the_example():
    assert "phaze place --reference-instance examples/reference_instance.json -o out.json" in (
        REPO / "README.md").read_text()


def test_reference_example_matches_brute_force(tmp_path):
    raw = json.loads(EXAMPLE.read_text())
    out_path = tmp_path / "out.json"
    assert main(["place", "--reference-instance", str(EXAMPLE), "-o", str(out_path)]) == 0
    out = json.loads(out_path.read_text())

    assert out["feasible"] is True
    t, d = out["tensorParallelDegree"], out["dataParallelDegree"]
    assert t in (1, 2) and 1 <= d <= raw["maxDevices"]
    # the reported stages cover the chain in order, with the devices the rule gives
    _, ids, _ = _width(raw, t)
    layers = [lid for st in out["stages"] for lid in st["layers"]]
    assert layers == ids
    bounds = [0]
    for st in out["stages"]:
        bounds.append(bounds[-1] + len(st["layers"]))
    for idx, st in enumerate(out["stages"]):
        _, _, a, _ = _stage(raw, t, bounds[idx], bounds[idx + 1], len(out["stages"]) - idx)
        assert st["devices"] == a
    assert sum(st["devices"] for st in out["stages"]) * d <= raw["maxDevices"]

    # the reported plan achieves the reported time ...
    assert _tpb(raw, t, bounds, d) == pytest.approx(out["finalTimePerBatch"], rel=1e-12)
    # ... and no plan is faster
    assert out["finalTimePerBatch"] == pytest.approx(_brute_force(raw), rel=1e-12)
    # the fixed strategy (with its empty-stage rule) agrees too
    fixed = _fixed(raw)
    assert fixed is not None
    assert out["fixedStrategyTimePerBatch"] == pytest.approx(fixed, rel=1e-12)
    assert out["finalTimePerBatch"] <= out["fixedStrategyTimePerBatch"]
