"""Scheduling core: feasibility checker, time limits, licence fallback, cache, CLI."""

from __future__ import annotations

import json
import random
import threading

import pandas as pd
import pytest

from phaze.cli import main
from phaze.model.ops import GemmDims, Op
from phaze.sched.adapter import ops_to_problem
from phaze.sched.cache import ScheduleCache
from phaze.sched.heuristic import lower_bound_s
from phaze.sched.problem import SchedProblem, Schedule, check_schedule
from phaze.sched.solve import solve_problem
from phaze.sched.table import SHARD_SCHEMA


def _hard(n=24, seed=7) -> SchedProblem:
    rng = random.Random(seed)
    cls = tuple(rng.choice(["tc", "vc", "tc+vc"]) for _ in range(n))
    l1 = tuple(rng.uniform(1, 9) * 1e-4 for _ in range(n))
    la = tuple(x * rng.uniform(0.2, 0.9) for x in l1)
    return SchedProblem(cls, l1, la, (), n_tc=3, n_vc=2)


def test_checker_rejects_overload_and_precedence():
    p = SchedProblem(("tc", "tc", "vc"), (1.0, 1.0, 1.0), (0.4, 0.4, 0.4), ((0, 2),), 1, 1)
    check_schedule(p, Schedule([0.0, 1.0, 1.0], ["single"] * 3))
    with pytest.raises(ValueError, match="capacity"):
        check_schedule(p, Schedule([0.0, 0.5, 1.0], ["single"] * 3))     # 2 TC ops on 1 TC
    with pytest.raises(ValueError, match="precedence"):
        check_schedule(p, Schedule([0.0, 1.0, 0.5], ["single"] * 3))
    with pytest.raises(ValueError, match="capacity"):                   # intra is exclusive
        check_schedule(p, Schedule([0.0, 1.0, 1.1], ["single", "intra", "single"]))


def test_exclusive_intra_vs_closed_form():
    # two independent tc ops, 2 TCs: single in parallel (1.0) beats intra in series (2 x 0.6)
    p = SchedProblem(("tc", "tc"), (1.0, 1.0), (0.6, 0.6), (), 2, 1)
    assert solve_problem(p).makespan_s == pytest.approx(1.0, rel=1e-6)
    # intra at 0.4 each: serial 0.8 beats parallel 1.0
    p = SchedProblem(("tc", "tc"), (1.0, 1.0), (0.4, 0.4), (), 2, 1)
    assert solve_problem(p).makespan_s == pytest.approx(0.8, rel=1e-6)
    # a net op overlaps an exclusive op: 0.4 + 0.4 in series, link op of 0.8 alongside
    p = SchedProblem(("tc", "tc", "net"), (1.0, 1.0, 0.8), (0.4, 0.4, 0.8), (), 2, 1)
    assert solve_problem(p).makespan_s == pytest.approx(0.8, rel=1e-6)


@pytest.mark.parametrize("solver", ["cpsat", "highs", "cbc"])
def test_time_limit_is_never_optimal(solver, tmp_path):
    p = _hard()
    cache = ScheduleCache(tmp_path)
    res = cache.solve(p, solver, settings={"time_limit_s": 0.05, "threads": 1,
                                                  "bnb_share": 0.0})
    check_schedule(p, res.schedule())
    assert res.lower_bound_s <= res.makespan_s
    if res.status == "optimal":      # only acceptable if the gap really is closed
        assert res.gap <= 1e-4
    else:
        assert res.status == "time_limit" and res.gap >= 0
        stored = ScheduleCache(tmp_path).solve(p, solver, settings={"time_limit_s": 0.05,
                                                                     "threads": 1,
                                                                     "bnb_share": 0.0})
        assert stored.cache_hit and stored.status == "time_limit"


def test_reference_solve_at_limit_reports_gap():
    # the reference formulation on 24 ops cannot be proven in 1 s by HiGHS
    p = _hard()
    res = solve_problem(p, "highs", "reference", {"time_limit_s": 1.0, "threads": 1,
                                                   "bnb_share": 0.0})
    assert res.status == "time_limit" and res.gap > 0
    assert res.lower_bound_s >= lower_bound_s(p) * (1 - 1e-12)


