"""MILP formulations as a solver-neutral linear model.

Times inside the model are in units of the heuristic makespan UB (so every start lies
in [0, 1]), which keeps solver tolerances relative to the problem's own scale.

`compact` (default for MILP backends), a resource-flow model (Artigues, Michelon and
Reusser, EJOR 2003) specialised to this problem:
  - order binaries x_ij only for INCOMPARABLE pairs that may share a resource (pairs
    ordered by the DAG's transitive closure need none), no transitivity rows;
  - per resource r in {TC, VC} a flow f_ijr of core units handed from i to j, with
    conservation in = out = demand_ir (single: 1 unit of its class; intra: all units),
    a source supplying the capacity, and f_ijr > 0 only if x_ij = 1;
  - the link (capacity 1) is disjunctive: x_ij + x_ji = 1 for incomparable net pairs;
  - big-M rows S_j >= S_i + p_i - M_ij (1 - x_ij) with M_ij = UB - head_j, start
    windows [head_i, UB - tail_i] from the heuristic bound, dominated intra modes
    removed, and symmetry breaking S_i <= S_j, x_ji = 0 for identical ops i < j.
`reference`: the published pairwise model (REFERENCE.md 5): x_ij for every ordered pair,
transitivity x_ij + x_jk - x_ik <= 1 for every triple, big-M = sum of longest durations,
and explicit core-assignment binaries (the published code adds them lazily; open solvers
have no common lazy-row callback, so all are added up front).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phaze.sched.prep import Prep


@dataclass
class LinearModel:
    names: list[str] = field(default_factory=list)
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    is_int: list[bool] = field(default_factory=list)
    rows: list[tuple[dict[int, float], float, float]] = field(default_factory=list)
    obj: dict[int, float] = field(default_factory=dict)
    start_var: list[int] = field(default_factory=list)    # per op
    intra_var: list[int | None] = field(default_factory=list)
    scale_s: float = 1.0     # seconds per model time unit

    INF = float("inf")

    def var(self, name, lb=0.0, ub=float("inf"), integer=False) -> int:
        self.names.append(name)
        self.lb.append(lb)
        self.ub.append(ub)
        self.is_int.append(integer)
        return len(self.names) - 1

    def row(self, coeffs: dict[int, float], lo=-float("inf"), hi=float("inf")) -> None:
        c = {k: v for k, v in coeffs.items() if v != 0.0}
        self.rows.append((c, lo, hi))

    @property
    def n_vars(self) -> int:
        return len(self.names)

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def _duration_terms(m: LinearModel, pr: Prep, i: int) -> tuple[float, dict[int, float]]:
    """p_i = const + sum(coef * var), in model units."""
    p = pr.p
    l1 = p.lat_one_s[i] / m.scale_s
    z = m.intra_var[i]
    if z is None:
        return l1, {}
    return l1, {z: p.lat_all_s[i] / m.scale_s - l1}


def _common(pr: Prep, strengthen: bool) -> tuple[LinearModel, int]:
    p = pr.p
    m = LinearModel(scale_s=pr.ub if pr.ub > 0 else 1.0)
    big = pr.ub / m.scale_s
    for i in range(p.n):
        lo = pr.head[i] / m.scale_s
        hi = max(lo, big - pr.tail[i] / m.scale_s)
        m.start_var.append(m.var(f"S{i}", lo, hi + 1e-9))
        m.intra_var.append(m.var(f"z{i}", 0, 1, True) if pr.intra_ok[i] else None)
    cmax = m.var("C", 0.0, big + 1e-9)
    m.obj[cmax] = 1.0
    best = [p.best_duration(i) for i in range(p.n)]
    after = [pr.tail[i] - best[i] if strengthen else 0.0 for i in range(p.n)]  # path after i
    for i in range(p.n):
        c0, terms = _duration_terms(m, pr, i)
        coeffs = {cmax: 1.0, m.start_var[i]: -1.0}
        for k, v in terms.items():
            coeffs[k] = -v
        m.row(coeffs, lo=c0 + after[i] / m.scale_s)     # C >= S_i + p_i + after_i
    for i, j in set(p.edges):
        c0, terms = _duration_terms(m, pr, i)
        coeffs = {m.start_var[j]: 1.0, m.start_var[i]: -1.0}
        for k, v in terms.items():
            coeffs[k] = -v
        m.row(coeffs, lo=c0)          # S_j >= S_i + p_i
    return m, cmax


def _energy_rows(m: LinearModel, pr: Prep, cmax: int) -> None:
    """While any op runs intra every core of a class is taken, so per class
    sum(single work) + cap * sum(intra durations) <= cap * C (valid, tightens the LP)."""
    p = pr.p
    for r in (0, 1):
        const, coeffs = 0.0, {cmax: -float(pr.cap[r])}
        single = pr.single_energy(r, [x / m.scale_s for x in p.lat_one_s])
        for i in range(p.n):
            if p.core_class[i] == "net":
                continue
            w1 = single[i]
            const += w1
            z = m.intra_var[i]
            if z is not None:
                coeffs[z] = p.lat_all_s[i] / m.scale_s * pr.cap[r] - w1
        m.row(coeffs, hi=-const)


def _order_row(m: LinearModel, pr: Prep, i: int, j: int, x: int, big_m: float) -> None:
    """S_j >= S_i + p_i - M (1 - x)  <=>  S_j - S_i - p_terms - M x >= c0 - M."""
    c0, terms = _duration_terms(m, pr, i)
    coeffs = {m.start_var[j]: 1.0, m.start_var[i]: -1.0, x: -big_m}
    for k, v in terms.items():
        coeffs[k] = coeffs.get(k, 0.0) - v
    m.row(coeffs, lo=c0 - big_m)


def build_compact(pr: Prep) -> LinearModel:
    p = pr.p
    m, cmax = _common(pr, True)
    _energy_rows(m, pr, cmax)
    n = p.n
    big = pr.ub / m.scale_s
    ident = set(pr.ident_pairs)
    for i, j in pr.ident_pairs:
        m.row({m.start_var[j]: 1.0, m.start_var[i]: -1.0}, lo=0.0)
    x: dict[tuple[int, int], int] = {}
    core = [p.core_class[i] != "net" for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j or not pr.incomparable(i, j):
                continue
            if core[i] and core[j]:
                share = any(pr.may_use(i, r) and pr.may_use(j, r) for r in (0, 1))
            else:
                share = not core[i] and not core[j]
            if not share:
                continue
            fixed0 = (j, i) in ident      # j < i identical: j goes first
            x[i, j] = m.var(f"x{i}_{j}", 0, 0 if fixed0 else 1, True)
    for (i, j), v in x.items():
        if i < j and (j, i) in x:
            if core[i]:
                m.row({v: 1.0, x[j, i]: 1.0}, hi=1.0)
            else:
                m.row({v: 1.0, x[j, i]: 1.0}, lo=1.0, hi=1.0)
        big_m = big - pr.head[j] / m.scale_s
        _order_row(m, pr, i, j, v, big_m)
    # resource flows
    for r in (0, 1):
        users = [i for i in range(n) if core[i] and pr.may_use(i, r)]
        if not users:
            continue
        cap = pr.cap[r]

        def umax(i):
            return pr.demand(i, pr.intra_ok[i])[r] if pr.intra_ok[i] else pr.demand(i, False)[r]

        out_terms = {i: {} for i in users}
        in_terms = {i: {} for i in users}
        src = {}
        for i in users:
            f = m.var(f"fs{r}_{i}", 0.0, umax(i))
            src[i] = f
            in_terms[i][f] = 1.0
            f = m.var(f"ft{r}_{i}", 0.0, umax(i))
            out_terms[i][f] = 1.0
        for i in users:
            for j in users:
                if i == j or pr.reach[j, i]:
                    continue
                if pr.reach[i, j]:
                    xv = None
                elif (i, j) in x:
                    xv = x[i, j]
                else:
                    continue
                u = min(umax(i), umax(j))
                f = m.var(f"f{r}_{i}_{j}", 0.0, u)
                out_terms[i][f] = 1.0
                in_terms[j][f] = 1.0
                if xv is not None:
                    m.row({f: 1.0, xv: -float(u)}, hi=0.0)
        m.row({f: 1.0 for f in src.values()}, hi=float(cap))
        for i in users:
            d1 = pr.demand(i, False)[r]
            z = m.intra_var[i]
            for terms in (out_terms[i], in_terms[i]):
                coeffs = dict(terms)
                if z is not None:
                    coeffs[z] = -(pr.demand(i, True)[r] - d1)
                m.row(coeffs, lo=float(d1), hi=float(d1))
    return m


def build_reference(pr: Prep) -> LinearModel:
    p = pr.p
    m, cmax = _common(pr, False)
    n = p.n
    # naive big-M as in the published model: sum of each op's longest duration
    big = sum(max(p.lat_one_s[i], p.lat_all_s[i] if p.has_intra(i) else 0.0)
              for i in range(n)) / m.scale_s
    for i in range(n):        # the published model has no start windows
        m.lb[m.start_var[i]] = 0.0
        m.ub[m.start_var[i]] = big
    m.ub[cmax] = big
    x = {}
    for i in range(n):
        for j in range(n):
            if i != j:
                x[i, j] = m.var(f"x{i}_{j}", 0, 1, True)
    for i, j in set(p.edges):
        m.lb[x[i, j]] = 1.0
    for i in range(n):
        for j in range(i + 1, n):
            m.row({x[i, j]: 1.0, x[j, i]: 1.0}, hi=1.0)
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if len({i, j, k}) == 3:
                    m.row({x[i, j]: 1.0, x[j, k]: 1.0, x[i, k]: -1.0}, hi=1.0)
    for (i, j), v in x.items():
        _order_row(m, pr, i, j, v, big)
    core = [p.core_class[i] != "net" for i in range(n)]
    # core assignment: a[i, r, k] = op i runs single-mode on core k of resource r
    a = {}
    for i in range(n):
        if not core[i]:
            continue
        d1 = pr.demand(i, False)
        for r in (0, 1):
            if d1[r] == 0:
                continue
            ks = [a.setdefault((i, r, k), m.var(f"a{i}_{r}_{k}", 0, 1, True))
                  for k in range(pr.cap[r])]
            coeffs = {v: 1.0 for v in ks}
            z = m.intra_var[i]
            if z is not None:
                coeffs[z] = 1.0
            m.row(coeffs, lo=1.0, hi=1.0)     # sum_k a = 1 - z
    for i in range(n):
        for j in range(i + 1, n):
            if core[i] and core[j]:
                for r in (0, 1):
                    for k in range(pr.cap[r]):
                        if (i, r, k) in a and (j, r, k) in a:
                            m.row({x[i, j]: 1.0, x[j, i]: 1.0, a[i, r, k]: -1.0,
                                   a[j, r, k]: -1.0}, lo=-1.0)
                for u, w in ((i, j), (j, i)):
                    if m.intra_var[u] is not None:   # intra u excludes every core op
                        m.row({x[i, j]: 1.0, x[j, i]: 1.0, m.intra_var[u]: -1.0}, lo=0.0)
            elif not core[i] and not core[j]:
                m.row({x[i, j]: 1.0, x[j, i]: 1.0}, lo=1.0)
    return m
