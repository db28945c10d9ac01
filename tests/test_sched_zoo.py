"""All backends agree (within their reported gaps) on every zoo model's layers for >= 20
archs, including archs with a single core of a class.

Where a solve is needed, CP-SAT alone and the default pipeline (bounds, list schedule,
branch and bound) run on every problem; the MILP backends (HiGHS, CBC, Gurobi) on every
problem small enough for them to prove within their limit (<= MILP_ALL_OPS ops: the
forward blocks, prologues and epilogues) and, on the larger ones (backward blocks, where
all three stop at their limit), on the first problem of each size and arch class (a
single TC, a single VC, neither); Gurobi only up to the size at which it first hands
over to CBC (a size-limited licence: the result then names cbc, a run CBC already had;
that saved about a minute of CI). Every MILP run on a backward block stopped at its limit
(measured on a quarter of them: 2-3 s each, 80 % of the test's time), so more of them
checked little beyond what these do: a valid schedule and a bound below every schedule."""

from __future__ import annotations

import os
import random

import pytest

from phaze.model import graph as graph_mod
from phaze.model import zoo
from phaze.sched.adapter import layer_problems
from phaze.sched.problem import check_schedule
from phaze.sched.solve import OPT_GAP, solve_problem

# each backend alone (no shortcut, no branch and bound), and the default pipeline
BACKENDS = ("cpsat", "highs", "cbc", "gurobi", "pipeline")
MILP_BACKENDS = ("highs", "cbc", "gurobi")
MILP_ALL_OPS = 17        # the MILPs run on every problem up to this size
# every zoo model; PHAZE_SCHED_ZOO_QUICK=1 runs a spread of models
# (encoder, GPT-2, OPT, Llama, Megatron with its own shapes) for quick local runs
QUICK_MODELS = ("bert-large", "gpt2-xl", "opt-350m", "llama2-7b", "megatron-gpt2-54")
# skipped to keep the test's time (CI): a family's largest zoo member has the ops of its
# smaller one at other sizes; gpt-oss and BLOOM add only vector ops of classes the others
# schedule (the sinks' copy, ALiBi's add); DeepSeek's MLA blocks are GEMM, vector and flash
# ops of the kinds scheduled here, in more of them (deepseek-v2-lite alone took ~3.5 min).
# Nemotron-H's Mamba-2 scan GEMMs (ssd_gemm) are new to the solvers and stay (nemotron-h-8b);
# nemotron-3-nano's blocks are Mamba-2, attention and MoE blocks of kinds scheduled here.
NOT_SCHEDULED_HERE = ("deepseek-v3", "deepseek-v2-lite", "nemotron-h-56b", "gpt-oss-120b",
                      "bloom-176b", "gpt-oss-20b", "bloom-7b1", "nemotron-3-nano",
                      "llama3.1-405b", "qwen3-30b-a3b", "qwen3-235b-a22b")


def _archs(n=20, seed=1):
    import pandas as pd

    from phaze.hw.grid import enumerate_grid
    from phaze.hw.presets import PRESETS

    grid = enumerate_grid()
    rng = random.Random(seed)
    one_tc = grid[grid["n_tc"] == 1]
    one_vc = grid[(grid["n_vc"] == 1) & (grid["n_tc"] > 1)]
    rest = grid[(grid["n_tc"] > 1) & (grid["n_vc"] > 1)]
    rows = [one_tc.iloc[i] for i in rng.sample(range(len(one_tc)), 3)]
    rows += [one_vc.iloc[i] for i in rng.sample(range(len(one_vc)), 3)]
    rows += [rest.iloc[i] for i in rng.sample(range(len(rest)), n - 6 - len(PRESETS))]
    pre = pd.DataFrame([a.row() for a in PRESETS.values()])
    return pd.concat([pre, pd.DataFrame(rows)], ignore_index=True)[list(pre.columns)]


def _arch_class(p) -> str:
    return "1 tc" if p.n_tc == 1 else "1 vc" if p.n_vc == 1 else "multi"