def test_cpsat_reference_is_the_milp_reference_model():
    """The CP-SAT `reference` model has exactly the variables of milp.build_reference
    (S, z, C, x for every ordered pair, core-assignment a) and its rows plus one
    `x_ij == 1` per DAG edge (the MILP fixes those by a bound instead)."""
    from ortools.sat.python import cp_model

    from phaze.sched.cpsat_models import build_reference, tick_grid
    from phaze.sched.heuristic import list_schedule
    from phaze.sched.milp import build_reference as milp_reference
    from phaze.sched.prep import prepare

    cls = ("tc", "vc", "tc+vc", "net", "tc", "net", "vc")
    l1 = (3e-4, 2e-4, 4e-4, 1e-4, 3e-4, 2e-4, 1e-4)
    la = (1e-4, 2e-4, 1e-4, 1e-4, 5e-4, 2e-4, 0.5e-4)
    p = SchedProblem(cls, l1, la, ((0, 1), (0, 2), (2, 3), (1, 4), (4, 5)), n_tc=2, n_vc=3)
    pr = prepare(p, list_schedule(p).makespan(p))
    m = milp_reference(pr)
    proto = build_reference(pr, tick_grid(pr), cp_model).mdl.Proto()
    assert len(proto.variables) == m.n_vars
    assert len(proto.constraints) == m.n_rows + len(set(p.edges))
    # and it solves to the same optimum as the compact model
    ref = solve_problem(p, "cpsat", "reference", shortcut=False)
    cmp_ = solve_problem(p, "cpsat", "compact", shortcut=False)
    assert ref.status == cmp_.status == "optimal"
    assert ref.makespan_s == pytest.approx(cmp_.makespan_s, rel=1e-4)


def test_cpsat_reference_at_limit_reports_gap():
    p = _hard()      # 24 independent ops: the pairwise model is far from a proof in 0.3 s
    res = solve_problem(p, "cpsat", "reference", {"time_limit_s": 0.3, "threads": 1},
                        shortcut=False)
    check_schedule(p, res.schedule())
    assert res.formulation == "reference"
    assert res.status == "time_limit" and res.gap > 0
    assert res.lower_bound_s >= lower_bound_s(p) * (1 - 1e-12)


