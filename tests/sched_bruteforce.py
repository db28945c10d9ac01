"""Independent exhaustive reference for small scheduling instances (test helper).

Written separately from phaze.sched: it enumerates, by depth-first search, every
(precedence-feasible order, mode per op) and builds the serial earliest-start schedule
for each: op k is placed at the earliest time >= its predecessors' ends at which adding
its demand keeps TC <= n_tc, VC <= n_vc and link <= 1 over its whole duration.

Why this reaches the optimum: the makespan is a regular objective (non-decreasing in
every end time), so some optimal schedule is ACTIVE (no op can start earlier without
delaying another). Fix that schedule's modes and list its ops by start time: the serial
earliest-start construction with that list reproduces an active schedule no longer than
it (Sprecher, Kolisch and Drexl, EJOR 1995: the serial scheme generates exactly the
active schedules). Pruning a branch is safe when (a) its partial makespan already reaches the best
complete one (adding ops never shortens a makespan), or (b) its resource-energy bound
does: for each resource, (energy of the placed ops + the cheapest energy of each
unplaced op) / capacity is a lower bound on any completion's makespan, since at most
`capacity` units are busy at any instant.
"""

from __future__ import annotations


def brute_force_makespan(classes, lat1, lat_all, edges, n_tc, n_vc) -> float:
    n = len(classes)
    preds = [set() for _ in range(n)]
    for a, b in edges:
        preds[b].add(a)

    def demand(i, intra):
        c = classes[i]
        if c == "net":
            return (0, 0, 1)
        if intra:
            return (n_tc, n_vc, 0)
        return (1 if c in ("tc", "tc+vc") else 0, 1 if c in ("vc", "tc+vc") else 0, 0)

    cap = (n_tc, n_vc, 1)
    best = [float("inf")]

    def usage_ok(placed, t0, t1, dem):
        if t1 <= t0:
            return True
        pts = [t0] + [s for s, e, _ in placed if t0 < s < t1]
        for x in pts:
            u = list(dem)
            for s, e, d in placed:
                if s <= x < e:
                    u = [u[r] + d[r] for r in range(3)]
            if any(u[r] > cap[r] for r in range(3)):
                return False
        return True

    def energy(k, intra):
        d = lat_all[k] if intra else lat1[k]
        return [d * x for x in demand(k, intra)]

    cheapest = []
    for k in range(n):
        opts = [energy(k, False)] + ([energy(k, True)] if classes[k] != "net" else [])
        cheapest.append([min(e[r] for e in opts) for r in range(3)])

    def rec(done, ends, placed, cur):
        if cur >= best[0]:
            return
        for r in range(3):
            used = sum((e - s) * d[r] for s, e, d in placed)
            rest = sum(cheapest[k][r] for k in range(n) if k not in done)
            if (used + rest) / cap[r] >= best[0] * (1 - 1e-12):
                return
        if len(done) == n:
            best[0] = cur
            return
        for k in range(n):
            if k in done or not preds[k] <= done:
                continue
            est = max((ends[i] for i in preds[k]), default=0.0)
            modes = [False] if classes[k] == "net" else [False, True]
            for intra in modes:
                dur = lat_all[k] if intra else lat1[k]
                dem = demand(k, intra)
                cands = sorted({est} | {e for _, e, _ in placed if e > est})
                for t in cands:
                    if usage_ok(placed, t, t + dur, dem):
                        break
                ends[k] = t + dur
                rec(done | {k}, ends, placed + [(t, t + dur, dem)], max(cur, t + dur))
                del ends[k]

    rec(frozenset(), {}, [], 0.0)
    return best[0]
