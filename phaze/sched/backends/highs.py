"""HiGHS (highspy) MILP backend."""

from __future__ import annotations

import numpy as np

from phaze.sched.backends._milp import milp_backend
from phaze.sched.milp import LinearModel


def run(m: LinearModel, settings: dict):
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(settings["time_limit_s"]))
    h.setOptionValue("mip_rel_gap", float(settings["rel_gap"]))
    h.setOptionValue("threads", int(settings["threads"]))
    h.setOptionValue("random_seed", 0)
    inf = highspy.kHighsInf
    lb = np.array([x if x > -np.inf else -inf for x in m.lb])
    ub = np.array([x if x < np.inf else inf for x in m.ub])
    h.addVars(m.n_vars, lb, ub)
    idx = np.arange(m.n_vars, dtype=np.int32)
    cost = np.zeros(m.n_vars)
    for k, v in m.obj.items():
        cost[k] = v
    h.changeColsCost(m.n_vars, idx, cost)
    ints = np.array([i for i in range(m.n_vars) if m.is_int[i]], dtype=np.int32)
    if len(ints):
        h.changeColsIntegrality(len(ints), ints,
                                np.array([highspy.HighsVarType.kInteger] * len(ints)))
    lo = np.array([r[1] if r[1] > -np.inf else -inf for r in m.rows])
    hi = np.array([r[2] if r[2] < np.inf else inf for r in m.rows])
    starts, indices, values = [], [], []
    for coeffs, _, _ in m.rows:
        starts.append(len(indices))
        for k, v in coeffs.items():
            indices.append(k)
            values.append(v)
    h.addRows(m.n_rows, lo, hi, len(indices), np.array(starts, dtype=np.int32),
              np.array(indices, dtype=np.int32), np.array(values, dtype=float))
    h.run()
    status = h.getModelStatus()
    st = h.modelStatusToString(status)
    info = h.getInfo()
    proven = status == highspy.HighsModelStatus.kOptimal
    has = info.primal_solution_status == 2 or proven
    bound = info.mip_dual_bound if np.isfinite(info.mip_dual_bound) else 0.0
    if proven:
        bound = max(bound, info.objective_function_value * (1 - settings["rel_gap"]))
    vals = list(h.getSolution().col_value) if has else None
    return vals, proven, bound, st


solve = milp_backend(run)