def test_cli_cpsat_reference(tmp_path, capsys):
    # 3 tc ops of 1.0 (0.7 intra) on 2 TCs: two in parallel, then one intra: 1.7
    p = SchedProblem(("tc",) * 3, (1.0,) * 3, (0.7,) * 3, (), n_tc=2, n_vc=1)
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p.to_dict()))
    assert main(["schedule", "--problem", str(f), "--solver", "cpsat", "--formulation",
                 "reference", "--bnb-share", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "optimal" and out["solver"] == "cpsat"
    assert out["makespan_s"] == pytest.approx(1.7, rel=1e-6)


def test_gurobi_licence_fallback():
    p = _hard(14)          # reference model: 14^3 transitivity rows > 2000
    warnings = []
    res = solve_problem(p, "gurobi", "reference", {"time_limit_s": 5.0, "bnb_share": 0.0},
                        warn=warnings.append)
    if res.solver == "gurobi":      # a full licence is installed here
        assert not warnings
    else:
        # the open MILP solver takes over, and the result says so
        assert res.solver == "cbc" and len(warnings) == 1
        assert "gurobi" in warnings[0] and "cbc" in warnings[0] and "\n" not in warnings[0]
    check_schedule(p, res.schedule())


def test_cache_second_run_zero_solves_and_key(tmp_path):
    rng = random.Random(3)
    probs = []
    for _ in range(6):
        n = 5
        probs.append(SchedProblem(tuple(rng.choice(["tc", "vc"]) for _ in range(n)),
                                  tuple(rng.uniform(1, 3) * 1e-5 for _ in range(n)),
                                  tuple(rng.uniform(0.5, 2) * 1e-5 for _ in range(n)),
                                  ((0, 1), (1, 2)), 2, 2))
    c1 = ScheduleCache(tmp_path)
    first = [c1.solve(p, "cpsat") for p in probs + probs]   # duplicates dedup in-run
    assert c1.solves == len(probs)
    c1.flush()          # a job's new entries reach the disk when it ends (or on flush)
    c2 = ScheduleCache(tmp_path)
    second = [c2.solve(p, "cpsat") for p in probs]
    assert c2.solves == 0 and c2.hits == len(probs)
    assert [r.makespan_s for r in second] == [r.makespan_s for r in first[:len(probs)]]
    # names, and core counts beyond the number of users, do not change the key
    p = probs[0]
    q = SchedProblem(p.core_class, p.lat_one_s, p.lat_all_s, p.edges, 64, 64,
                     names=tuple("abcde"))
    r = SchedProblem(p.core_class, p.lat_one_s, p.lat_all_s, p.edges, 5, 5)
    assert q.key() == r.key()
    s = SchedProblem(p.core_class, (p.lat_one_s[0] * 1.01,) + p.lat_one_s[1:], p.lat_all_s,
                     p.edges, 2, 2)
    assert s.key() != p.key()


def test_cache_concurrent_writers(tmp_path):
    p = _hard(6)
    res = solve_problem(p)
    c = ScheduleCache(tmp_path)
    key = c.key(p, "cpsat", "compact", {"time_limit_s": 10.0, "rel_gap": 1e-6, "threads": 8})
    errors = []

    def writer():
        try:
            for _ in range(30):
                w = ScheduleCache(tmp_path)
                w.put(key, res)
                w.flush()                    # one immutable shard per writer
                got = ScheduleCache(tmp_path).get(key, p)
                assert got is not None and got.makespan_s == res.makespan_s
        except Exception as e:       # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not list(tmp_path.rglob("*.tmp"))


def test_adapter_from_ops():
    ops = (Op("qkv", "gemm", gemm=GemmDims(1, 8, 8, 8)),
           Op("softmax", "vector", deps=("qkv",), elements=64),
           Op("ar", "collective", deps=("softmax",), collective="all_reduce", group="tp"),
           Op("proj", "gemm", deps=("softmax",), gemm=GemmDims(1, 8, 8, 8), fused=("gelu",)))
    p = ops_to_problem(ops, [1, 2, 3, 4], [0.5, 1, 3, 2], 4, 2)
    assert p.core_class == ("tc", "vc", "net", "tc+vc")
    assert set(p.edges) == {(0, 1), (1, 2), (1, 3)}
    # chain qkv -> softmax -> max(ar, proj): intra everywhere is best: 0.5 + 1 + max(3, 2)
    assert solve_problem(p).makespan_s == pytest.approx(4.5, rel=1e-6)


def test_cli_schedule_problem_json(tmp_path, capsys):
    p = SchedProblem(("tc", "tc", "vc"), (1e-3, 1e-3, 2e-3), (6e-4, 6e-4, 1e-3), ((0, 2),),
                     2, 1, names=("a", "b", "c"))
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p.to_dict()))
    assert main(["schedule", "--problem", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # a, b in parallel on 2 TCs (1 ms), then c intra (1 ms): 2 ms
    assert out["makespan_s"] == pytest.approx(2e-3, rel=1e-6)
    assert out["status"] == "optimal" and {o["op"] for o in out["ops"]} == {"a", "b", "c"}


def _shard(arch_ids, pass_rows=("fwd", "bwd", "recompute")):
    ident = {"model": "m", "seq": 128, "mbs": 1, "tp": 1, "sequence_parallel": False,
             "fused": True, "attention": "eager", "vocab_pad_multiple": 1, "cp": 1, "ep": 0}
    rows = []
    for a in arch_ids:
        for li in range(2):
            for ps in pass_rows:
                rows.append({**ident, "arch_id": a, "layer_index": li, "layer_repeat": 1,
                             "pass": ps, "layer_kind": "block",
                             "latency_s": {"fwd": 1.0, "bwd": 2.0, "recompute": 0.25}[ps],
                             "lower_bound_s": 0.1, "core_s": 0.0, "status": "optimal",
                             "gap": 0.0, "solver": "cpsat", "formulation": "compact", "seconds": 0.1,
                             "cache_hit": False, "phaze_version": "0.1.0"})
    return pd.DataFrame(rows, columns=list(SHARD_SCHEMA))


def test_merge_latency(tmp_path, capsys):
    _shard(["aa", "bb"]).to_parquet(tmp_path / "0.parquet")
    _shard(["cc"]).to_parquet(tmp_path / "1.parquet")
    out = tmp_path / "lat.parquet"
    assert main(["merge-latency", str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet"),
                 "-o", str(out), "--json"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 6 and (df["fwd_s"] == 1.0).all() and (df["bwd_s"] == 2.0).all()
    assert (df["recompute_s"] == 0.25).all() and (df["model"] == "m").all()
    assert json.loads(capsys.readouterr().out)["rows"] == 6
    bad = _shard(["dd"]).drop(columns=["gap"])
    bad.to_parquet(tmp_path / "bad.parquet")
    out2 = tmp_path / "lat2.parquet"
    assert main(["merge-latency", str(tmp_path / "bad.parquet"), "-o", str(out2)]) == 2
    assert not out2.exists()
    assert "gap" in capsys.readouterr().err
    _shard(["ee"], ("fwd", "bwd")).to_parquet(tmp_path / "half.parquet")
    assert main(["merge-latency", str(tmp_path / "half.parquet"), "-o", str(out2)]) == 2


def test_merge_checks_shards_against_the_grid(tmp_path, capsys):
    """A shard truncated (an arch of its chunk missing) or emptied is named; a complete set
    merges. Archs are put into chunks by family (phaze.hw.arch.chunk_of), as the jobs do."""
    from phaze.hw.arch import grid_chunks

    ids = [f"{k:016x}" for k in range(1, 9)]
    grid = pd.DataFrame({"arch_id": ids, "n_tc": range(1, 9),
                         **{c: 1 for c in ("tc_rows", "tc_cols", "n_vc", "vc_lanes",
                                           "glb_bytes")},
                         **{c: 1.0 for c in ("glb_bw_Bps", "hbm_bw_Bps", "clock_hz", "area_mm2",
                                             "peak_flops")}})
    grid.to_parquet(tmp_path / "grid.parquet")
    of = grid_chunks(grid, 2)
    by_chunk = {c: [a for a in ids if of[a] == c] for c in (0, 1)}
    assert by_chunk[0] and by_chunk[1]
    paths = []
    for c in (0, 1):
        paths.append(tmp_path / f"{c}.parquet")
        _shard(by_chunk[c]).to_parquet(paths[-1])
    out = tmp_path / "lat.parquet"
    args = ["merge-latency", *map(str, paths), "--grid", str(tmp_path / "grid.parquet"),
            "--n-chunks", "2", "-o", str(out)]
    assert main(args) == 0
    _shard(by_chunk[1][:-1]).to_parquet(paths[1])          # truncated
    out.unlink()
    assert main(args) == 2 and not out.exists()
    assert "1.parquet" in capsys.readouterr().err
    _shard([]).to_parquet(paths[1])                         # zero rows
    assert main(args) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "1.parquet" in err and err.count("\n") == 1


def test_solver_schedule_off_by_tolerance_is_repaired(monkeypatch):
    """A backend answer that overlaps by less than its tolerance (seen with a MILP on a
    zoo epilogue) is repaired into a feasible schedule, never raised."""
    from phaze.sched import solve as solve_mod
    from phaze.sched.backends import RawSolution

    p = SchedProblem(("vc", "vc", "tc"), (1e-7, 1.0, 0.3), (1e-7, 0.5, 0.2), ((2, 1),), 1, 2)
    raw = RawSolution(True, True, [0.5 - 1e-9, 0.5, 0.0], ["single", "intra", "intra"],
                      [1e-7, 0.5, 0.2], bound_s=0.7, solver_status="fake", slack_s=1e-6)
    monkeypatch.setattr(solve_mod, "run_backend_inprocess", lambda *a, **k: raw)
    res = solve_mod.solve_problem(p, "cpsat", isolate=False, shortcut=False)
    check_schedule(p, res.schedule())
    assert res.makespan_s == pytest.approx(0.7 + 1e-7, rel=1e-9)
