"""Content-addressed on-disk cache of layer schedules: a few sqlite shards per directory.

Key = sha256 of the problem's content (latencies rounded to 9 significant digits, core
classes, deduplicated DAG, effective core counts; see SchedProblem.key) + formulation +
solver + solver settings. Arch ids, model names, HBM sizes and recomputation flags are
not part of the key, so identical layer problems are solved once across all of them.

Layout: <dir>/shard-*.sqlite, each one table (key TEXT PRIMARY KEY, value TEXT = the
SolveResult as JSON). A shard is written once and never modified: a process buffers its
new results in memory and writes them as one new shard (sqlite to a temporary name in the
same directory, then os.replace) when it ends (flush() / close(), also at interpreter
exit) and at most every FLUSH_EVERY_S seconds, so a job writes one file (a few for jobs
longer than that) instead of one file per ILP. Readers open shards read-only and
`immutable`, without sqlite's file locks, which are unreliable on NFS/Lustre: concurrent
writers never touch the same file, so the cache is safe on a shared filesystem.
compact() merges every shard into one (first a new file, then the old ones are unlinked;
a reader that listed an unlinked shard sees a miss), so the files a sweep leaves stay
bounded: `phaze cache-compact DIR` (the workflow's `cache_compact` rule) and any writer
that finds more than MAX_SHARDS shards run it.

Entries are checked on read: the stored key, every field's type, a known status, the
solver and formulation of the key, lower bound <= makespan, the gap, and (when the
problem is at hand) the stored schedule re-timed with check_schedule to the stored
makespan. Anything else is a miss, solved again and written to a newer shard (newer
shards win). Results that are not proven optimal are cached with their status and gap
(a rerun with the same settings would hit the same limit; a longer limit is another key);
a fallback result (another solver after a licence failure, the list schedule after a
backend crash) is never cached under the requested solver's key.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import uuid
import weakref
from pathlib import Path

from phaze.sched.problem import SchedProblem, Schedule, check_schedule
from phaze.sched.solve import DEFAULT_SETTINGS, SolveResult, solve_problem

# bumped when the models change what a solve can prove within its limit (2: dominance
# rows, per-core model, idle charges), so that older time_limit entries are not reused
CACHE_VERSION = 2
FLUSH_EVERY_S = 600.0        # a killed job loses at most this much solving
MAX_SHARDS = 256             # more shards than this in a directory: a writer compacts
_STATUSES = ("optimal", "time_limit", "heuristic")
_FIELDS = {"makespan_s": float, "lower_bound_s": float, "gap": float, "status": str,
           "solver": str, "formulation": str, "seconds": float, "start_s": list, "mode": list}
_PENDING: dict[str, dict] = {}
_LOCK = threading.Lock()
_OPEN: "weakref.WeakSet[ScheduleCache]" = weakref.WeakSet()


def _flush_all() -> None:
    for c in list(_OPEN):
        try:
            c.flush()
        except Exception:     # pragma: no cover - at exit, never mask the real error
            pass


atexit.register(_flush_all)


def shard_paths(root) -> list[Path]:
    """The shards of a cache directory, newest first (names carry a time stamp)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(root.glob("shard-*.sqlite"), key=lambda p: p.name, reverse=True)


