"""Solve one layer problem: heuristic, exact backend (isolated in its own process unless
it is the in-process default), exact re-timing, verification, status and gap.

status: optimal     the backend proved optimality (gap <= OPT_GAP after re-timing)
        time_limit  the backend stopped at its limit; best known schedule + proven bound
        heuristic   no exact solve ran or it gave nothing better (the list schedule)
A time limit, a crash of a backend process or a licence failure never raises: the
result falls back to the heuristic schedule (or to the default open solver for a
licence failure, with one warning line on stderr).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from phaze.sched import worker
from phaze.sched.backends import LicenceError, run_backend_inprocess
from phaze.sched.bnb import branch_and_bound
from phaze.sched.heuristic import list_schedule, lower_bound_s, serial_sgs
from phaze.sched.prep import mode_fixing_bound, prepare
from phaze.sched.problem import SchedProblem, Schedule, check_schedule, compact, topo_order

from phaze.settings import DEFAULT_SOLVER, OPEN_FALLBACK_SOLVER, SchedSettings  # noqa: E402  (one place for defaults)

from phaze.settings import FORMULATIONS  # noqa: E402,F401
OPT_GAP = 1e-4
# what a result names as its solver when the pipeline proved it before the backend ran
# (the list schedule meeting the bound; the chronological branch and bound)
PROVEN_BEFORE_BACKEND = ("bound", "branch and bound")            # a result is "optimal" only if its proven gap is within this
# bnb_share: the fraction of the time limit given to the branch and bound (bnb.py)
# before the backend; the backend gets the rest
DEFAULT_SETTINGS = SchedSettings().solve_settings()


@dataclass
class SolveResult:
    makespan_s: float
    lower_bound_s: float
    gap: float
    status: str
    solver: str
    formulation: str
    seconds: float
    start_s: list[float] = field(default_factory=list)
    mode: list[str] = field(default_factory=list)
    solver_status: str = ""
    n_vars: int = 0
    n_rows: int = 0
    cache_hit: bool = False
    model_seconds: float = 0.0   # in the exact backend: prep, model build and solve

    def to_dict(self) -> dict:
        """The fields as a dict (what dataclasses.asdict gives, without its deep copy:
        the two lists are copied, every other field is a scalar)."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["start_s"], d["mode"] = list(self.start_s), list(self.mode)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SolveResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def schedule(self) -> Schedule:
        return Schedule(list(self.start_s), list(self.mode))


def _gap(ms: float, lb: float) -> float:
    if ms <= 0:
        return 0.0
    return max(0.0, (ms - lb) / ms)


def heuristic_result(p: SchedProblem, t0: float, solver: str = "heuristic",
                     formulation: str = "-", sched: Schedule | None = None,
                     lb: float | None = None, status: str = "heuristic",
                     solver_status: str = "") -> SolveResult:
    sched = sched or list_schedule(p)
    ms = sched.makespan(p)
    lb = lower_bound_s(p) if lb is None else lb
    lb = min(lb, ms)
    gap = _gap(ms, lb)
    if gap <= OPT_GAP and status != "heuristic":
        status = "optimal"
    return SolveResult(ms, lb, gap, status, solver, formulation, time.perf_counter() - t0,
                       list(sched.start_s), list(sched.mode), solver_status)


