"""The scheduling stage's shared-work paths against plain per-arch routes written here:
layer_problems (one cost-model call per pass over all archs, one DAG structure per pass,
identical problems shared) against one op_latencies call per arch and a problem built op
by op; the memoised critical path against a longest-path relaxation; SolveResult.to_dict
against dataclasses.asdict."""

from __future__ import annotations

import dataclasses
import random

import pandas as pd
import pytest

from phaze.cost.api import op_latencies
from phaze.hw.grid import enumerate_grid
from phaze.model.graph import build_graph
from phaze.model.zoo import resolve_model
from phaze.hw.arch import Network
from phaze.sched.adapter import layer_problems, pass_ops
from phaze.sched.heuristic import critical_path_s, lower_bound_s
from phaze.sched.problem import SchedProblem
from phaze.sched.solve import solve_problem


def _grid() -> pd.DataFrame:
    arch = {"n_tc": [1, 4, 64], "n_vc": [1, 16], "tc_rows": [8, 128], "tc_cols": [128],
            "glb_mib": [2, 32], "clock_hz": [1.05e9], "hbm_bw_Bps": [1.2e12]}
    return enumerate_grid(arch).reset_index(drop=True)


def _by_hand(ops, archs_row: pd.DataFrame, net, tp) -> SchedProblem:
    costs = op_latencies(ops, archs_row, net, tp=tp)
    pos = {op.name: k for k, op in enumerate(ops)}
    edges = sorted({(pos[d], k) for k, op in enumerate(ops) for d in op.deps})
    return SchedProblem(tuple(op.core_class for op in ops),
                        tuple(float(x) for x in costs.lat_one_s[0]),
                        tuple(float(x) for x in costs.lat_all_s[0]), tuple(edges),
                        int(archs_row["n_tc"].iloc[0]), int(archs_row["n_vc"].iloc[0]),
                        names=tuple(op.name for op in ops))


@pytest.mark.parametrize("tp", [1, 4])
def test_layer_problems_equal_per_arch_problems(tp):
    grid = _grid()
    net = Network()
    g = build_graph(resolve_model("bert-large"), seq=128, mbs=2, tp=tp, fused=True)
    seen = 0
    for a, li, layer, pass_, p in layer_problems(g, grid, net):
        ops = pass_ops(layer, pass_)
        row = grid.iloc[[a]].reset_index(drop=True)
        want = (_by_hand(ops, row, net, tp) if ops else
                SchedProblem((), (), (), (), int(row["n_tc"][0]), int(row["n_vc"][0])))
        assert p == want and p.key() == want.key()
        seen += 1
    assert seen == len(grid) * len(g.layers) * 3


def _longest_path(p: SchedProblem) -> float:
    """Bellman-Ford style relaxation over the edges, n rounds (no topological order)."""
    d = [p.lat_one_s[i] if p.core_class[i] == "net" else min(p.lat_one_s[i], p.lat_all_s[i])
         for i in range(p.n)]
    start = [0.0] * p.n
    for _ in range(p.n):
        for i, j in p.edges:
            start[j] = max(start[j], start[i] + d[i])
    return max((start[i] + d[i] for i in range(p.n)), default=0.0)


def test_critical_path_equals_relaxation_on_random_dags():
    rng = random.Random(3)
    for trial in range(200):
        n = rng.randint(1, 12)
        cls = tuple(rng.choice(["tc", "vc", "tc+vc", "net"]) for _ in range(n))
        one = tuple(rng.uniform(0, 5) for _ in range(n))
        all_ = tuple(x * rng.uniform(0.1, 1.5) for x in one)
        edges = tuple(sorted({(i, j) for j in range(n) for i in range(j)
                              if rng.random() < 0.3}))
        perm = list(range(n))
        rng.shuffle(perm)        # ops not in topological index order
        edges = tuple((perm[i], perm[j]) for i, j in edges)
        cls = tuple(cls[perm.index(k)] for k in range(n))
        p = SchedProblem(cls, one, all_, edges, rng.randint(1, 4), rng.randint(1, 4))
        assert critical_path_s(p) == pytest.approx(_longest_path(p), rel=1e-12, abs=0)
        # unhashable edges (lists) take the unmemoised route to the same answer
        q = SchedProblem(cls, one, all_, [list(e) for e in edges], p.n_tc, p.n_vc)
        assert critical_path_s(q) == critical_path_s(p)
        assert lower_bound_s(q) == lower_bound_s(p)


def test_problem_rejects_cycles_and_bad_edges_memoised_or_not():
    for edges in (((0, 1), (1, 0)), [[0, 1], [1, 0]], ((0, 2),), ((1, 1),)):
        with pytest.raises(ValueError):
            SchedProblem(("tc", "vc"), (1.0, 1.0), (1.0, 1.0), edges, 1, 1)


def test_solve_result_to_dict_is_asdict():
    p = SchedProblem(("tc", "vc", "net"), (1e-3, 2e-3, 5e-4), (3e-4, 1e-3, 5e-4),
                     ((0, 1),), 2, 2)
    res = solve_problem(p, "heuristic", "compact", {"time_limit_s": 1.0})
    assert res.to_dict() == dataclasses.asdict(res)
    assert res.to_dict()["start_s"] is not res.start_s
