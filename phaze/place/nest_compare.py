"""NEST's instances under phaze's own default-mode cost model: NEST's optimum plan evaluated
with phaze.place.plan.evaluate_plan, against phaze's DP optimum on the same instance
(docs/nest.md, "Default mode vs NEST").

The instance becomes a phaze Chain per TP width t, in SI units:
  * a stage's device group is a = t ep cp devices (NEST's unit of placement; the instance's
    per-layer figures are for that group), so the chain's width is a and phaze's DP
    places groups of a devices, as NEST does (EP and CP fixed by the instance, their
    communication inside the instance's layer latencies, if anywhere);
  * fwd_s, bwd_s = optimalLatencyFw/Bw x 1e-3 (NEST's estimator reports milliseconds,
    NEST_LATENCY_UNIT_S); param_count = parameterSize / 2 (bf16 weight bytes);
    act_none_bytes = activationSize; act_full_bytes (what full recomputation keeps) and
    out_bytes (the pipeline payload) = the layer's incoming / outgoing edge bytes;
  * the network: Network.levels with group sizes the running products of
    devices_per_level (the last level the whole cluster), `bws` and `latency_per_level`
    as given (phaze's per-hop p2p and hierarchical all-reduce, phaze.cost.collective);
  * the job: maxDevices, mbsInBatch microbatches of one sample (M = ceil(mbsInBatch / d),
    NEST's rounding: exact_batch off), maxMemoryPerDevice, activationRecomputation ->
    recompute "full" (phaze re-runs the forward, and in every stage), optimizerAlgorithm ->
    sgd / adam (mixed precision, 16 B/param), no ZeRO.
NEST's plan (p stages of a devices, d replicas) is a point of phaze's search space (p d a
<= devices, contiguous stages), so phaze's optimum is never slower under phaze's model.
"""

from __future__ import annotations

import math

import numpy as np

from phaze.hw.arch import Network
from phaze.place.chain import Chain
from phaze.place.nest import NestInstance, solve_nest
from phaze.place.plan import Links, PlanOptions, evaluate_plan

NEST_LATENCY_UNIT_S = 1e-3      # NEST's estimator latencies are milliseconds


def nest_chain(inst: NestInstance, t: int) -> Chain:
    """The instance's width t as a phaze Chain of width a = t ep cp (see module doc)."""
    w = inst.widths[t]
    n = inst.n
    inc = np.array([sum(c for _u, c in w.incoming[v]) for v in range(n)], dtype=float)
    out = np.array([sum(c for _v, c in w.outgoing[v]) for v in range(n)], dtype=float)
    fw = np.array(w.fw) * NEST_LATENCY_UNIT_S
    return Chain(t=t * inst.ep * inst.cp, mbs=1, seq=0, fwd_s=fw,
                 bwd_s=np.array(w.bw) * NEST_LATENCY_UNIT_S,
                 param_count=np.array(w.param) / 2.0, act_none_bytes=np.array(w.act),
                 act_full_bytes=np.minimum(inc, np.array(w.act)), out_bytes=out,
                 kinds=("block",) * n, model="nest-instance")


def nest_links(inst: NestInstance) -> Links:
    """The instance's network as phaze levels (group sizes = running products)."""
    sizes = list(np.cumprod(inst.devices_per_level[:-1]).astype(int)) + [0]
    levels = tuple((int(g), float(bw), float(lat))
                   for g, bw, lat in zip(sizes, inst.bws_dp, inst.latency))
    return Links.of(Network(levels=levels))


def nest_job(inst: NestInstance) -> dict:
    """The DP/evaluation arguments of the instance (devices, batch, recompute, HBM,
    links, options)."""
    return dict(devices=inst.max_devices, batch=inst.mbs_in_batch,
                recompute="full" if inst.recompute else "none", hbm_bytes=inst.max_memory,
                links=nest_links(inst),
                options=PlanOptions(optimizer="adam" if inst.adam else "sgd", zero1=False,
                                    exact_batch=False))


def nest_plan_under_phaze(inst: NestInstance, result: dict) -> dict:
    """NEST's plan (solve_nest's output) evaluated by phaze.place.plan.evaluate_plan."""
    t = int(result["tensorParallelDegree"])
    pos = {old: k for k, old in enumerate(inst.ids)}
    stages, lo = [], 0
    for st in result["stages"]:
        hi = lo + len(st["nodes"])
        if [pos[v] for v in st["nodes"]] != list(range(lo, hi)):
            raise ValueError("NEST's stages are not contiguous in the chain order")
        stages.append((lo, hi))
        lo = hi
    job = nest_job(inst)
    ch = nest_chain(inst, t)
    return evaluate_plan(ch, len(stages), int(result["dataParallelDegree"]), job["batch"],
                         job["recompute"], 1, stages=stages, hbm_bytes=job["hbm_bytes"],
                         links=job["links"], options=job["options"])


def compare_with_nest(inst: NestInstance) -> dict:
    """{"nest": NEST's plan under phaze's model, "phaze": phaze's DP optimum over every
    width t of the instance, "speedup": nest time / phaze time, "nest_raw": solve_nest's
    output}. Raises ValueError when NEST's plan does not fit under phaze's memory model
    (then it is not a point of phaze's search space)."""
    from phaze.place.dp import best_plan

    raw = solve_nest(inst)
    nest = nest_plan_under_phaze(inst, raw)
    if not nest["feasible"]:
        raise ValueError(f"NEST's plan does not fit under phaze's memory model: {nest['reason']}")
    job = nest_job(inst)
    best = None
    for t in sorted(inst.widths):
        pl = best_plan(nest_chain(inst, t), job["devices"], job["batch"], job["recompute"],
                       hbm_bytes=job["hbm_bytes"], links=job["links"], options=job["options"])
        if pl and (best is None or pl["time_per_batch_s"] < best["time_per_batch_s"]):
            best = pl
    return {"nest": nest, "phaze": best, "nest_raw": raw,
            "speedup": nest["time_per_batch_s"] / best["time_per_batch_s"] if best else math.nan}
