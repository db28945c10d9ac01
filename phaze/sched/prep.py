"""Problem analysis shared by the formulations: dominated modes, effective capacities,
heads/tails for variable bounds, incomparable pairs, and groups of identical ops."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from phaze.sched.problem import SchedProblem, Schedule, topo_order, transitive_closure


@dataclass
class Prep:
    p: SchedProblem
    intra_ok: list[bool]        # intra mode worth considering (not dominated by single)
    cap: tuple[int, int]        # effective (tc, vc) capacities
    reach: np.ndarray           # transitive closure
    head: list[float]           # earliest possible start (best durations)
    tail: list[float]           # longest path from op start to the end, op included
    ub: float                   # heuristic makespan
    ident_pairs: list[tuple[int, int]]  # (i, j): some optimum has S_i <= S_j
    _units: dict = field(default_factory=dict)   # charge_units per class, computed once

    def demand(self, i: int, intra: bool) -> tuple[int, int]:
        """(tc, vc) units with the effective capacities."""
        c = self.p.core_class[i]
        if c == "net":
            return (0, 0)
        if intra:
            return self.cap
        return (int(c in ("tc", "tc+vc")), int(c in ("vc", "tc+vc")))

    def may_use(self, i: int, r: int) -> bool:
        return self.demand(i, False)[r] > 0 or (self.intra_ok[i] and self.demand(i, True)[r] > 0)

    def charge_units(self, r: int) -> dict[int, int]:
        """Units of class r to charge per unit of single-mode duration, for the ops of one
        chain, in the energy row of class r (others are charged their own demand).

        While op v runs in single mode, only ops incomparable with v can run beside it,
        and none of them intra (an intra op takes every core of both classes). So class
        r uses at most dem_v + U_v units, U_v = the single-mode demands on r of the ops
        incomparable with v, and at least cap - dem_v - U_v units idle. Idle time of
        distinct ops adds up only if they never overlap, i.e. along a CHAIN (pairwise
        ordered by the DAG): the chain of largest idle energy is charged dem_v + idle_v
        units. Generalises "blocking" ops (U_v = 0, charged the full capacity), which
        closed GPT-3 175B's block backward on TPUv4.
        """
        if r not in self._units:
            self._units[r] = self._charge_units(r)
        return self._units[r]

    def _charge_units(self, r: int) -> dict[int, int]:
        p = self.p
        cap = self.cap[r]
        own = [self.demand(i, False)[r] if p.core_class[i] != "net" else 0
               for i in range(p.n)]
        idle = [0] * p.n
        for v in range(p.n):
            if p.core_class[v] == "net":
                continue
            beside = sum(own[j] for j in range(p.n)
                         if j != v and p.core_class[j] != "net" and self.incomparable(v, j))
            idle[v] = max(0, cap - own[v] - beside)
        w = [idle[i] * p.lat_one_s[i] for i in range(p.n)]
        best = [0.0] * p.n
        prev = [-1] * p.n
        for i in topo_order(p.n, p.edges):
            if w[i] <= 0:
                continue
            best[i] = w[i]
            for j in range(p.n):
                if w[j] > 0 and self.reach[j, i] and best[j] + w[i] > best[i]:
                    best[i], prev[i] = best[j] + w[i], j
        if not any(x > 0 for x in w):
            return {}
        end = max(range(p.n), key=lambda i: best[i])
        units = {}
        while end >= 0 and w[end] > 0:
            units[end] = own[end] + idle[end]
            end = prev[end]
        return units

    def energy_bound_s(self) -> float:
        """Static form of the energy rows: per class, each op at its cheaper mode
        (single: charged units x lat_one; intra: the whole class for lat_all), over the
        capacity. A valid lower bound on the makespan (see charge_units)."""
        p = self.p
        best = 0.0
        for r in (0, 1):
            units = self.charge_units(r)
            total = 0.0
            for i in range(p.n):
                if p.core_class[i] == "net":
                    continue
                w = p.lat_one_s[i] * units.get(i, self.demand(i, False)[r])
                if self.intra_ok[i]:
                    w = min(w, p.lat_all_s[i] * self.cap[r])
                total += w
            best = max(best, total / self.cap[r])
        return best

    def respect_dominance(self, s: Schedule) -> Schedule:
        """The same schedule with dominated pairs swapped (start and mode), so that it
        satisfies every S_a <= S_b of ident_pairs (a warm start the model accepts).
        Each swap keeps feasibility and removes inversions (see prepare), so this ends."""
        start, mode = list(s.start_s), list(s.mode)
        for _ in range(self.p.n ** 2 + 1):
            bad = [(a, b) for a, b in self.ident_pairs if start[a] > start[b]]
            if not bad:
                break
            a, b = bad[0]
            start[a], start[b] = start[b], start[a]
            mode[a], mode[b] = mode[b], mode[a]
        return Schedule(start, mode)

    def incomparable(self, i: int, j: int) -> bool:
        return not (self.reach[i, j] or self.reach[j, i])


def prepare(p: SchedProblem, ub: float) -> Prep:
    n = p.n
    # Intra is dominated when it is not faster: it needs at least single's resources.
    intra_ok = [p.has_intra(i) and p.lat_all_s[i] < p.lat_one_s[i] for i in range(n)]
    cap = p.effective_cores()
    reach = transitive_closure(p)
    d = [p.best_duration(i) for i in range(n)]
    preds, succs = p.preds(), p.succs()
    order = topo_order(n, p.edges)
    head = [0.0] * n
    for j in order:
        head[j] = max((head[i] + d[i] for i in preds[j]), default=0.0)
    tail = [0.0] * n
    for i in reversed(order):
        tail[i] = d[i] + max((tail[j] for j in succs[i]), default=0.0)
    # Dominance (symmetry) breaking: ops a, b of equal class and latencies, incomparable,
    # with anc(a) <= anc(b) and desc(a) >= desc(b). Swapping a and b (start and mode)
    # in a schedule where b starts first keeps it feasible (a's preds are b's ancestors,
    # b's succs are a's descendants), and each swap removes inversions of a linear
    # extension of this (index-tie-broken) order, so some optimum has S_a <= S_b for
    # every such pair at once. Identical heads are the case anc(a) = anc(b).
    anc = [frozenset(np.flatnonzero(reach[:, i]).tolist()) for i in range(n)]
    desc = [frozenset(np.flatnonzero(reach[i]).tolist()) for i in range(n)]
    groups: dict = {}
    for i in range(n):
        groups.setdefault((p.core_class[i], p.lat_one_s[i],
                           p.lat_all_s[i] if p.has_intra(i) else None), []).append(i)
    ident = []
    for group in groups.values():
        for a in group:
            for b in group:
                if a == b or reach[a, b] or reach[b, a]:
                    continue
                if anc[a] <= anc[b] and desc[a] >= desc[b] and (
                        anc[a] != anc[b] or desc[a] != desc[b] or a < b):
                    ident.append((a, b))
    return Prep(p, intra_ok, cap, reach, head, tail, ub, ident)
