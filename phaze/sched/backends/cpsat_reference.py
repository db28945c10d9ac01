"""The `reference` formulation for CP-SAT: the published pairwise model (REFERENCE.md 5),
row for row the same as milp.build_reference, in CP-SAT's integer ticks.

Variables: start S_i in [0, M] (no start windows), intra literal z_i where intra is not
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
rounding and hint come from backends/cpsat.py, so the soundness argument there holds:
M in ticks bounds a serial schedule of every op, so the horizon keeps a tick optimum.
"""

from __future__ import annotations

from phaze.sched.backends.cpsat import TickGrid, TickModel
from phaze.sched.prep import Prep


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
