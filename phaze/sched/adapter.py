"""LayerGraph pass + arch + cost model -> SchedProblem.

The cost model (phaze.cost.api.op_latencies) provides per-op single-core and all-core
latencies for `layer_problems`; `ops_to_problem` builds one problem from given latencies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from phaze.cost.api import arch_arrays, op_latencies
from phaze.errors import UserError
from phaze.sched.problem import SchedProblem


def ops_to_problem(ops: Sequence, lat_one_s: Sequence[float], lat_all_s: Sequence[float],
                   n_tc: int, n_vc: int) -> SchedProblem:
    """ops: phaze.model.ops.Op of one pass (deps by name, core_class property)."""
    return _problem(pass_structure(ops), lat_one_s, lat_all_s, n_tc, n_vc)


def pass_structure(ops: Sequence) -> tuple:
    """(core classes, sorted deduplicated edges by op index, names) of one pass's ops:
    what every arch's problem of the pass shares. UserError on a duplicate name or a
    dependency on an unknown op."""
    index = {op.name: k for k, op in enumerate(ops)}
    if len(index) != len(ops):
        raise UserError("duplicate op names in one pass", field="graph",
                        fix="give each op of a pass a unique name")
    edges = []
    for k, op in enumerate(ops):
        for dep in op.deps:
            if dep not in index:
                raise UserError(f"op {op.name!r} depends on unknown op {dep!r}", field="graph",
                                fix=f"add op {dep!r} or drop the dependency")
            edges.append((index[dep], k))
    return (tuple(op.core_class for op in ops), tuple(sorted(set(edges))),
            tuple(op.name for op in ops))


def _problem(structure: tuple, lat_one_s, lat_all_s, n_tc: int, n_vc: int) -> SchedProblem:
    core_class, edges, names = structure
    # tolist() of a float64 array gives the same Python floats as float(x) of each element
    return SchedProblem(core_class, tuple(np.asarray(lat_one_s, dtype=float).tolist()),
                        tuple(np.asarray(lat_all_s, dtype=float).tolist()), edges,
                        int(n_tc), int(n_vc), names=names)


# Scheduled passes of a layer: forward, backward, and the forward ops that selective
# recomputation re-runs before the backward (empty for layers without an attention core).
SCHED_PASSES = ("fwd", "bwd", "recompute")


def pass_ops(layer, pass_: str):
    """The ops of one scheduled pass of a LayerGraph."""
    return layer.selective_recompute_ops() if pass_ == "recompute" else layer.ops(pass_)


def attention_core_times(graph, archs, network, params=None) -> np.ndarray:
    """(archs, graph.layers, SCHED_PASSES) array of seconds: per layer and pass, the
    attention core's ops (phaze.model.ops.is_attention_core) run intra-op one after the
    other (their all-core latencies summed): the time one ring step of context
    parallelism repeats (phaze.place.plan.context_parallel_chain). `archs`: an Arch, a
    list of them or an arch table; `params`: phaze.cost.params.CostParams (default: the
    cost model's defaults, as layer_problems). Zero for a pass without a core op."""
    from phaze.model.ops import is_attention_core

    arrays = arch_arrays(archs)
    out = np.zeros((len(arrays["n_tc"]), len(graph.layers), len(SCHED_PASSES)))
    for li, layer in enumerate(graph.layers):
        for k, pass_ in enumerate(SCHED_PASSES):
            core = [o for o in pass_ops(layer, pass_) if is_attention_core(o)]
            if core:
                lat = op_latencies(core, arrays, network, tp=graph.tp, params=params,
                                   groups=graph.collective_groups).lat_all_s
                out[:, li, k] = lat.sum(axis=1)
    return out


def layer_problems(graph, archs, network, tp: int | None = None):
    """Yield (arch_index, layer_index, layer, pass, SchedProblem) for every arch row of
    `archs` (DataFrame with the arch id fields) and every pass in SCHED_PASSES of every
    layer of `graph` (a ModelGraph). The cost model is called once per pass, vectorised
    over all archs; an empty pass yields a problem with no ops (makespan 0)."""
    tp = graph.tp if tp is None else tp
    n_tc = archs["n_tc"].to_numpy()
    n_vc = archs["n_vc"].to_numpy()
    arrays = None                     # converted and checked once, at the first pass with ops
    for li, layer in enumerate(graph.layers):
        for pass_ in SCHED_PASSES:
            ops = pass_ops(layer, pass_)
            if not ops:
                for a in range(len(archs)):
                    yield a, li, layer, pass_, SchedProblem((), (), (), (), int(n_tc[a]),
                                                            int(n_vc[a]))
                continue
            arrays = arch_arrays(archs) if arrays is None else arrays
            costs = op_latencies(ops, arrays, network, tp=tp,
                                 groups={**graph.collective_groups, "tp": tp})
            structure = pass_structure(ops)
            # archs with the same op latencies and core counts (e.g. differing only in
            # buffer size) share one problem object: built and hashed once
            memo: dict = {}
            for a in range(len(archs)):
                one, all_ = costs.lat_one_s[a], costs.lat_all_s[a]
                k = (one.tobytes(), all_.tobytes(), int(n_tc[a]), int(n_vc[a]))
                p = memo.get(k)
                if p is None:
                    p = memo[k] = _problem(structure, one, all_, n_tc[a], n_vc[a])
                yield a, li, layer, pass_, p
