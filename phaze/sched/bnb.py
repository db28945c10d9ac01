"""Chronological branch and bound: proves (or improves) a makespan where the solvers'
relaxations are weak.

Why: on the packing-like backward blocks the optimum is the work bound plus the vector
time that cannot be hidden. Hiding a vector op needs single-core GEMMs of two or three
lengths to tile every core exactly around it; any misalignment leaves cores idle for far
longer than the vector op. CP-SAT's bound never leaves the static bound on them (10-60 s).
Here idle time is final once the clock passes it, so the energy bound from the current
time, `t + remaining work / capacity`, sees every misalignment as soon as it happens.

Search: decision points are 0 and the end times of ops; at each, choose which eligible
ops start (and in which mode). Every semi-active schedule (each op starting at 0 or at
the end of another op) is reachable, and some optimum is semi-active. Pruning:
- bounds: C >= S_i + tail_i (running and unstarted ops, prep's tails), and per resource
  C >= t + (remaining work: least energy per unstarted op, with the idle charges of the
  charged chain) / capacity;
- left shift: an op that was eligible and fitted at t but was left out may not start at
  the very next decision point in that mode (starting it at t is no worse);
- dominance rows (prep.ident_pairs): b starts no earlier than a;
- memo: a state (done ops, running ops with their remaining times) already explored at
  an earlier or equal time under no more left-shift bans is not explored again
  (shifting this state's completions earlier completes the stored one).
Among the optimal schedules, one minimising the sum of starts (then the number of
dominance inversions) survives every rule, so a finished search proves its incumbent.
Checked against the exhaustive enumeration of the tests.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from phaze.sched.prep import Prep, min_energy
from phaze.sched.problem import Schedule

REL_EPS = 1e-12     # relative rounding of remaining times in memo keys
# the search recurses once per op considered at a decision point: up to n (n + 2) deep;
# beyond this size it is not tried (the zoo's largest layer has 27 ops)
MAX_OPS = 64
MEMO_MAX = 1_000_000   # states remembered (~200 bytes each); beyond, new ones are not


@dataclass
class BnbResult:
    proven: bool             # the search finished: best is optimal (or no better exists)
    best: Schedule | None    # a schedule better than the target, if one was found
    best_s: float            # its makespan (the target if none)
    bound_s: float           # proven lower bound on the optimum (0 unless proven)
    nodes: int
    seconds: float


class _Stop(Exception):
    pass


def branch_and_bound(pr: Prep, target_s: float, time_limit_s: float) -> BnbResult:
    """Search for a schedule with makespan < target_s (strictly better than a known one),
    improving on every one it finds. proven=True: no schedule beats best_s (target_s
    when nothing was found) by more than relative 1e-9."""
    n = pr.p.n
    t_start = time.perf_counter()
    search = _Search(pr, target_s, t_start + time_limit_s)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, (n + 2) ** 2 + 1000))
    try:
        if n > MAX_OPS:
            raise _Stop
        search.visit(0.0, 0, 0, (), 0, sum(search.e0), sum(search.e1), sum(search.e2))
        proven = True
    except (_Stop, RecursionError):
        proven = False
    finally:
        sys.setrecursionlimit(old_limit)
    # a finished search pruned only what could not beat best - eps
    bound = search.best_s - search.eps if proven else 0.0
    return BnbResult(proven, search.best, search.best_s, bound, search.nodes,
                     time.perf_counter() - t_start)


def _mode_table(pr: Prep) -> list:
    """Per op, its modes: (ban bit, intra?, duration, tc, vc, link demand); intra first."""
    p = pr.p
    c0, c1 = pr.cap
    modes = []
    for i in range(p.n):
        d1 = pr.demand(i, False)
        m = [(1 << (2 * i), False, p.lat_one_s[i], d1[0], d1[1],
              int(p.core_class[i] == "net"))]
        if pr.intra_ok[i]:
            m.insert(0, (1 << (2 * i + 1), True, p.lat_all_s[i], c0, c1, 0))
        modes.append(m)
    return modes


def _least_energy(pr: Prep) -> list:
    """Least energy per resource (TC, VC, link) and op; on TC and VC with the idle charges
    of the charged chain (the idle during an unstarted chain op lies after t, beside the
    work)."""
    p = pr.p
    emin = min_energy(p, pr.intra_ok, pr.cap)
    for r in (0, 1):
        emin[r] = [min(a, b) for a, b in zip(pr.single_energy(r, p.lat_one_s),
                                             pr.intra_energy(r))]
    return emin


class _Search:
    """One run of the search: the problem's tables, the incumbent (best_s, best), the
    memo and the partial schedule (start, mode_of) of the branch being explored."""

    def __init__(self, pr: Prep, target_s: float, deadline: float):
        p = pr.p
        n = p.n
        self.deadline = deadline
        self.preds_mask = [0] * n
        for i, j in p.edges:
            self.preds_mask[j] |= 1 << i
        self.must_before = [0] * n            # dominance rows: b needs a started
        for a, b in pr.ident_pairs:
            self.must_before[b] |= 1 << a
        # at a decision point a row's first op is considered before its second (both may
        # start)
        self.rank = _row_rank(n, pr.ident_pairs)
        self.c0, self.c1 = pr.cap
        self.modes = _mode_table(pr)
        self.e0, self.e1, self.e2 = _least_energy(pr)
        self.tail, self.head = pr.tail, pr.head
        self.ops = range(n)
        scale = max(target_s, 1e-30)
        self.eps = 1e-9 * scale
        self.key_unit = scale * REL_EPS
        self.best_s = target_s
        self.best: Schedule | None = None
        self.nodes = 0
        self.memo: dict = {}
        self.start = [0.0] * n
        self.mode_of = [False] * n
        self.all_started = (1 << n) - 1

    def visit(self, t, done, started, running, banned, rem0, rem1, rem2):
        """Decision point t: `running` = ((end, op, intra, tc, vc, link), ...) with end > t;
        rem*: least energy of the unstarted ops per resource."""
        self.nodes += 1
        if self.nodes & 511 == 0 and time.perf_counter() > self.deadline:
            raise _Stop
        if not running and started == self.all_started:
            if t < self.best_s - self.eps:
                self.best_s = t
                self.best = Schedule(list(self.start),
                                     ["intra" if m else "single" for m in self.mode_of])
            return
        limit = self.best_s - self.eps
        used = self._used_unless_pruned(t, running, limit, rem0, rem1, rem2)
        if used is None:
            return
        elig = self._eligible_unless_pruned(t, done, started, limit)
        if elig is None or self._seen(t, done, running, banned):
            return
        elig.sort(key=self.rank.__getitem__)
        self._branch(t, done, started, running, banned, elig, used, rem0, rem1, rem2)

    def _used_unless_pruned(self, t, running, limit, rem0, rem1, rem2):
        """Bound: C >= S_i + tail_i; per resource, t + remaining work / capacity. None when
        the bound reaches `limit`, else the units the running ops hold per resource."""
        start, tail = self.start, self.tail
        u0 = u1 = u2 = 0
        w0, w1, w2 = rem0, rem1, rem2
        for end, i, _, a0, a1, a2 in running:
            if start[i] + tail[i] >= limit:
                return None
            left = end - t
            u0 += a0
            u1 += a1
            u2 += a2
            w0 += a0 * left
            w1 += a1 * left
            w2 += a2 * left
        if t + w0 / self.c0 >= limit or t + w1 / self.c1 >= limit or t + w2 >= limit:
            return None
        return u0, u1, u2

    def _eligible_unless_pruned(self, t, done, started, limit):
        """The unstarted ops whose predecessors are done; None when some unstarted op
        cannot finish its tail before `limit`."""
        head, tail, preds_mask = self.head, self.tail, self.preds_mask
        elig = []
        for j in self.ops:
            if not started >> j & 1:
                if (head[j] if head[j] > t else t) + tail[j] >= limit:
                    return None
                if preds_mask[j] & done == preds_mask[j]:
                    elig.append(j)
        return elig

    def _seen(self, t, done, running, banned) -> bool:
        """Memo: True when this state was explored at an earlier or equal time under no
        more bans; else remember it (while the memo has room)."""
        eps = self.eps
        key = (done, tuple(sorted((i, intra, round((end - t) / self.key_unit))
                                  for end, i, intra, _, _, _ in running)))
        seen = self.memo.get(key)
        if seen is None and len(self.memo) < MEMO_MAX:
            seen = self.memo[key] = []
        for t0, ban0 in seen or ():
            if t0 <= t + eps and ban0 & ~banned == 0:
                return True
        if seen is not None:
            seen[:] = [(t0, b0) for t0, b0 in seen if not (t <= t0 and banned & ~b0 == 0)]
            seen.append((t, banned))
        return False

    def _branch(self, t, done, started, running, banned, elig, used, rem0, rem1, rem2):
        """Every choice of eligible ops (and modes) to start at t, each followed by a visit
        of the next decision point."""
        modes, must_before, start, mode_of = self.modes, self.must_before, self.start, self.mode_of
        c0, c1, e0, e1, e2 = self.c0, self.c1, self.e0, self.e1, self.e2
        visit = self.visit
        ne = len(elig)
        chosen: list = []

        def choose(k, u0, u1, u2, started_now, r0, r1, r2):
            if k == ne:
                new_running = running + tuple(chosen)
                if not new_running:
                    return
                t_next = min(x[0] for x in new_running)
                # left shift: an op left out that fits beside the chosen ones may not
                # start at the next decision point in that mode
                ban = 0
                for j in elig:
                    if not started_now >> j & 1:
                        for bit, _, _, a0, a1, a2 in modes[j]:
                            if u0 + a0 <= c0 and u1 + a1 <= c1 and u2 + a2 <= 1:
                                ban |= bit
                fin = 0
                keep = []
                for x in new_running:
                    if x[0] <= t_next:
                        fin |= 1 << x[1]
                    else:
                        keep.append(x)
                visit(t_next, done | fin, started_now, tuple(keep), ban, r0, r1, r2)
                return
            j = elig[k]
            if must_before[j] & started_now == must_before[j]:
                s0, s1, s2 = r0 - e0[j], r1 - e1[j], r2 - e2[j]
                for bit, intra, d, a0, a1, a2 in modes[j]:
                    if banned & bit or u0 + a0 > c0 or u1 + a1 > c1 or u2 + a2 > 1:
                        continue
                    start[j] = t
                    mode_of[j] = intra
                    chosen.append((t + d, j, intra, a0, a1, a2))
                    choose(k + 1, u0 + a0, u1 + a1, u2 + a2, started_now | 1 << j,
                           s0, s1, s2)
                    chosen.pop()
            choose(k + 1, u0, u1, u2, started_now, r0, r1, r2)

        choose(0, *used, started, rem0, rem1, rem2)


def _row_rank(n: int, pairs) -> list[int]:
    """Position of each op in a topological order of the dominance rows (a before b)."""
    succ = [[] for _ in range(n)]
    indeg = [0] * n
    for a, b in pairs:
        succ[a].append(b)
        indeg[b] += 1
    ready = [i for i in range(n) if not indeg[i]]
    rank = [0] * n
    k = 0
    while ready:
        ready.sort()
        i = ready.pop(0)
        rank[i] = k
        k += 1
        for j in succ[i]:
            indeg[j] -= 1
            if not indeg[j]:
                ready.append(j)
    if k != n:
        raise ValueError("dominance rows form a cycle")
    return rank
