"""OR-Tools CP-SAT backend: builds a formulation of phaze/sched/cpsat_models.py (the
integer tick grid and its soundness argument are described there), gives every
formulation the same hint and solver parameters, and reads the result back."""

from __future__ import annotations

from phaze.sched.backends import RawSolution
from phaze.sched.cpsat_models import build_compact, build_reference, tick_grid
from phaze.sched.prep import Prep


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
        tm = build_reference(pr, g, cp_model)
    elif formulation == "compact":
        tm = build_compact(pr, g, cp_model)
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
