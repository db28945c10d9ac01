"""Gurobi (gurobipy) backend. Raises LicenceError when no licence is available (errno
10009) or the model exceeds the size-limited pip licence (errno 10010), and when gurobipy is not installed; the caller then falls back to the open
solver (settings.OPEN_FALLBACK_SOLVER, CBC) and records that solver in the result."""

from __future__ import annotations

from phaze.sched.backends import LicenceError
from phaze.sched.backends._milp import milp_backend
from phaze.sched.milp import LinearModel

LICENCE_ERRNOS = (10009, 10010)


def run(m: LinearModel, settings: dict):
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError:          # not installed: as unlicensed, the open solver takes over
        raise LicenceError("gurobipy is not installed (pip install gurobipy)") from None

    try:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        g = gp.Model("sched", env=env)
        g.Params.TimeLimit = float(settings["time_limit_s"])
        g.Params.MIPGap = float(settings["rel_gap"])
        g.Params.Threads = int(settings["threads"])
        xs = [g.addVar(lb=m.lb[k], ub=m.ub[k], vtype=GRB.INTEGER if m.is_int[k] else GRB.CONTINUOUS)
              for k in range(m.n_vars)]
        g.setObjective(gp.quicksum(v * xs[k] for k, v in m.obj.items()), GRB.MINIMIZE)
        for coeffs, lo, hi in m.rows:
            expr = gp.LinExpr([(v, xs[k]) for k, v in coeffs.items()])
            if lo == hi:
                g.addLConstr(expr, GRB.EQUAL, lo)
            else:
                if lo > -float("inf"):
                    g.addLConstr(expr, GRB.GREATER_EQUAL, lo)
                if hi < float("inf"):
                    g.addLConstr(expr, GRB.LESS_EQUAL, hi)
        g.optimize()
    except gp.GurobiError as e:
        if e.errno in LICENCE_ERRNOS:
            raise LicenceError(f"gurobi errno {e.errno}: {e}") from None
        raise
    proven = g.Status == GRB.OPTIMAL
    has = g.SolCount > 0
    bound = g.ObjBound if has or proven else 0.0
    vals = [x.X for x in xs] if has else None
    st = {GRB.OPTIMAL: "optimal", GRB.TIME_LIMIT: "time_limit"}.get(g.Status, f"status {g.Status}")
    g.dispose()
    env.dispose()
    return vals, proven, bound, st


solve = milp_backend(run)