def _backends(p, milp_seen: set, gurobi_falls_back: list) -> tuple[str, ...]:
    """Backends for a problem whose list schedule the static bounds leave open: all of them
    up to MILP_ALL_OPS ops or on the first problem of its (size, arch class); else CP-SAT
    and the pipeline."""
    k = (p.n, _arch_class(p))
    # Gurobi without a full licence hands a model too large for it to CBC (the result
    # names cbc): from the first such size on, asking it again only re-runs CBC
    drop = ("gurobi",) if gurobi_falls_back and p.n >= min(gurobi_falls_back) else ()
    if p.n <= MILP_ALL_OPS or k not in milp_seen:
        milp_seen.add(k)
        return tuple(b for b in BACKENDS if b not in drop)
    return tuple(b for b in BACKENDS if b not in MILP_BACKENDS)


def _agree(a, b) -> bool:
    # a stopped backend's gap can be exactly the distance to the other's optimum (its
    # bound is that optimum): allow the MILP tolerance of a bound (1e-6, as below)
    ms = max(a.makespan_s, b.makespan_s)
    tol = max(a.gap, b.gap, 2e-6) * ms
    return abs(a.makespan_s - b.makespan_s) <= tol + 1e-6 * ms


def _solve(p, backend, limit_s):
    """One solve; a worker that died is restarted and asked once more (seen once in CI
    for the CBC worker under load: EOFError from its pipe). Production keeps the list
    schedule with a warning instead; a second crash fails the test."""
    if backend == "pipeline":      # the default: bounds, list schedule, branch and bound
        return solve_problem(p, settings={"time_limit_s": limit_s})
    r = solve_problem(p, backend, settings={"time_limit_s": limit_s}, shortcut=False)
    if r.solver_status == "crash":
        r = solve_problem(p, backend, settings={"time_limit_s": limit_s}, shortcut=False)
    return r


@pytest.mark.slow
def test_backends_agree_on_zoo_layers():
    from phaze.hw.presets import get_network

    archs = _archs()
    assert len(archs) >= 20
    assert ((archs["n_tc"] == 1) | (archs["n_vc"] == 1)).sum() >= 6
    net = get_network("dgx-a100")
    seen = set()
    milp_seen: set = set()
    gurobi_falls_back: list = []      # op counts at which Gurobi handed over to CBC
    n_full = n_bnb = 0
    quick = os.environ.get("PHAZE_SCHED_ZOO_QUICK") == "1"
    for name in (QUICK_MODELS if quick else
                 [m for m in zoo.ZOO if m not in NOT_SCHEDULED_HERE]):
        spec = zoo.ZOO[name]
        graph = graph_mod.build_graph(spec, seq=min(spec.seq, 2048), tp=1)
        for a, li, layer, pass_, p in layer_problems(graph, archs, net):
            k = p.key()
            if k in seen:
                continue
            seen.add(k)
            heur = solve_problem(p, "heuristic")
            if heur.gap <= 1e-12:
                continue      # the list schedule meets the lower bound: nothing to compare
            # wherever a solve is needed (the static bounds do not meet the list schedule
            # within OPT_GAP, so production would solve): CP-SAT, the pipeline and (module
            # docstring) the MILPs; CP-SAT alone where they meet within OPT_GAP but not
            # exactly
            backends = _backends(p, milp_seen, gurobi_falls_back) if heur.gap > OPT_GAP \
                else ("cpsat",)
            limits = {"cpsat": 5.0, "pipeline": 10.0}
            res = {b: _solve(p, b, limits.get(b, 2.0)) for b in backends}
            if "gurobi" in res and res["gurobi"].solver != "gurobi":
                gurobi_falls_back.append(p.n)
            n_full += len(backends) >= len(BACKENDS) - 1 and "highs" in backends
            n_bnb += "pipeline" in res and res["pipeline"].solver_status.startswith("branch")
            ref = res["cpsat"]
            # some backward layers stay unproven at the limit (docs/sched.md); then the
            # check is that every backend's proven bound lies below every schedule
            for b, r in res.items():
                check_schedule(p, r.schedule())
                assert r.status in ("optimal", "time_limit")
                assert r.lower_bound_s >= heur.lower_bound_s * (1 - 1e-9)
                assert r.makespan_s <= heur.makespan_s * (1 + 1e-9)
                for other in res.values():
                    assert r.lower_bound_s <= other.makespan_s * (1 + 1e-6), (name, b)
                assert _agree(r, ref), (name, layer.kind, pass_, b, r.makespan_s, ref.makespan_s)
    assert n_full >= 20
    assert n_bnb >= 20 or quick      # the branch and bound's proofs are checked too
    assert len(seen) > 50
