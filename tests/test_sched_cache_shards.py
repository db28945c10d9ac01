"""The ILP cache as a few immutable sqlite shards: one file per flush, self-checking
reads (a bad entry is a miss and is overwritten), no fallback cached, compaction."""

from __future__ import annotations

import json
import sqlite3

from phaze.sched import cache as cache_mod
from phaze.sched.cache import ScheduleCache, compact, shard_paths
from phaze.sched.problem import SchedProblem


def _probs(k=5):
    return [SchedProblem(("tc", "vc", "tc"), (1e-5 * (i + 1), 2e-5, 3e-5),
                         (0.5e-5, 1e-5, 1e-5), ((0, 1),), 2, 2) for i in range(k)]


def _tamper(root, fn):
    (path,) = shard_paths(root)
    con = sqlite3.connect(path)
    for key, value in con.execute("SELECT key, value FROM ilp").fetchall():
        con.execute("UPDATE ilp SET value=? WHERE key=?", (fn(json.loads(value)), key))
    con.commit()
    con.close()


def test_one_shard_per_job_and_hits(tmp_path):
    c = ScheduleCache(tmp_path)
    first = [c.solve(p, "heuristic") for p in _probs()]
    assert c.solves == 5 and not shard_paths(tmp_path)
    c.close()
    assert len(list(tmp_path.iterdir())) == 1           # one file for 5 ILPs
    c2 = ScheduleCache(tmp_path)
    c2.prefetch([(c2.key(p, "heuristic", "compact", cache_mod.DEFAULT_SETTINGS), p,
                  "heuristic", "compact") for p in _probs()])
    again = [c2.solve(p, "heuristic") for p in _probs()]
    assert c2.solves == 0 and c2.hits == 5
    assert [r.makespan_s for r in again] == [r.makespan_s for r in first]
    c2.close()
    assert len(shard_paths(tmp_path)) == 1              # nothing new to write


def test_bad_entries_are_misses_and_overwritten(tmp_path):
    p = _probs(1)[0]
    c = ScheduleCache(tmp_path)
    good = c.solve(p, "heuristic")
    c.close()
    for bad in (lambda d: "not json", lambda d: json.dumps({**d, "key": "x" * 64}),
                lambda d: json.dumps({**d, "makespan_s": d["makespan_s"] * 0.5}),
                lambda d: json.dumps({**d, "status": "great"}),
                lambda d: json.dumps({**d, "start_s": d["start_s"][:1]}),
                lambda d: json.dumps({**d, "makespan_s": "1"})):
        for f in tmp_path.iterdir():
            f.unlink()
        c = ScheduleCache(tmp_path)
        c.solve(p, "heuristic")
        c.close()
        _tamper(tmp_path, bad)
        c = ScheduleCache(tmp_path)
        res = c.solve(p, "heuristic")
        assert c.solves == 1 and c.rejected == 1 and res.makespan_s == good.makespan_s
        c.close()                                  # the re-solved entry: a newer shard
        c = ScheduleCache(tmp_path)
        assert c.solve(p, "heuristic").cache_hit and c.solves == 0


def test_fallback_never_cached_under_another_solver(tmp_path, monkeypatch):
    from phaze.sched.solve import SolveResult

    def fake(p, solver, formulation, settings, **kw):
        return SolveResult(1.0, 0.5, 0.5, "time_limit", "highs", formulation, 0.0,
                           [0.0] * p.n, ["single"] * p.n)
    monkeypatch.setattr(cache_mod, "solve_problem", fake)
    c = ScheduleCache(tmp_path)
    c.solve(_probs(1)[0], "gurobi")
    c.close()
    assert not shard_paths(tmp_path)


def test_compact_merges_shards(tmp_path):
    for p in _probs(4):
        c = ScheduleCache(tmp_path)
        c.solve(p, "heuristic")
        c.close()
    assert len(shard_paths(tmp_path)) == 4
    assert compact(tmp_path) == (4, 4)
    assert len(list(tmp_path.iterdir())) == 1
    c = ScheduleCache(tmp_path)
    assert all(c.solve(p, "heuristic").cache_hit for p in _probs(4)) and c.solves == 0