def solve_problem(p: SchedProblem, solver: str = DEFAULT_SOLVER, formulation: str = "compact",
                  settings: dict | None = None, isolate: bool | None = None,
                  warn=None, shortcut: bool = True) -> SolveResult:
    """Solve `p` exactly with `solver` (or "heuristic"). `isolate`: run the backend in a
    worker process (default: every backend except the in-process default). `shortcut`:
    return the list schedule without a solve when it meets the lower bound (benchmarks
    turn this off to time the formulations themselves)."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    warn = warn or (lambda msg: print(f"phaze: warning: {msg}", file=sys.stderr))
    t0 = time.perf_counter()
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r}")
    pr, lb0, hsched = _bound_and_list_schedule(p, shortcut and solver != "heuristic")
    ub = hsched.makespan(p)
    if solver == "heuristic" or p.n == 0:
        return heuristic_result(p, t0, sched=hsched, lb=lb0)
    if shortcut and _gap(ub, lb0) <= OPT_GAP:     # the heuristic is provably optimal
        # the row records what produced it: the list schedule, proven by the bound
        return heuristic_result(p, t0, solver=PROVEN_BEFORE_BACKEND[0], formulation=formulation, sched=hsched,
                                lb=lb0, status="optimal", solver_status="bound met")
    # the chronological branch and bound proves the packing-like layers whose optimum
    # no relaxation sees (measured: all 137 zoo problems left open by the bound in
    # <= 2.3 s, summed 11 s; CP-SAT: 5-6 unproven at 10 s, summed 136-147 s)
    share = float(settings.get("bnb_share", 0.0)) if shortcut else 0.0
    if share > 0:
        bb = branch_and_bound(pr, ub * (1 - OPT_GAP / 2), share * settings["time_limit_s"])
        if bb.best is not None:
            hsched, ub = bb.best, bb.best_s
            pr.ub = ub
        if bb.proven:
            return heuristic_result(p, t0, solver=PROVEN_BEFORE_BACKEND[1], formulation=formulation,
                                    sched=hsched, lb=max(lb0, bb.bound_s), status="time_limit",
                                    solver_status=f"branch and bound ({bb.nodes} nodes)")
        settings = {**settings, "time_limit_s": settings["time_limit_s"] * (1 - share)}
    if isolate is None:
        isolate = solver != DEFAULT_SOLVER
    t_model = time.perf_counter()
    try:
        if isolate:
            raw = worker.call(solver, p, formulation, settings, hsched, ub)
        else:
            raw = run_backend_inprocess(p, solver, formulation, settings, hsched, ub, pr)
    except LicenceError as e:
        fallback = OPEN_FALLBACK_SOLVER if solver != OPEN_FALLBACK_SOLVER else DEFAULT_SOLVER
        warn(f"solver: {solver} unavailable ({e}); falling back to {fallback}, which the "
             f"result records; fix: a full {solver} licence (GRB_LICENSE_FILE), or solver "
             f"{fallback}")
        # the branch and bound already ran: the fallback solver gets what is left; its
        # result names the fallback (and is never cached under the requested solver)
        return solve_problem(p, fallback, formulation, {**settings, "bnb_share": 0.0},
                             isolate=None, warn=warn)
    except worker.WorkerCrash as e:
        warn(f"{solver} worker failed ({e}); using the list schedule")
        return heuristic_result(p, t0, solver="heuristic", formulation=formulation,
                                sched=hsched, lb=lb0, solver_status=f"{solver} crashed")
    model_s = time.perf_counter() - t_model
    sched = _better_schedule(p, raw, hsched, ub)
    ms = sched.makespan(p)
    lb = min(max(lb0, raw.bound_s), ms)
    gap = _gap(ms, lb)
    # optimal = proven within OPT_GAP (relative), whatever the solver's own status says;
    # otherwise the solve stopped early: best known schedule + proven bound + gap
    status = "optimal" if gap <= OPT_GAP else "time_limit"
    return SolveResult(ms, lb, gap, status, solver, formulation, time.perf_counter() - t0,
                       list(sched.start_s), list(sched.mode), raw.solver_status,
                       raw.n_vars, raw.n_rows, model_seconds=model_s)


def _bound_and_list_schedule(p: SchedProblem, stop_at_bound: bool):
    """(Prep or None when p has no op, best static lower bound, list schedule). The Prep's
    ub is the list schedule's makespan. `stop_at_bound`: the list scheduler may stop once
    it is within OPT_GAP of the bound (a solve would not improve on it)."""
    # the static bounds of the analysis (energetic heads and tails, energy with idle
    # charges) often meet the list schedule where the plain bound does not: no solve
    pr = prepare(p, 0.0) if p.n else None
    lb0 = pr.lower_bound_s() if p.n else 0.0
    # a list schedule within OPT_GAP of the bound is proven optimal: stop looking
    good_enough = lb0 / (1 - OPT_GAP) if stop_at_bound else 0.0
    hsched = list_schedule(p, good_enough_s=good_enough)
    ub = hsched.makespan(p)
    if pr is not None:
        pr.ub = ub
    if p.n and _gap(ub, lb0) > OPT_GAP:
        # cheaper than a solve: assume intra the ops whose single mode cannot beat the
        # list schedule, and bound again (with or without the shortcut: every result
        # carries the best bound known)
        lb0 = max(lb0, mode_fixing_bound(pr, ub * (1 - OPT_GAP)))
    return pr, lb0, hsched


def _better_schedule(p: SchedProblem, raw, hsched: Schedule, ub: float) -> Schedule:
    """The backend's schedule re-timed with the exact latencies (repaired if it overlaps
    within the solver's tolerance) when it beats `hsched` (makespan `ub`), else hsched."""
    if not raw.has_solution:
        return hsched
    cand = compact(p, Schedule(raw.start_s, raw.mode), raw.dur_s, slack_s=raw.slack_s)
    try:
        check_schedule(p, cand)
    except ValueError:
        # the solver's schedule overlaps within its feasibility tolerance: repair it
        # with a serial schedule in the same start order and modes
        pos = {k: i for i, k in enumerate(topo_order(p.n, p.edges))}
        order = sorted(range(p.n), key=lambda k: (cand.start_s[k], pos[k]))
        order = [k for k in topo_order_stable(p, order)]
        cand = serial_sgs(p, order, modes=list(cand.mode))
        check_schedule(p, cand)
    return cand if cand.makespan(p) < ub else hsched


def topo_order_stable(p: SchedProblem, order: list[int]) -> list[int]:
    """The topological order closest to `order`: repeatedly take the first op of
    `order` whose predecessors are all placed."""
    preds = [set(x) for x in p.preds()]
    done: set[int] = set()
    out: list[int] = []
    rest = list(order)
    while rest:
        for k, j in enumerate(rest):
            if preds[j] <= done:
                out.append(j)
                done.add(j)
                del rest[k]
                break
    return out
