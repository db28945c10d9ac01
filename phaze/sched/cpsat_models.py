"""CP-SAT formulations in integer ticks (the CP-SAT counterpart of milp.py; solved by
backends/cpsat.py).

Time is integer ticks of tick_s = TICK_REL * UB / n (UB = heuristic makespan, n ops).
Each latency is rounded UP to whole ticks. Soundness:
- The schedule found is re-timed with the exact latencies (problem.compact), which can
  only move ops earlier, so the reported makespan is exact and <= T * tick_s.
- Bound: take a continuous optimum C*; re-time it over its own interval order with the
  rounded-up durations: every path of that order (at most n ops, not only DAG paths)
  gains < 1 tick per op, so a tick schedule of length <= C* + n * tick_s exists, i.e.
  C* >= (T_lb - n) * tick_s, with T_lb CP-SAT's proven bound in ticks. The reported
  lower bound is that value (error <= TICK_REL * UB).
The argument holds for any formulation whose tick model has exactly the feasible tick
schedules (and whose horizon admits that tick schedule): `compact` and `reference` below
share the grid; backends/cpsat.py gives both the same hint, solver parameters and result
extraction.

`compact`: per op one mandatory interval, or, when intra-op may pay off, two optional
intervals (single, intra) with exactly one present. TC and VC are cumulative resources
(intra demands the whole capacity, making it exclusive); the link is a no-overlap
resource.

`reference`: the published pairwise model (REFERENCE.md 5), row for row the same as
milp.build_reference, in CP-SAT's integer ticks. Variables: start S_i in [0, M] (no start windows), intra literal z_i where intra is not
dominated (as in every formulation), makespan C in [0, M], order literals x_ij for
EVERY ordered pair i != j, core-assignment literals a_irk (op i runs single-mode on
core k of class r). Rows, all plain linear (no intervals, no cumulative):
  C >= S_i + p_i;  S_j >= S_i + p_i for each DAG edge, and x_ij = 1 on it;
  x_ij + x_ji <= 1;  x_ij + x_jk - x_ik <= 1 for every triple (transitivity);
  S_j >= S_i + p_i - M (1 - x_ij) with the naive M = sum of each op's longest duration;
  sum_k a_irk = 1 - z_i for each class r op i uses in single mode;
  x_ij + x_ji >= a_irk + a_jrk - 1 (same core: ordered);  x_ij + x_ji >= z_u for u in
  {i, j} (an intra op excludes every compute op);  x_ij + x_ji >= 1 for two net ops.
Here p_i = d1_i + (da_i - d1_i) z_i. No symmetry breaking, no redundant rows. Ticks,
rounding and hint are the shared ones above, so the soundness argument holds:
M in ticks bounds a serial schedule of every op, so the horizon keeps a tick optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from phaze.sched.prep import Prep
from phaze.sched.problem import topo_order

TICK_REL = 1e-5


@dataclass
class TickGrid:
    """Integer time shared by the CP-SAT formulations."""
    tick_s: float
    depth: int               # longest chain of an interval order: up to every op (n)
    horizon: int             # ticks; UB rounded up plus the rounding slack of a chain
    d1: list[int]            # single-mode durations, ticks (rounded up)
    da: list[int | None]     # intra durations, ticks, None where intra is dominated

    def ticks(self, x_s: float) -> int:
        return int(math.ceil(x_s / self.tick_s - 1e-9))


# per-core sequencing only while it stays small (intervals = users x cores)
PER_CORE_MAX_INTERVALS = 1024


def _per_core_no_overlap(mdl, pr: Prep, S, d1, da, lits) -> None:
    """Redundant per-core model: each single-mode op of class r sits on one of its
    cap_r identical cores, a no-overlap resource shared with every intra interval.
    Disjunctive reasoning per core (edge finding, precedences) proves the packing-like
    layers that the cumulative alone leaves open (measured: the backward blocks of
    BERT-Large and Llama-2-7B on TPUv4, 10 s unproven -> < 1 s). Core symmetry is broken
    by labelling cores in order of the lowest op index they host: op i may use core k > 0
    only if some op j < i uses core k - 1."""
    p = pr.p
    n = p.n
    intra_ivs = [mdl.NewOptionalIntervalVar(S[i], da[i], S[i] + da[i], lits[i], f"A{i}")
                 for i in range(n) if lits[i] is not None]
    for r in (0, 1):
        cap = pr.cap[r]
        users = [i for i in range(n) if p.core_class[i] != "net" and pr.demand(i, False)[r]]
        if cap == 1 or len(users) <= cap or cap * len(users) > PER_CORE_MAX_INTERVALS:
            continue   # 1 core: already a no-overlap; fewer users than cores: no conflict
        x = {}
        for i in users:
            xs = [mdl.NewBoolVar(f"x{i}_{r}_{k}") for k in range(cap)]
            x.update({(i, k): xs[k] for k in range(cap)})
            if lits[i] is None:
                mdl.AddExactlyOne(xs)
            else:
                mdl.Add(sum(xs) + lits[i] == 1)
        for k in range(cap):
            ivs = [mdl.NewOptionalIntervalVar(S[i], d1[i], S[i] + d1[i], x[i, k],
                                              f"P{i}_{r}_{k}") for i in users]
            mdl.AddNoOverlap(ivs + intra_ivs)
            if k:
                for a, i in enumerate(users):
                    mdl.AddBoolOr([x[j, k - 1] for j in users[:a]] + [x[i, k].Not()])


def tick_grid(pr: Prep) -> TickGrid:
    p = pr.p
    depth = max(1, p.n)
    ub = pr.ub if pr.ub > 0 else 1.0
    tick = TICK_REL * ub / depth
    g = TickGrid(tick, depth, int(math.ceil(ub / tick)) + depth + 1, [], [])
    g.d1 = [g.ticks(p.lat_one_s[i]) for i in range(p.n)]
    g.da = [g.ticks(p.lat_all_s[i]) if pr.intra_ok[i] else None for i in range(p.n)]
    return g


@dataclass
class TickModel:
    """A built CP-SAT model: start and intra-literal variables per op, the makespan."""
    mdl: object
    S: list
    lits: list               # BoolVar (True = intra) or None per op
    cmax: object


def build_compact(pr: Prep, g: TickGrid, cp_model) -> TickModel:
    p = pr.p
    n = p.n
    d1, da, horizon, tick = g.d1, g.da, g.horizon, g.tick_s
    mdl = cp_model.CpModel()
    S, E, lits = [], [], []
    tc_iv, tc_dem, vc_iv, vc_dem, link_iv = [], [], [], [], []
    for i in range(n):
        lo = int(pr.head[i] / tick)
        s = mdl.NewIntVar(lo, horizon, f"S{i}")
        e = mdl.NewIntVar(0, horizon, f"E{i}")
        S.append(s)
        E.append(e)
        if p.core_class[i] == "net":
            link_iv.append(mdl.NewIntervalVar(s, d1[i], e, f"I{i}"))
            lits.append(None)
            continue
        dem1 = pr.demand(i, False)
        if da[i] is None:
            iv = mdl.NewIntervalVar(s, d1[i], e, f"I{i}")
            ivs = [(iv, dem1)]
            lits.append(None)
        else:
            z = mdl.NewBoolVar(f"z{i}")
            lits.append(z)
            iv1 = mdl.NewOptionalIntervalVar(s, d1[i], s + d1[i], z.Not(), f"I{i}s")
            iva = mdl.NewOptionalIntervalVar(s, da[i], s + da[i], z, f"I{i}a")
            mdl.Add(e == s + d1[i]).OnlyEnforceIf(z.Not())
            mdl.Add(e == s + da[i]).OnlyEnforceIf(z)
            ivs = [(iv1, dem1), (iva, pr.demand(i, True))]
        for iv, dem in ivs:
            if dem[0]:
                tc_iv.append(iv)
                tc_dem.append(dem[0])
            if dem[1]:
                vc_iv.append(iv)
                vc_dem.append(dem[1])
    for ivl, dem, cap in ((tc_iv, tc_dem, pr.cap[0]), (vc_iv, vc_dem, pr.cap[1])):
        if not ivl:
            continue
        if cap == 1:
            mdl.AddNoOverlap(ivl)
        elif sum(dem) > cap:
            mdl.AddCumulative(ivl, dem, cap)
    if len(link_iv) > 1:
        mdl.AddNoOverlap(link_iv)
    _per_core_no_overlap(mdl, pr, S, d1, da, lits)
    for i, j in set(p.edges):
        mdl.Add(S[j] >= E[i])
    for i, j in pr.ident_pairs:
        mdl.Add(S[i] <= S[j])
    cmax = mdl.NewIntVar(0, horizon, "C")
    mdl.AddMaxEquality(cmax, E) if n else None
    # Redundant rows for the LP relaxation (both valid for every schedule):
    # (1) C >= E_i + longest path after i (each op at its faster mode);
    best = [min(d1[i], da[i]) if da[i] is not None else d1[i] for i in range(n)]
    succs = p.succs()
    after = [0] * n
    for i in reversed(topo_order(n, p.edges)):
        after[i] = max((best[j] + after[j] for j in succs[i]), default=0)
    for i in range(n):
        if after[i]:
            mdl.Add(cmax >= E[i] + after[i])
    # (2) energy per class: while any op runs intra, every core of the class is taken,
    #     so sum(single work on the class) + cap * sum(intra durations) <= cap * C, with
    #     the idle cores beside one chain of ops charged too (Prep.single_energy).
    for r in (0, 1):
        terms, const = [], 0
        single = pr.single_energy(r, d1)     # in ticks: valid for the tick schedules
        for i in range(n):
            if p.core_class[i] == "net":
                continue
            w1 = single[i]
            const += w1
            if lits[i] is not None:
                terms.append((da[i] * pr.cap[r] - w1, lits[i]))
        if terms or const:
            mdl.Add(sum(c * z for c, z in terms) + const <= pr.cap[r] * cmax)
    return TickModel(mdl, S, lits, cmax)


def build_reference(pr: Prep, g: TickGrid, cp_model) -> TickModel:
    p = pr.p
    n = p.n
    d1, da = g.d1, g.da
    # naive big-M as in the published model: sum of each op's longest duration
    big = sum(max(d1[i], g.ticks(p.lat_all_s[i]) if p.has_intra(i) else 0) for i in range(n))
    mdl = cp_model.CpModel()
    S = [mdl.NewIntVar(0, big, f"S{i}") for i in range(n)]
    z = [mdl.NewBoolVar(f"z{i}") if da[i] is not None else None for i in range(n)]
    cmax = mdl.NewIntVar(0, big, "C")

    def dur(i):
        """p_i as a linear expression in ticks."""
        return d1[i] if z[i] is None else d1[i] + (da[i] - d1[i]) * z[i]

    for i in range(n):
        mdl.Add(cmax >= S[i] + dur(i))
    for i, j in set(p.edges):
        mdl.Add(S[j] >= S[i] + dur(i))
    x = {(i, j): mdl.NewBoolVar(f"x{i}_{j}") for i in range(n) for j in range(n) if i != j}
    for i, j in set(p.edges):
        mdl.Add(x[i, j] == 1)
    for i in range(n):
        for j in range(i + 1, n):
            mdl.Add(x[i, j] + x[j, i] <= 1)
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if len({i, j, k}) == 3:
                    mdl.Add(x[i, j] + x[j, k] - x[i, k] <= 1)
    for (i, j), v in x.items():
        mdl.Add(S[j] >= S[i] + dur(i) - big * (1 - v))
    core = [p.core_class[i] != "net" for i in range(n)]
    a = {}
    for i in range(n):
        if not core[i]:
            continue
        dem1 = pr.demand(i, False)
        for r in (0, 1):
            if dem1[r] == 0:
                continue
            ks = [a.setdefault((i, r, k), mdl.NewBoolVar(f"a{i}_{r}_{k}"))
                  for k in range(pr.cap[r])]
            mdl.Add(sum(ks) + (z[i] if z[i] is not None else 0) == 1)
    for i in range(n):
        for j in range(i + 1, n):
            if core[i] and core[j]:
                for r in (0, 1):
                    for k in range(pr.cap[r]):
                        if (i, r, k) in a and (j, r, k) in a:
                            mdl.Add(x[i, j] + x[j, i] >= a[i, r, k] + a[j, r, k] - 1)
                for u in (i, j):
                    if z[u] is not None:
                        mdl.Add(x[i, j] + x[j, i] >= z[u])
            elif not core[i] and not core[j]:
                mdl.Add(x[i, j] + x[j, i] >= 1)
    return TickModel(mdl, S, z, cmax)
