"""Problem analysis shared by the formulations: dominated modes, effective capacities,
heads/tails for variable bounds, incomparable pairs, and groups of identical ops."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from phaze.sched.heuristic import lower_bound_s
from phaze.sched.problem import SchedProblem, Schedule, topo_order, transitive_closure


@dataclass
class Prep:
    p: SchedProblem
    intra_ok: list[bool]        # intra mode worth considering (not dominated by single)
    cap: tuple[int, int]        # effective (tc, vc) capacities
    reach: np.ndarray           # transitive closure
    head: list[float]           # lower bound on the start (energetic_heads_tails)
    tail: list[float]           # lower bound on makespan - start, op included
    ub: float                   # heuristic makespan
    ident_pairs: list[tuple[int, int]]  # (i, j): some optimum has S_i <= S_j
    forced_intra: frozenset = frozenset()  # ops assumed intra (mode_fixing_bound only)
    _cache: dict = field(default_factory=dict)   # charged chains, beside lists

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

    def own(self, r: int) -> list[int]:
        """Single-mode demand of each op on class r (net ops: 0)."""
        return [self.demand(i, False)[r] for i in range(self.p.n)]

    def single_energy(self, r: int, dur) -> list[float]:
        """Per op, the class-r energy (units x time) charged in the energy row of class r
        while it runs in single mode, `dur` being the single-mode durations in any time
        unit (seconds, ticks): its own demand x dur, and for the ops of one chain
        (charged_chain) the cores left idle beside it too.

        While op v runs single, only ops incomparable with v can run beside it, none of
        them intra (an intra op takes every core of both classes), and each such op j
        covers at most own_j x min(dur_j, dur_v) of v's window. So at least
        cap x dur_v - own_v x dur_v - sum_j own_j x min(dur_j, dur_v) units x time of
        class r idle during v. Idle time of distinct ops adds up only if they never
        overlap, i.e. along a CHAIN (pairwise ordered by the DAG). Generalises "blocking"
        ops (nothing beside: the full capacity), which closed GPT-3 175B's block backward
        on TPUv4, and sees a vector op that outlasts the GEMMs beside it."""
        own = self.own(r)
        e = [own[i] * dur[i] if i not in self.forced_intra else float("inf")
             for i in range(self.p.n)]
        for v in self.charged_chain(r):
            cover = sum(own[j] * min(dur[j], dur[v]) for j in self._beside()[v])
            e[v] = max(e[v], self.cap[r] * dur[v] - cover)
        return e

    def _beside(self) -> list[list[int]]:
        """Per op, the compute ops incomparable with it (those that may overlap it)."""
        if "beside" not in self._cache:
            p = self.p
            self._cache["beside"] = [
                [j for j in range(p.n) if j != v and p.core_class[j] != "net"
                 and j not in self.forced_intra and self.incomparable(v, j)]
                if p.core_class[v] != "net" else []
                for v in range(p.n)]
        return self._cache["beside"]

    def intra_energy(self, r: int) -> list[float]:
        """Class-r energy of each op in intra mode (inf where intra is not allowed)."""
        return [self.cap[r] * self.p.lat_all_s[i] if self.intra_ok[i] else float("inf")
                for i in range(self.p.n)]

    def charged_chain(self, r: int) -> list[int]:
        """The chain whose idle charges raise the static energy bound of class r most
        (any chain is valid; cached per class)."""
        if r not in self._cache:
            self._cache[r] = self._charged_chain(r)
        return self._cache[r]

    def _charged_chain(self, r: int) -> list[int]:
        # weight of an op: (what charging it adds to the static bound, its idle energy
        # in single mode, which still tightens the model's row when it runs single)
        p = self.p
        lat = p.lat_one_s
        own, intra_e, beside = self.own(r), self.intra_energy(r), self._beside()
        w = [(0.0, 0.0)] * p.n
        for v in range(p.n):
            if p.core_class[v] == "net":
                continue
            cover = sum(own[j] * min(lat[j], lat[v]) for j in beside[v])
            charged = max(own[v] * lat[v], self.cap[r] * lat[v] - cover)
            w[v] = (min(charged, intra_e[v]) - min(own[v] * lat[v], intra_e[v]),
                    charged - own[v] * lat[v])
        eligible = [x[1] > 0 and i not in self.forced_intra for i, x in enumerate(w)]
        best = list(w)
        prev = [-1] * p.n
        for i in topo_order(p.n, p.edges):
            if not eligible[i]:
                continue
            for j in range(p.n):
                if eligible[j] and self.reach[j, i]:
                    cand = (best[j][0] + w[i][0], best[j][1] + w[i][1])
                    if cand > best[i]:
                        best[i], prev[i] = cand, j
        if not any(eligible):
            return []
        end = max((i for i in range(p.n) if eligible[i]), key=lambda i: best[i])
        chain = []
        while end >= 0:
            chain.append(end)
            end = prev[end]
        return chain[::-1]

    def energy_bound_s(self) -> float:
        """Static form of the energy rows: per class, each op at its cheaper mode
        (single: single_energy; intra: the whole class for lat_all), over the capacity.
        A valid lower bound on the makespan."""
        best = 0.0
        for r in (0, 1):
            single = self.single_energy(r, self.p.lat_one_s)
            total = sum(min(a, b) for a, b in zip(single, self.intra_energy(r)))
            best = max(best, total / self.cap[r])
        return best

    def lower_bound_s(self) -> float:
        """Best static lower bound on the makespan: the plain bound (critical path, work
        per class), heads + tails with energetic adjustment, and the energy rows with idle
        charges."""
        ht = max((h + t for h, t in zip(self.head, self.tail)), default=0.0)
        return max(lower_bound_s(self.p), ht, self.energy_bound_s())

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


def min_energy(p: SchedProblem, intra_ok: list[bool], cap: tuple[int, int],
               forced_intra=frozenset()) -> list[list[float]]:
    """e[r][i]: the least units x seconds op i takes of resource r (tc, vc, link) over
    its allowed modes (single: its own demand x lat_one; intra: the whole class x
    lat_all; `forced_intra`: intra only)."""
    e = [[0.0] * p.n for _ in range(3)]
    for i in range(p.n):
        own = p.demand(i, "single")
        for r in range(3):
            single = own[r] * p.lat_one_s[i]
            # intra takes the whole of both classes, no link (net ops: intra_ok False)
            intra = (cap[r] if r < 2 else 0) * p.lat_all_s[i] if intra_ok[i] else float("inf")
            e[r][i] = intra if i in forced_intra else min(single, intra)
    return e


def energetic_heads_tails(p: SchedProblem, intra_ok: list[bool], cap: tuple[int, int],
                          reach: np.ndarray, forced_intra=frozenset()
                          ) -> tuple[list[float], list[float]]:
    """head[j] <= S_j and tail[j] <= C - S_j for every schedule (C its makespan).

    Besides the longest path (each op at its faster mode), the ancestors of j must all
    run before S_j: those with head >= h occupy resource r for at least W_r(h) units x
    seconds (min_energy) inside [h, S_j], so S_j >= h + W_r(h) / cap_r. Symmetrically
    the descendants of i with q >= x (q = tail - duration, the time left after them) run
    inside [E_i, C - x]. This sees siblings that compete for one class (two parallel
    GEMMs before an op, serialised on the cores whatever their modes), which the plain
    critical path misses: it closed most forward blocks where the list schedule was
    already optimal but the bound was 1-10 % short."""
    n = p.n
    d = [p.lat_all_s[i] if intra_ok[i] or i in forced_intra else p.lat_one_s[i]
         for i in range(n)]
    e = min_energy(p, intra_ok, cap, forced_intra)
    caps = (cap[0], cap[1], 1)
    order = topo_order(n, p.edges)
    preds, succs = p.preds(), p.succs()

    def energetic(base: float, items: list[tuple[float, int]]) -> float:
        # items (threshold, op): the ops at or past a threshold take their energy
        best = base
        items.sort(reverse=True)
        for r in range(3):
            w = 0.0
            for x, k in items:
                if e[r][k] > 0:
                    w += e[r][k]
                    best = max(best, x + w / caps[r])
        return best

    head = [0.0] * n
    for j in order:
        base = max((head[i] + d[i] for i in preds[j]), default=0.0)
        head[j] = energetic(base, [(head[i], i) for i in np.flatnonzero(reach[:, j])])
    # after[i] <= C - E_i (not tail - d: an op in its slower mode ends later)
    after = [0.0] * n
    for i in reversed(order):
        base = max((d[j] + after[j] for j in succs[i]), default=0.0)
        after[i] = energetic(base, [(after[j], j) for j in np.flatnonzero(reach[i])])
    return head, [d[i] + after[i] for i in range(n)]


def mode_fixing_bound(pr: Prep, level: float, rounds: int = 3) -> float:
    """A lower bound on the makespan by mode fixing: ops whose single mode alone forces
    a makespan >= `level` (head + lat_one + time after them; level = what would prove
    the list schedule optimal) are assumed intra and the static bound recomputed
    (`forced_intra`: they cover no vector op, take every core, and their intra
    durations lengthen heads and tails), for a few rounds. Valid for any level: a
    schedule either runs one of them single (makespan >= that op's single-mode bound)
    or runs them all intra (the recomputed bound holds), so the minimum of the two
    bounds it. Sees, e.g., a weight-gradient GEMM that could hide the last vector op
    only by running 4x longer on one core."""
    p = pr.p
    best, floor, forced, q = 0.0, float("inf"), frozenset(), pr
    for _ in range(rounds):
        d = [p.lat_all_s[i] if pr.intra_ok[i] or i in forced else p.lat_one_s[i]
             for i in range(p.n)]
        single_lb = {j: q.head[j] + p.lat_one_s[j] + (q.tail[j] - d[j])
                     for j in range(p.n) if pr.intra_ok[j] and j not in forced}
        more = frozenset(j for j, t in single_lb.items() if t >= level)
        if not more:
            break
        floor = min(floor, min(single_lb[j] for j in more))   # some of them single
        forced |= more
        # same closure, capacities and dominance pairs; new heads, tails and charges
        head, tail = energetic_heads_tails(p, pr.intra_ok, pr.cap, pr.reach, forced)
        q = dataclasses.replace(pr, head=head, tail=tail, forced_intra=forced, _cache={})
        best = min(floor, q.lower_bound_s())
    return best


def prepare(p: SchedProblem, ub: float) -> Prep:
    n = p.n
    # Intra is dominated when it is not faster: it needs at least single's resources.
    intra_ok = [p.has_intra(i) and p.lat_all_s[i] < p.lat_one_s[i] for i in range(n)]
    cap = p.effective_cores()
    reach = transitive_closure(p)
    head, tail = energetic_heads_tails(p, intra_ok, cap, reach)
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
