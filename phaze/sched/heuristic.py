"""Lower bound and list-scheduling heuristic (serial schedule generation scheme).

The heuristic gives an upper bound, a warm start for the exact solvers, and the answer
when a solve hits its time limit. It runs a serial SGS (each op, in priority order, is
placed at the earliest time its predecessors and the free capacity allow, in whichever
mode finishes first) under several priority rules and keeps the best schedule.
"""

from __future__ import annotations

import bisect
import random

from phaze.sched.problem import SchedProblem, Schedule, dag_order, topo_order


def critical_path_s(p: SchedProblem, durations: list[float] | None = None) -> float:
    # default: each op's faster mode (SchedProblem.best_duration, inlined)
    d = durations or [one if c == "net" else min(one, all_)
                      for c, one, all_ in zip(p.core_class, p.lat_one_s, p.lat_all_s)]
    order, preds = dag_order(p.n, p.edges)
    finish = [0.0] * p.n
    for j in order:
        pj = preds[j]
        finish[j] = (max([finish[i] for i in pj]) if pj else 0.0) + d[j]
    return max(finish, default=0.0)


def lower_bound_s(p: SchedProblem) -> float:
    """max(critical path with each op's faster mode, TC work / n_tc, VC work / n_vc,
    link work). An op's work on a class is the cheaper of its modes: single uses 1 core
    for lat_one, intra uses every core of the class for lat_all."""
    tc_work = vc_work = link = 0.0
    for i, c in enumerate(p.core_class):
        if c == "net":
            link += p.lat_one_s[i]
            continue
        if c in ("tc", "tc+vc"):
            tc_work += min(p.lat_one_s[i], p.n_tc * p.lat_all_s[i])
        if c in ("vc", "tc+vc"):
            vc_work += min(p.lat_one_s[i], p.n_vc * p.lat_all_s[i])
    return max(critical_path_s(p), tc_work / p.n_tc, vc_work / p.n_vc, link)


class _Profile:
    """Resource usage over time as a step function: segment k is [t[k], t[k+1]) (the
    last one is open-ended and empty) with (tc, vc, link) units in use[k]."""

    def __init__(self, cap):
        self.cap = cap
        self.t: list[float] = [0.0]
        self.use: list[tuple[int, int, int]] = [(0, 0, 0)]

    def _fits(self, u, dem) -> bool:
        return u[0] + dem[0] <= self.cap[0] and u[1] + dem[1] <= self.cap[1] \
            and u[2] + dem[2] <= self.cap[2]

    def earliest(self, est: float, d: float, dem) -> float:
        """The earliest start >= est at which dem fits for d seconds."""
        if d <= 0:
            return est
        start = est
        k = bisect.bisect_right(self.t, start) - 1
        while True:
            j = k
            while j < len(self.t) and self.t[j] < start + d and self._fits(self.use[j], dem):
                j += 1
            if j == len(self.t) or self.t[j] >= start + d:
                return start
            # segment j conflicts: no start before its end can avoid it
            k = j + 1
            start = self.t[k]

    def _split(self, x: float) -> int:
        k = bisect.bisect_right(self.t, x) - 1
        if self.t[k] != x:
            k += 1
            self.t.insert(k, x)
            self.use.insert(k, self.use[k - 1])
        return k

    def add(self, t: float, d: float, dem) -> None:
        if d <= 0:
            return
        a, b = self._split(t), self._split(t + d)
        for k in range(a, b):
            u = self.use[k]
            self.use[k] = (u[0] + dem[0], u[1] + dem[1], u[2] + dem[2])


def serial_sgs(p: SchedProblem, priority: list[int], mode_rule: str = "greedy",
               modes: list[str] | None = None) -> Schedule:
    """Schedule ops in `priority` order (must be a topological order); `modes` fixes
    each op's mode (used to repair a solver schedule that is off by its tolerances)."""
    preds = p.preds()
    prof = _Profile((p.n_tc, p.n_vc, 1))
    start = [0.0] * p.n
    mode = ["single"] * p.n
    end = [0.0] * p.n
    for j in priority:
        est = max((end[i] for i in preds[j]), default=0.0)
        cand = ["single"]
        if modes is not None:
            cand = [modes[j]]
        elif p.has_intra(j):
            cand = {"greedy": ["single", "intra"], "single": ["single"],
                    "intra": ["intra"]}[mode_rule]
        best = None
        for m in cand:
            d = p.duration(j, m)
            t = prof.earliest(est, d, p.demand(j, m))
            if best is None or t + d < best[0] + best[1] - 1e-15:
                best = (t, d, m)
        t, d, m = best
        start[j], mode[j], end[j] = t, m, t + d
        prof.add(t, d, p.demand(j, m))
    return Schedule(start, mode)


def _priority_lists(p: SchedProblem, n_random: int, seed: int):
    succs = p.succs()
    preds = p.preds()
    d = [p.best_duration(i) for i in range(p.n)]
    tail = [0.0] * p.n
    for i in reversed(topo_order(p.n, p.edges)):
        tail[i] = d[i] + max((tail[j] for j in succs[i]), default=0.0)

    def topo_by(key):
        indeg = [len(set(preds[i])) for i in range(p.n)]
        ready = [i for i in range(p.n) if indeg[i] == 0]
        out = []
        seen_edges = set()
        while ready:
            ready.sort(key=key)
            i = ready.pop(0)
            out.append(i)
            for j in succs[i]:
                if (i, j) in seen_edges:
                    continue
                seen_edges.add((i, j))
                indeg[j] -= 1
                if indeg[j] == 0:
                    ready.append(j)
        return out

    yield topo_by(lambda i: (-tail[i], i))
    yield topo_by(lambda i: (-len(succs[i]), -tail[i], i))
    yield topo_by(lambda i: (i,))
    rng = random.Random(seed)
    for _ in range(n_random):
        w = [rng.uniform(0.7, 1.3) for _ in range(p.n)]
        yield topo_by(lambda i: (-tail[i] * w[i], i))


def list_schedule(p: SchedProblem, n_random: int = 8, seed: int = 0,
                  good_enough_s: float = 0.0) -> Schedule:
    """Best serial-SGS schedule over several priority rules and mode rules; stops at the
    first schedule no longer than `good_enough_s` (a proven bound's optimality level)."""
    if p.n == 0:
        return Schedule([], [])
    best, best_s = None, float("inf")
    for prio in _priority_lists(p, n_random, seed):
        for rule in ("greedy", "single", "intra"):
            s = serial_sgs(p, prio, rule)
            ms = s.makespan(p)
            if ms < best_s:
                best, best_s = s, ms
            if best_s <= good_enough_s:
                return best
    return best
