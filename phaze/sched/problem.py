"""The per-layer scheduling problem (REFERENCE.md section 5), independent of any model.

n ops, each with a core class:
  tc     one tensor core          vc   one vector core
  tc+vc  one TC and one VC (GEMM with a fused vector epilogue)
  net    a TP collective on the link (capacity 1, uses no core)

An op with a core class runs in one of two modes:
  single  on ONE core of its class (one TC and one VC for tc+vc), latency lat_one_s[i],
          overlapping freely with other single-core ops on other cores;
  intra   on ALL cores, exclusively (nothing else runs on either class meanwhile),
          latency lat_all_s[i].
A net op has one mode (single, latency lat_one_s[i]) and occupies the link only; it may
overlap any compute op, an exclusive one included (it uses the link, not cores).

As a multi-mode resource-constrained project scheduling problem with three resources
(TC capacity n_tc, VC capacity n_vc, link capacity 1), the demands are:
  single: tc (1,0,0)  vc (0,1,0)  tc+vc (1,1,0)  net (0,0,1);  intra: (n_tc, n_vc, 0).
With identical cores, any schedule meeting these cumulative capacities can be given a
concrete core assignment (interval-graph colouring), so no per-core variables are needed.
Objective: minimise the makespan, subject to the precedence edges (a DAG).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CORE_CLASSES = ("tc", "vc", "tc+vc", "net")
MODES = ("single", "intra")
# relative tolerance used for feasibility checks of schedules (floating point slack)
FEAS_RTOL = 1e-9


@dataclass(frozen=True)
class SchedProblem:
    core_class: tuple[str, ...]
    lat_one_s: tuple[float, ...]
    lat_all_s: tuple[float, ...]
    edges: tuple[tuple[int, int], ...]     # (i, j): i must finish before j starts
    n_tc: int
    n_vc: int
    names: tuple[str, ...] = ()

    def __post_init__(self):
        n = len(self.core_class)
        if len(self.lat_one_s) != n or len(self.lat_all_s) != n:
            raise ValueError("core_class, lat_one_s and lat_all_s must have equal length")
        for c in self.core_class:
            if c not in CORE_CLASSES:
                raise ValueError(f"unknown core class {c!r}")
        if self.n_tc < 1 or self.n_vc < 1:
            raise ValueError("n_tc and n_vc must be >= 1")
        for a, b in zip(self.lat_one_s, self.lat_all_s):
            if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0:
                raise ValueError("latencies must be finite and >= 0")
        dag_order(n, self.edges)  # raises on a bad edge or a cycle
        if self.names and len(self.names) != n:
            raise ValueError("names must match ops")

    @property
    def n(self) -> int:
        return len(self.core_class)

    def has_intra(self, i: int) -> bool:
        return self.core_class[i] != "net"

    def duration(self, i: int, mode: str) -> float:
        return self.lat_all_s[i] if mode == "intra" else self.lat_one_s[i]

    def demand(self, i: int, mode: str) -> tuple[int, int, int]:
        """(TC, VC, link) units used by op i in `mode`."""
        c = self.core_class[i]
        if c == "net":
            return (0, 0, 1)
        if mode == "intra":
            return (self.n_tc, self.n_vc, 0)
        return (int(c in ("tc", "tc+vc")), int(c in ("vc", "tc+vc")), 0)

    def best_duration(self, i: int) -> float:
        if not self.has_intra(i):
            return self.lat_one_s[i]
        return min(self.lat_one_s[i], self.lat_all_s[i])

    def preds(self) -> list[list[int]]:
        p: list[list[int]] = [[] for _ in range(self.n)]
        for i, j in self.edges:
            p[j].append(i)
        return p

    def succs(self) -> list[list[int]]:
        s: list[list[int]] = [[] for _ in range(self.n)]
        for i, j in self.edges:
            s[i].append(j)
        return s

    def to_dict(self) -> dict:
        return {
            "core_class": list(self.core_class), "lat_one_s": list(self.lat_one_s),
            "lat_all_s": list(self.lat_all_s), "edges": [list(e) for e in self.edges],
            "n_tc": self.n_tc, "n_vc": self.n_vc, "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SchedProblem":
        return cls(
            core_class=tuple(d["core_class"]), lat_one_s=tuple(float(x) for x in d["lat_one_s"]),
            lat_all_s=tuple(float(x) for x in d["lat_all_s"]),
            edges=tuple((int(a), int(b)) for a, b in d["edges"]),
            n_tc=int(d["n_tc"]), n_vc=int(d["n_vc"]), names=tuple(d.get("names") or ()),
        )

    def key(self, digits: int = 9) -> str:
        """Content hash: latencies rounded to `digits` significant digits, classes, DAG
        (deduplicated, sorted), core counts. Names are not part of the key."""
        def r(x: float) -> str:
            return f"{x:.{digits}e}"
        body = json.dumps({
            "c": list(self.core_class), "l1": [r(x) for x in self.lat_one_s],
            "la": [r(x) if self.has_intra(i) else "-" for i, x in enumerate(self.lat_all_s)],
            "e": sorted(set(self.edges)), "tc": self.effective_cores()[0],
            "vc": self.effective_cores()[1],
        }, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def effective_cores(self) -> tuple[int, int]:
        """Core counts beyond the number of single-mode users of a class change nothing
        but the intra latencies (already in lat_all_s), so they are capped for hashing."""
        n_tc_users = sum(c in ("tc", "tc+vc") for c in self.core_class)
        n_vc_users = sum(c in ("vc", "tc+vc") for c in self.core_class)
        return (min(self.n_tc, max(n_tc_users, 1)), min(self.n_vc, max(n_vc_users, 1)))


def dag_order(n: int, edges) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(topo_order(n, edges), predecessors of each op in edge order) of a DAG given as
    (i, j) pairs; memoised when `edges` is hashable (a tuple of tuples): every arch's
    problem of one layer pass has the same DAG. ValueError on an edge out of range or a
    self-loop, or on a cycle."""
    try:
        return _dag_order(n, edges)
    except TypeError:                 # unhashable edges (lists): not memoised
        return _dag_order.__wrapped__(n, edges)


