"""Solver backends behind one interface.

Each backend module defines `solve(prep, formulation, settings) -> RawSolution`.
Backends import their solver library lazily; `phaze.sched.worker` runs a backend in a
separate process so that solver libraries never mix in one interpreter
(/work/shared/INFRA_NOTES.md: highspy, ortools and PuLP's HiGHS can crash together).
`run_backend_inprocess` is the one entry both phaze.sched.solve (in-process default) and
the worker process call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from phaze.sched.prep import prepare
from phaze.sched.problem import SchedProblem, Schedule

from phaze.settings import BACKENDS  # noqa: E402,F401  (one definition, importable from here)


class LicenceError(RuntimeError):
    """The backend cannot run this model here (no licence / size-limited licence)."""


@dataclass
class RawSolution:
    has_solution: bool
    proven_optimal: bool
    start_s: list[float] = field(default_factory=list)   # in the backend's time grid
    mode: list[str] = field(default_factory=list)
    dur_s: list[float] = field(default_factory=list)     # durations that produced start_s
    bound_s: float = 0.0          # proven lower bound on the makespan (seconds)
    solver_status: str = ""
    n_vars: int = 0
    n_rows: int = 0
    slack_s: float = 0.0          # tolerance to use when reading the interval order


def get(name: str):
    if name not in BACKENDS:
        raise KeyError(name)
    return importlib.import_module(f"phaze.sched.backends.{name}")


def run_backend_inprocess(p: SchedProblem, solver: str, formulation: str, settings: dict,
                          hint: Schedule, ub: float, pr=None) -> RawSolution:
    """Run backend `solver` in this process, warm-started from `hint` (made to respect the
    dominance rows); `pr`: the problem's Prep when the caller has one (else built here)."""
    pr = pr if pr is not None else prepare(p, ub)
    st = dict(settings)
    st["_hint"] = pr.respect_dominance(hint)
    return get(solver).solve(pr, formulation, st)
