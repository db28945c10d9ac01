"""What the MILP backends (cbc, highs, gurobi) share: build the formulation, hand the
linear model to the solver-specific part, turn its variable values into a RawSolution.

The solver-specific part is `run(m, settings) -> (values or None, proven, bound, status)`
with `bound` a proven lower bound in model units (0 when none); a backend module defines
`solve = milp_backend(run)`.
"""

from __future__ import annotations

from phaze.sched.backends import RawSolution
from phaze.sched.milp import LinearModel, build_compact, build_reference
from phaze.sched.prep import Prep


def read(pr: Prep, m: LinearModel, values, proven: bool, bound_units: float,
         status: str) -> RawSolution:
    p = pr.p
    if values is None:
        return RawSolution(False, False, bound_s=max(0.0, bound_units) * m.scale_s,
                           solver_status=status, n_vars=m.n_vars, n_rows=m.n_rows)
    start = [values[m.start_var[i]] * m.scale_s for i in range(p.n)]
    mode = []
    for i in range(p.n):
        z = m.intra_var[i]
        mode.append("intra" if z is not None and values[z] > 0.5 else "single")
    dur = [p.duration(i, mode[i]) for i in range(p.n)]
    return RawSolution(True, proven, start, mode, dur,
                       bound_s=max(0.0, bound_units) * m.scale_s, solver_status=status,
                       n_vars=m.n_vars, n_rows=m.n_rows, slack_s=1e-6 * m.scale_s)


def milp_backend(run):
    """The backend interface `solve(prep, formulation, settings)` around a solver's `run`."""

    def solve(pr: Prep, formulation: str, settings: dict) -> RawSolution:
        m = build_reference(pr) if formulation == "reference" else build_compact(pr)
        return read(pr, m, *run(m, settings))

    solve.__doc__ = f"Build the MILP and solve it with {run.__module__}.{run.__name__}."
    return solve
