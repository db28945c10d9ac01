"""OR-Tools CP-SAT backend: interval variables and cumulative constraints.

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
schedules (and whose horizon admits that tick schedule): `compact` below and
`reference` (backends/cpsat_reference.py) share the grid, the hint, the solver
parameters and the result extraction of this module.

`compact`: per op one mandatory interval, or, when intra-op may pay off, two optional
intervals (single, intra) with exactly one present. TC and VC are cumulative resources
(intra demands the whole capacity, making it exclusive); the link is a no-overlap
resource.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from phaze.sched.backends import RawSolution
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


def _build_compact(pr: Prep, g: TickGrid, cp_model) -> TickModel:
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


def _solver(settings: dict, cp_model):
    """Solver parameters, identical for every formulation."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(settings["time_limit_s"])
    solver.parameters.num_workers = int(settings["threads"])
    solver.parameters.random_seed = 0
    # With one worker the default search cannot close the bound on fine tick grids
    # (measured: an 8-op instance stuck at the static bound for 30 s); searching the
    # objective's lower bound directly proves it in milliseconds. With a portfolio it
    # hurts: 16 of 21 zoo backward blocks left open at 10 s on 8 workers were proven in
    # 1-5 s without it (the portfolio has its own bound-raising workers).
    solver.parameters.use_objective_lb_search = solver.parameters.num_workers == 1
    # Stronger cumulative propagation (off by default): timetable edge finding and the
    # overload checker raise the bound on the packing-like backward blocks (measured on
    # the 7 zoo blocks left open at 10 s: 3 proven in 6-7 s with them, none without).
    solver.parameters.use_timetable_edge_finding_in_cumulative = True
    solver.parameters.use_overload_checker_in_cumulative = True
    # stop once within the optimality tolerance (the tick rounding adds <= TICK_REL)
    solver.parameters.relative_gap_limit = float(settings.get("opt_gap", 1e-4)) / 2
    return solver


def solve(pr: Prep, formulation: str, settings: dict) -> RawSolution:
    from ortools.sat.python import cp_model

    g = tick_grid(pr)
    if formulation == "reference":
        from phaze.sched.backends.cpsat_reference import build_reference

        tm = build_reference(pr, g, cp_model)
    elif formulation == "compact":
        tm = _build_compact(pr, g, cp_model)
    else:
        raise ValueError(f"unknown formulation {formulation!r}")
    n, tick, mdl = pr.p.n, g.tick_s, tm.mdl
    mdl.Minimize(tm.cmax)
    # warm start, the same for every formulation: the heuristic's starts and modes
    # (CP-SAT repairs the tick rounding)
    h = settings.get("_hint")
    if h is not None:
        for i in range(n):
            mdl.AddHint(tm.S[i], int(h.start_s[i] / tick))
            if tm.lits[i] is not None:
                mdl.AddHint(tm.lits[i], h.mode[i] == "intra")
    solver = _solver(settings, cp_model)
    st = solver.Solve(mdl)
    name = solver.StatusName(st)
    has = st in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    if not has:
        return RawSolution(False, False, bound_s=0.0, solver_status=name)
    bound = max(0.0, (solver.BestObjectiveBound() - g.depth) * tick)
    start = [solver.Value(tm.S[i]) * tick for i in range(n)]
    mode = ["intra" if tm.lits[i] is not None and solver.Value(tm.lits[i]) else "single"
            for i in range(n)]
    dur = [(g.da[i] if mode[i] == "intra" else g.d1[i]) * tick for i in range(n)]
    return RawSolution(True, st == cp_model.OPTIMAL, start, mode, dur, bound_s=bound,
                       solver_status=name, n_vars=len(mdl.Proto().variables),
                       n_rows=len(mdl.Proto().constraints), slack_s=0.1 * tick)
