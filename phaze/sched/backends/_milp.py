"""Turn a MILP's variable values into a RawSolution (shared by the MILP backends)."""

from __future__ import annotations

from phaze.sched.backends import RawSolution
from phaze.sched.milp import LinearModel
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
