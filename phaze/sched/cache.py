"""Content-addressed on-disk cache of layer schedules.

Key = sha256 of the problem's content (latencies rounded to 9 significant digits, core
classes, deduplicated DAG, effective core counts; see SchedProblem.key) + formulation +
solver + solver settings. Arch ids, model names, HBM sizes and recomputation flags are
not part of the key, so identical layer problems are solved once across all of them.

Entries are JSON files <dir>/<k[:2]>/<k>.json written with phaze.atomic (a unique
temporary name in the same directory, renamed with os.replace: atomic on POSIX and on
NFS/Lustre within a directory), so concurrent writers of the same key are safe: the last rename wins and
both wrote the same content. Results that are not proven optimal are cached with their
status and gap (a rerun with the same settings would hit the same limit); a run with a
longer time limit has a different key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from phaze.atomic import write_text_atomic
from phaze.sched.problem import SchedProblem
from phaze.sched.solve import DEFAULT_SETTINGS, SolveResult, solve_problem

# bumped when the models change what a solve can prove within its limit (2: dominance
# rows, per-core model, idle charges), so that older time_limit entries are not reused
CACHE_VERSION = 2


class ScheduleCache:
    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.solves = 0      # exact/heuristic solves performed through this object
        self.hits = 0
        self._mem: dict[str, SolveResult] = {}   # dedup within a run, with or without a dir

    def key(self, p: SchedProblem, solver: str, formulation: str, settings: dict) -> str:
        st = {k: v for k, v in sorted(settings.items()) if not k.startswith("_")}
        body = json.dumps([CACHE_VERSION, p.key(), solver, formulation, st],
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> SolveResult | None:
        if self.root is None:
            return None
        try:
            d = json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        return SolveResult.from_dict(d)

    def put(self, key: str, res: SolveResult) -> None:
        if self.root is None:
            return
        write_text_atomic(self._path(key), json.dumps(res.to_dict()))

    def solve(self, p: SchedProblem, solver: str, formulation: str = "compact",
              settings: dict | None = None, **kw) -> SolveResult:
        settings = {**DEFAULT_SETTINGS, **(settings or {})}
        if p.n == 0:      # an empty pass (e.g. no op to recompute): nothing to schedule
            return SolveResult(0.0, 0.0, 0.0, "optimal", "none", formulation, 0.0)
        key = self.key(p, solver, formulation, settings)
        hit = self._mem.get(key) or self.get(key)
        if hit is not None:
            self.hits += 1
            hit.cache_hit = True
            return hit
        res = solve_problem(p, solver, formulation, settings, **kw)
        self.solves += 1
        self.put(key, res)
        self._mem[key] = res
        return res
