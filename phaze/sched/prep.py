"""Problem analysis shared by the formulations: dominated modes, effective capacities,
heads/tails for variable bounds, incomparable pairs, and groups of identical ops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phaze.sched.problem import SchedProblem, topo_order, transitive_closure


@dataclass
class Prep:
    p: SchedProblem
    intra_ok: list[bool]        # intra mode worth considering (not dominated by single)
    cap: tuple[int, int]        # effective (tc, vc) capacities
    reach: np.ndarray           # transitive closure
    head: list[float]           # earliest possible start (best durations)
    tail: list[float]           # longest path from op start to the end, op included
    ub: float                   # heuristic makespan
    ident_pairs: list[tuple[int, int]]  # (i, j), i < j identical: impose S_i <= S_j

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

    def blocks_class(self, i: int, r: int) -> bool:
        """True if no op that could overlap compute op i uses class r: every other op
        using r in single mode is ordered with i by the DAG (an intra op never overlaps
        i). Then class r is idle apart from i while i runs: i's energy on r is the full
        capacity times its duration, whatever its mode."""
        p = self.p
        if p.core_class[i] == "net":
            return False
        return not any(j != i and self.demand(j, False)[r] > 0 and self.incomparable(i, j)
                       for j in range(p.n))

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
    sig = {}
    for i in range(n):
        key = (p.core_class[i], p.lat_one_s[i], p.lat_all_s[i],
               tuple(sorted(set(preds[i]))), tuple(sorted(set(succs[i]))))
        sig.setdefault(key, []).append(i)
    ident = []
    for group in sig.values():
        for a, b in zip(group, group[1:]):
            ident.append((a, b))
    return Prep(p, intra_ok, cap, reach, head, tail, ub, ident)
