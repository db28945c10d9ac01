"""CBC backend through PuLP 3.3's bundled binary.

PuLP reports "Optimal" for a time-limited CBC run that stopped with an incumbent, so the
status and bound are read from CBC's own solution-file header and log.
"""

from __future__ import annotations

import os
import re
import tempfile

from phaze.sched.backends._milp import milp_backend
from phaze.sched.milp import LinearModel

PROVEN_SLACK = 2e-5   # relative; below the optimality tolerance OPT_GAP (1e-4)


def run(m: LinearModel, settings: dict):
    import pulp

    prob = pulp.LpProblem("sched", pulp.LpMinimize)
    xs = []
    for k in range(m.n_vars):
        lb = m.lb[k] if m.lb[k] > -float("inf") else None
        ub = m.ub[k] if m.ub[k] < float("inf") else None
        xs.append(pulp.LpVariable(f"v{k}", lb, ub,
                                  pulp.LpInteger if m.is_int[k] else pulp.LpContinuous))
    prob += pulp.lpSum(v * xs[k] for k, v in m.obj.items())
    for r, (coeffs, lo, hi) in enumerate(m.rows):
        expr = pulp.lpSum(v * xs[k] for k, v in coeffs.items())
        if lo == hi:
            prob += (expr == lo), f"r{r}"
        else:
            if lo > -float("inf"):
                prob += (expr >= lo), f"r{r}l"
            if hi < float("inf"):
                prob += (expr <= hi), f"r{r}u"
    with tempfile.TemporaryDirectory(prefix="phaze-cbc-") as tmp:
        log = os.path.join(tmp, "cbc.log")
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=float(settings["time_limit_s"]),
                                   gapRel=float(settings["rel_gap"]),
                                   threads=int(settings["threads"]), logPath=log)
        prob.solve(solver)
        text = open(log).read() if os.path.exists(log) else ""
    result = re.search(r"Result - (.*)", text)
    st = result.group(1).strip() if result else pulp.LpStatus[prob.status]
    proven = st.startswith("Optimal solution found")
    has = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    # CBC's "Lower bound:" after a time-limit stop was seen to equal its incumbent while a
    # better schedule existed (bert-large block bwd, tests/test_sched_zoo.py): only a
    # proven run's bound is used; a stopped run keeps the static lower bound.
    # Its "Optimal solution found" is trusted only to PROVEN_SLACK: on megatron-bert's
    # epilogue forward (1 TC) it claimed optimal 6.5e-6 (relative) above the schedule
    # HiGHS and CP-SAT found (its tolerances, with big-M rows in UB units).
    bound = 0.0
    obj = re.search(r"Objective value:\s*([-\d.eE+]+)", text)
    if proven and obj:
        bound = float(obj.group(1)) * (1 - max(settings["rel_gap"], PROVEN_SLACK))
    vals = [x.value() if x.value() is not None else 0.0 for x in xs] if has else None
    return vals, proven, bound, st


solve = milp_backend(run)
