"""The in-process sweep for one (model, seq) as a SearchProblem (strategies.py):
graphs (phaze.model) x archs (grid) -> per-layer scheduling problems (phaze.sched adapter
+ phaze.cost) -> lower bounds (sched.heuristic.lower_bound_s: critical path and work /
cores, no ILP) or solved makespans (sched.solve.solve_problem) -> placement DP over the
DP-only axes (HBM x recompute) for every microbatch size -> best samples/s.

The DP is phaze.place's default-mode DP (`best_plan` on `chain_from_graph(graph,
layer_latency)`, the same code that writes the workflow's placement tables), best over
the TP widths; the fixed Megatron strategy is `evaluate_plan` with its p x d x t.
With dp="reference" it is the reference-mode DP (phaze.place.refdp, REFERENCE.md
section 6) fed with an instance built here the way the reference's outer search builds
it: one node per layer instance with its parameter and activation bytes and fwd/bwd
times, a chain of edges carrying the layer's output bytes, one bandwidth (the network's
inter-node link), and the model's fixed Megatron strategy.

Identical scheduling problems are solved once per search (keyed by SchedProblem.key()),
so `n_ilps` counts distinct ILPs actually solved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from phaze.search.baselines import megatron_fixed
from phaze.search.select import Design
from phaze.units import GiB


@dataclass
class SweepSpec:
    model: str
    seq: int
    mbs: tuple[int, ...] = (1, 2)
    tp: tuple[int, ...] = (1,)
    hbm_gib: tuple[float, ...] = (32.0, 64.0, 80.0)
    recompute: tuple[str, ...] = ("none", "full")
    devices: int = 1024
    batch: int = 4096
    optimizer: str = "sgd"
    network: str = "tpuv4-ici"
    solver: str = "cpsat"
    time_limit_s: float = 10.0
    dp: str = "default"              # "default" (phaze.place.dp) | "reference" (refdp)


@dataclass
class SweepProblem:
    """SearchProblem over the archs of `grid` for one model and sequence length."""

    spec: SweepSpec
    grid: pd.DataFrame
    solved: dict = field(default_factory=dict)      # problem key -> makespan_s (may be shared)
    statuses: dict = field(default_factory=dict)    # problem key -> solver status
    requested: set = field(default_factory=set)     # problem keys this search needed

    def __post_init__(self):
        from phaze.hw.presets import get_network
        from phaze.model.graph import build_graph
        from phaze.model.zoo import resolve_model
        from phaze.sched.adapter import layer_problems

        self.grid = self.grid.reset_index(drop=True)
        self.grid["arch_id"] = self.grid["arch_id"].astype(str)
        self._row = {a: i for i, a in enumerate(self.grid["arch_id"])}
        self._peak = 0.0
        self.net = _network(self.spec.network, get_network)
        model = resolve_model(self.spec.model)
        self.graphs = {}
        # problems[arch_index][(mbs, tp, layer_index, pass)] = SchedProblem
        self.problems = [dict() for _ in range(len(self.grid))]
        for mbs in self.spec.mbs:
            for tp in self.spec.tp:
                g = build_graph(model, seq=self.spec.seq, mbs=mbs, tp=tp)
                self.graphs[(mbs, tp)] = g
                for a, li, _layer, pass_, prob in layer_problems(g, self.grid, self.net, tp=tp):
                    self.problems[a][(mbs, tp, li, pass_)] = prob

    # --- SearchProblem -------------------------------------------------------------
    def archs(self):
        return list(zip(self.grid["arch_id"], self.grid["area_mm2"].astype(float)))

    def bound(self, arch_id: str) -> float:
        from phaze.sched.heuristic import lower_bound_s

        probs = self.problems[self._row[arch_id]]
        self._peak = self._peak_of(arch_id)
        times = {k: lower_bound_s(p) for k, p in probs.items()}
        return self.place(times)["samples_per_s"]

    def evaluate(self, arch_id: str) -> Design:
        from phaze.sched.solve import solve_problem

        probs = self.problems[self._row[arch_id]]
        times, n_new = {}, 0
        for k, p in probs.items():
            key = p.key()
            # n_ilps counts the distinct ILPs this search needs; their results may come
            # from a store shared with another search (as the workflow's ILP cache does),
            # so that searches compared on one sweep see identical layer times even when a
            # time-limited ILP's incumbent would depend on timing
            if key not in self.requested:
                self.requested.add(key)
                n_new += 1
            if key not in self.solved:
                r = solve_problem(p, solver=self.spec.solver,
                                  settings={"time_limit_s": self.spec.time_limit_s})
                self.solved[key] = r.makespan_s
                self.statuses[key] = r.status
            times[k] = self.solved[key]
        self._peak = self._peak_of(arch_id)
        best = self.place(times)
        area = float(self.grid.loc[self._row[arch_id], "area_mm2"])
        return Design(arch_id, area, best["samples_per_s"], plan=best, n_ilps=n_new)

    def _peak_of(self, arch_id: str) -> float:
        if "peak_flops" in self.grid.columns:
            return float(self.grid.loc[self._row[arch_id], "peak_flops"])
        return 0.0

    def n_problems(self) -> int:
        """Distinct scheduling problems in the whole sweep (what exhaustive solves)."""
        return len({p.key() for probs in self.problems for p in probs.values()})

    # --- placement ------------------------------------------------------------------
    def place(self, times: dict) -> dict:
        """Best plan over mbs x HBM x recompute with these layer times; samples_per_s is
        NaN when no plan fits. Also the fixed Megatron strategy's best samples/s."""
        if self.spec.dp == "reference":
            return self.place_reference(times)
        from phaze.place.chain import chain_from_graph
        from phaze.place.dp import best_plan
        from phaze.place.plan import Links, PlanOptions, evaluate_plan

        links = Links.from_any(self.net)
        options = PlanOptions(optimizer=self.spec.optimizer)
        fixed = megatron_fixed(self.spec.model)
        peak = self._peak
        best = {"samples_per_s": math.nan, "fixed_samples_per_s": math.nan}
        for mbs in self.spec.mbs:
            chains = {}
            for tp in self.spec.tp:
                g = self.graphs[(mbs, tp)]
                lat = {li: (times[(mbs, tp, li, "fwd")], times[(mbs, tp, li, "bwd")])
                       for li in range(len(g.layers))}
                chains[tp] = chain_from_graph(g, layer_latency=lat)
            for hbm in self.spec.hbm_gib:
                for rec in self.spec.recompute:
                    for tp, ch in chains.items():
                        plan = best_plan(ch, self.spec.devices, self.spec.batch, rec,
                                         hbm_bytes=hbm * GiB, links=links, options=options,
                                         peak_flops=peak)
                        if plan and plan.get("feasible", True) and \
                                not (plan["samples_per_s"] <= best["samples_per_s"]):
                            best.update({k: v for k, v in plan.items()
                                         if isinstance(v, (int, float, str))})
                            best["hbm_bytes"] = hbm * GiB
                            best["stages"] = plan.get("stages")
                    if fixed is not None and fixed[2] in chains:
                        p, d, t = fixed
                        try:
                            fp = evaluate_plan(chains[t], p, d, self.spec.batch, rec, 1,
                                               hbm_bytes=hbm * GiB, links=links,
                                               options=options, peak_flops=peak)
                        except ValueError:
                            fp = None
                        if fp and fp.get("feasible") and \
                                not (fp["samples_per_s"] <= best["fixed_samples_per_s"]):
                            best["fixed_samples_per_s"] = fp["samples_per_s"]
        return best

    def place_reference(self, times: dict) -> dict:
        from phaze.place.instance import parse_instance
        from phaze.place.refdp import solve_reference

        best = {"samples_per_s": math.nan, "fixed_samples_per_s": math.nan}
        for mbs in self.spec.mbs:
            for hbm in self.spec.hbm_gib:
                for rec in self.spec.recompute:
                    inst = parse_instance(self.instance(times, mbs, hbm * GiB, rec))
                    out = solve_reference(inst)
                    fx = out["fixedStrategyTimePerBatch"]
                    if fx:
                        f_thr = self.spec.batch / fx
                        if not (f_thr <= best["fixed_samples_per_s"]):
                            best["fixed_samples_per_s"] = f_thr
                    if not out["feasible"]:
                        continue
                    thr = self.spec.batch / out["finalTimePerBatch"]
                    if not (thr <= best["samples_per_s"]):
                        best.update(samples_per_s=thr, mbs=mbs, hbm_bytes=hbm * GiB,
                                    recompute=rec, p=len(out["stages"]),
                                    d=out["dataParallelDegree"], t=out["tensorParallelDegree"],
                                    time_per_batch_s=out["finalTimePerBatch"])
        return best

    def instance(self, times: dict, mbs: int, hbm_bytes: float, recompute: str) -> dict:
        """The reference DP's JSON instance for one microbatch size (REFERENCE.md 6)."""
        nodes, edges = {}, {}
        n_blocks = 0
        for tp in self.spec.tp:
            g = self.graphs[(mbs, tp)]
            kinds = [li for li, layer in enumerate(g.layers) for _ in range(layer.repeat)]
            chain = g.expanded()
            n_blocks = sum(1 for layer in chain if layer.kind not in ("prologue", "epilogue"))
            nodes[str(tp)] = [dict(
                id=i, parameterSize=float(layer.param_bytes),
                activationSize=float(layer.activation_bytes.get("none", 0.0)),
                optimalLatencyFw=float(times[(mbs, tp, kinds[i], "fwd")]),
                optimalLatencyBw=float(times[(mbs, tp, kinds[i], "bwd")]),
                isTensorParallelized=tp > 1) for i, layer in enumerate(chain)]
            edges[str(tp)] = [dict(sourceId=i, destId=i + 1,
                                   communicationCost=float(chain[i].output_bytes))
                              for i in range(len(chain) - 1)]
        fixed = megatron_fixed(self.spec.model)
        if fixed is None or fixed[2] not in self.spec.tp:
            fixed = (1, min(self.spec.tp), 1)
        p, d, t = fixed
        return {"maxMemoryPerDevice": float(hbm_bytes), "maxDevices": int(self.spec.devices),
                "bandwidth": float(self.net.inter_bw_Bps),
                "mbsInBatch": int(math.ceil(self.spec.batch / mbs)),
                "activationRecomputation": recompute != "none",
                "optimizerAlgorithm": "Adam" if self.spec.optimizer == "adam" else "SGD",
                "fixedPP": int(p), "fixedTMPC": int(t), "fixedDP": int(d),
                "numTransformerLayers": int(max(n_blocks, 1)), "nodes": nodes, "edges": edges}


def _network(text: str, get_network):
    """A network preset name, or a JSON object of phaze.hw.arch.Network fields."""
    import json

    from phaze.errors import UserError
    from phaze.hw.arch import Network

    if text.lstrip().startswith("{"):
        try:
            return Network.from_dict(json.loads(text))
        except (ValueError, TypeError) as e:
            raise UserError(f"not a valid network object ({e})", field="--network") from None
    return get_network(text)