@lru_cache(maxsize=4096)
def _dag_order(n: int, edges) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    for i, j in edges:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"bad edge {(i, j)}")
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        preds[j].append(i)
    return tuple(topo_order(n, edges)), tuple(tuple(p) for p in preds)


def topo_order(n: int, edges) -> list[int]:
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        succ[i].append(j)
        indeg[j] += 1
    ready = [i for i in range(n) if indeg[i] == 0]
    out: list[int] = []
    while ready:
        i = ready.pop()
        out.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if len(out) != n:
        raise ValueError("precedence graph has a cycle")
    return out


def transitive_closure(p: SchedProblem) -> np.ndarray:
    """reach[i, j] = True iff i precedes j (directly or through a chain)."""
    n = p.n
    reach = np.zeros((n, n), dtype=bool)
    succ = p.succs()
    for i in reversed(topo_order(n, p.edges)):
        for j in succ[i]:
            reach[i, j] = True
            reach[i] |= reach[j]
    return reach


@dataclass
class Schedule:
    start_s: list[float]
    mode: list[str]           # "single" | "intra" per op ("single" for net ops)

    def end_s(self, p: SchedProblem) -> list[float]:
        return [s + p.duration(i, m) for i, (s, m) in enumerate(zip(self.start_s, self.mode))]

    def makespan(self, p: SchedProblem) -> float:
        return max(self.end_s(p), default=0.0)


def check_schedule(p: SchedProblem, s: Schedule, rtol: float = FEAS_RTOL) -> None:
    """Raise ValueError if `s` violates precedence or a capacity (sweep over events)."""
    if len(s.start_s) != p.n or len(s.mode) != p.n:
        raise ValueError("schedule length mismatch")
    ends = s.end_s(p)
    scale = max(max(ends, default=0.0), 1e-300)
    eps = rtol * scale
    for i, m in enumerate(s.mode):
        if m not in MODES or (m == "intra" and not p.has_intra(i)):
            raise ValueError(f"op {i}: bad mode {m}")
        if s.start_s[i] < -eps:
            raise ValueError(f"op {i} starts before 0")
    for i, j in p.edges:
        if s.start_s[j] < ends[i] - eps:
            raise ValueError(f"precedence {i}->{j} violated: {s.start_s[j]} < {ends[i]}")
    cap = (p.n_tc, p.n_vc, 1)
    # usage is piecewise constant; check at every start time (intervals half-open, shrunk by eps)
    for t in sorted(set(s.start_s)):
        use = [0, 0, 0]
        for i in range(p.n):
            if s.start_s[i] - eps <= t < ends[i] - eps and ends[i] - s.start_s[i] > eps:
                d = p.demand(i, s.mode[i])
                for r in range(3):
                    use[r] += d[r]
        for r in range(3):
            if use[r] > cap[r]:
                raise ValueError(f"capacity of resource {('tc', 'vc', 'link')[r]} exceeded at t={t}")


def compact(p: SchedProblem, s: Schedule, dur: list[float] | None = None,
            slack_s: float | None = None) -> Schedule:
    """Left-justify a feasible schedule using exact latencies.

    Builds the interval order of `s` (i -> j when i ends no later than j starts, measured
    with the durations `dur` that produced `s`, e.g. rounded-up integer ticks) and takes
    earliest starts over it with the exact latencies of `p`. Ops that were unordered
    overlapped pairwise in `s`, so (Helly property of intervals) they were all active at
    one moment of `s`, and any set running together in the result is such a set: the
    result respects every capacity, and no start moves later when exact durations are no
    longer than `dur`.
    """
    n = p.n
    exact = [p.duration(i, s.mode[i]) for i in range(n)]
    dur = exact if dur is None else dur
    ends_in = [s.start_s[i] + dur[i] for i in range(n)]
    scale = max(max(ends_in, default=0.0), 1e-300)
    eps = 1e-9 * scale if slack_s is None else slack_s
    order = sorted(range(n), key=lambda i: (s.start_s[i], ends_in[i]))
    start = [0.0] * n
    reach_edges = set(p.edges)
    for a, j in enumerate(order):
        t = 0.0
        for i in order[:a]:
            if ends_in[i] <= s.start_s[j] + eps or (i, j) in reach_edges:
                t = max(t, start[i] + exact[i])
        start[j] = t
    return Schedule(start_s=start, mode=list(s.mode))
