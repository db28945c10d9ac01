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

    def blocking_chain(self, r: int) -> set[int]:
        """Ops whose whole duration can be charged at the full capacity of class r.

        Op i "blocks" r if no op that could overlap it uses r: every other op with a
        single-mode demand on r is ordered with i by the DAG (an intra op never overlaps
        a compute op). Class r then idles, apart from i, while i runs. Two blocking ops
        may still overlap each other, so only a CHAIN of them (pairwise ordered, hence
        disjoint in time) is charged: the heaviest chain by best-mode duration.
        """
        p = self.p
        blk = [p.core_class[i] != "net" and not any(
            j != i and self.demand(j, False)[r] > 0 and self.incomparable(i, j)
            for j in range(p.n)) for i in range(p.n)]
        w = [p.best_duration(i) for i in range(p.n)]
        best = [0.0] * p.n
        prev = [-1] * p.n
        for i in topo_order(p.n, p.edges):
            if not blk[i]:
                continue
            best[i] = w[i]
            for j in range(p.n):
                if blk[j] and self.reach[j, i] and best[j] + w[i] > best[i]:
                    best[i], prev[i] = best[j] + w[i], j
        if not any(blk):
            return set()
        end = max(range(p.n), key=lambda i: best[i])
        chain = set()
        while end >= 0 and blk[end]:
            chain.add(end)
            end = prev[end]
        return chain

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