def _open_ro(path: Path):
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def _write_shard(root: Path, entries: dict) -> Path:
    """One new immutable shard with `entries` {key: json text}, written atomically."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.sqlite"
    tmp = root / f".{name}.tmp"
    try:
        con = sqlite3.connect(tmp)
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE ilp (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.executemany("INSERT OR REPLACE INTO ilp VALUES (?, ?)", entries.items())
        con.commit()
        con.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, root / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return root / name


def compact(root) -> tuple[int, int]:
    """Merge every shard of `root` into one (newer shards win); (shards merged, entries)."""
    paths = shard_paths(root)
    if len(paths) <= 1:
        return len(paths), 0
    merged: dict = {}
    used = []
    for path in reversed(paths):            # oldest first: newer entries overwrite
        try:
            con = _open_ro(path)
            merged.update(con.execute("SELECT key, value FROM ilp").fetchall())
            con.close()
            used.append(path)
        except sqlite3.Error:
            continue                         # unlinked by another compaction, or broken
    _write_shard(Path(root), merged)
    for path in used:
        path.unlink(missing_ok=True)
    return len(used), len(merged)


def answers(produced_by: str, requested: str) -> bool:
    """Whether a result produced by `produced_by` answers a request for `requested`: the
    solver itself, or the pipeline's proof before any backend ran (the same for every
    solver). A fallback (CBC for an unlicensed Gurobi, the list schedule after a crash)
    does not."""
    from phaze.sched.solve import PROVEN_BEFORE_BACKEND

    return produced_by == requested or produced_by in PROVEN_BEFORE_BACKEND


def valid_entry(d, key: str, solver: str | None = None, formulation: str | None = None,
                p: SchedProblem | None = None) -> SolveResult | None:
    """The SolveResult of a stored entry, or None when anything about it is off."""
    try:
        if not isinstance(d, dict) or d.get("key") != key:
            return None
        for f, t in _FIELDS.items():
            v = d[f]
            if t is float and (isinstance(v, bool) or not isinstance(v, (int, float))
                               or not math.isfinite(v)):
                return None
            if t is not float and not isinstance(v, t):
                return None
        if d["status"] not in _STATUSES or d["makespan_s"] < 0:
            return None
        if solver is not None and not answers(d["solver"], solver):
            return None
        if formulation is not None and d["status"] != "heuristic" \
                and d["formulation"] != formulation:
            return None
        if d["lower_bound_s"] > d["makespan_s"] * (1 + 1e-9) + 1e-300 or not 0 <= d["gap"] <= 1:
            return None
        res = SolveResult.from_dict(d)
        if p is not None:
            if len(res.start_s) != p.n or len(res.mode) != p.n:
                return None
            sched = Schedule([float(x) for x in res.start_s], [str(m) for m in res.mode])
            check_schedule(p, sched)
            ms = sched.makespan(p)
            if abs(ms - res.makespan_s) > 1e-9 * max(ms, res.makespan_s, 1e-300):
                return None
        return res
    except (KeyError, TypeError, ValueError):
        return None


class ScheduleCache:
    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.solves = 0      # exact/heuristic solves performed through this object
        self.hits = 0
        self.rejected = 0    # stored entries that failed the checks (re-solved)
        self.shards_written = 0
        self._mem: dict[str, SolveResult] = {}   # dedup within a run, with or without a dir
        # new entries not yet in a shard, shared by the caches of one directory in this
        # process (one sees what another solved before either flushes)
        self._pending: dict[str, str] = (_PENDING.setdefault(str(self.root.resolve()), {})
                                         if self.root else {})
        self._last_flush = time.monotonic()
        self._cons: list | None = None
        self._looked_up: set = set()             # keys prefetch() already searched for
        _OPEN.add(self)

    def key(self, p: SchedProblem, solver: str, formulation: str, settings: dict) -> str:
        st = {k: v for k, v in sorted(settings.items()) if not k.startswith("_")}
        body = json.dumps([CACHE_VERSION, p.key(), solver, formulation, st],
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    # ---- reading ------------------------------------------------------------------
    def _connections(self) -> list:
        if self._cons is None:
            self._cons = []
            for path in shard_paths(self.root) if self.root else []:
                try:
                    con = _open_ro(path)
                    con.execute("SELECT 1 FROM ilp LIMIT 1")
                    self._cons.append(con)
                except sqlite3.Error:
                    continue
        return self._cons

    def _stored(self, keys: list[str]) -> dict[str, list]:
        """{key: [parsed entries, newest shard first]} of the keys found."""
        out: dict = {}
        for con in self._connections():
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                try:
                    got = con.execute(f"SELECT key, value FROM ilp WHERE key IN "
                                      f"({','.join('?' * len(part))})", part).fetchall()
                except sqlite3.Error:
                    break
                for k, v in got:
                    try:
                        out.setdefault(k, []).append(json.loads(v))
                    except ValueError:
                        out.setdefault(k, []).append(None)
        return out

    def get(self, key: str, p: SchedProblem | None = None, solver: str | None = None,
            formulation: str | None = None) -> SolveResult | None:
        text = self._pending.get(key)
        if text is not None:
            return valid_entry(json.loads(text), key, solver, formulation, p)
        if self.root is None:
            return None
        for d in self._stored([key]).get(key, []):
            res = valid_entry(d, key, solver, formulation, p)
            if res is not None:
                return res
            self.rejected += 1
        return None

    def prefetch(self, requests) -> None:
        """Look many (key, problem, solver, formulation) up at once (one query per shard
        per 500 keys) and keep the valid hits in memory for solve()."""
        if self.root is None:
            return
        want = {k: (p, s, f) for k, p, s, f in requests if k not in self._mem}
        stored = self._stored(list(want))
        self._looked_up.update(want)
        for k, entries in stored.items():
            p, s, f = want[k]
            for d in entries:
                res = valid_entry(d, k, s, f, p)
                if res is not None:
                    self._mem[k] = res
                    break
                self.rejected += 1

    # ---- writing ------------------------------------------------------------------
    def put(self, key: str, res: SolveResult) -> None:
        if self.root is None:
            return
        text = json.dumps({**res.to_dict(), "cache_hit": False, "key": key},
                          separators=(",", ":"))
        with _LOCK:
            self._pending[key] = text
        if time.monotonic() - self._last_flush > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries as one new shard (nothing when there are none)."""
        self._last_flush = time.monotonic()
        with _LOCK:               # the pending dict is shared by the caches of a directory
            entries = dict(self._pending)
            self._pending.clear()
        if self.root is None or not entries:
            return
        try:
            _write_shard(self.root, entries)
        except BaseException:
            with _LOCK:
                for k, v in entries.items():
                    self._pending.setdefault(k, v)
            raise
        self.shards_written += 1
        if len(shard_paths(self.root)) > MAX_SHARDS:
            compact(self.root)

    def __del__(self):
        try:
            self.flush()
        except Exception:     # pragma: no cover - never raise from a finaliser
            pass

    def close(self) -> None:
        self.flush()
        for con in self._cons or []:
            con.close()
        self._cons = None

    # ---- solving ------------------------------------------------------------------
    def solve(self, p: SchedProblem, solver: str, formulation: str = "compact",
              settings: dict | None = None, key: str | None = None, **kw) -> SolveResult:
        settings = {**DEFAULT_SETTINGS, **(settings or {})}
        if p.n == 0:      # an empty pass (e.g. no op to recompute): nothing to schedule
            return SolveResult(0.0, 0.0, 0.0, "optimal", "none", formulation, 0.0)
        key = key or self.key(p, solver, formulation, settings)
        hit = self._mem.get(key)
        if hit is None and self.root is not None and key not in self._looked_up:
            hit = self.get(key, p, solver, formulation)
        if hit is not None:
            self.hits += 1
            hit.cache_hit = True
            self._mem[key] = hit
            return hit
        res = solve_problem(p, solver, formulation, settings, **kw)
        self.solves += 1
        self._mem[key] = res
        # a fallback (another solver after a licence failure, the list schedule after a
        # crash) is not what this key asks for: used, never stored under it
        if answers(res.solver, solver):
            self.put(key, res)
        return res
