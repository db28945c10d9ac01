"""The in-process sweep for one (model, seq) as a SearchProblem (strategies.py):
graphs (phaze.model) x archs (grid) -> per-layer scheduling problems (phaze.sched adapter
+ phaze.cost) -> lower bounds (sched.heuristic.lower_bound_s: critical path and work /
cores, no ILP) or solved makespans (sched.solve.solve_problem) -> placement DP over the
DP-only axes (HBM x recompute) for every microbatch size -> best samples/s.

The DP is phaze.place's default-mode DP (`best_plan` on `chain_from_graph(graph,
layer_latency)`, the same code that writes the workflow's placement tables), best over
the graph variants (TP widths, sequence parallelism, CP sizes and, for an MoE model, the
expert-parallel sizes of the placement's ep axis that divide its experts: one graph each,
model.graph.graph_eps, searched at its own ep); the fixed Megatron strategy is
`evaluate_plan` with its p x d x t.
With dp="reference" it is the reference-mode DP (phaze.place.refdp,
docs/reference.md#placement-dp) fed with an instance built here the way the reference's
outer search builds it: one node per layer instance with its parameter and activation
bytes and fwd/bwd times, a chain of edges carrying the layer's output bytes, one
bandwidth (the network's inter-node link), and the model's fixed Megatron strategy.

Identical scheduling problems are solved once per search (keyed by SchedProblem.key()),
so `n_ilps` counts distinct ILPs actually solved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from phaze.sched.adapter import SCHED_PASSES
from phaze.search.select import Design
from phaze.settings import SweepSettings
from phaze.units import GiB


@dataclass
class SweepSpec:
    """One (model, seq) of a sweep: its TP widths, fixed baseline (p, d, t) and the
    sweep's settings (graph options, scheduling, placement axes, network), the same
    phaze.settings types the workflow uses. dp: "default" (phaze.place.dp) | "reference"."""

    model: str
    seq: int
    tp: tuple[int, ...] = (1,)
    settings: SweepSettings = field(default_factory=SweepSettings)
    fixed: tuple[int, int, int] | None = None
    dp: str = "default"
    cp: tuple[int, ...] = (1,)  # context-parallel sizes (graphs of seq / cp per device)
    source: str = ""            # hf config.json building `model` (default: the zoo's model)


@dataclass
class SweepProblem:
    """SearchProblem over the archs of `grid` for one model and sequence length."""

    spec: SweepSpec
    grid: pd.DataFrame
    solved: dict = field(default_factory=dict)      # problem key -> makespan_s (may be shared)
    statuses: dict = field(default_factory=dict)    # problem key -> solver status
    requested: set = field(default_factory=set)     # problem keys this search needed

    def __post_init__(self):
        from phaze.model.graph import build_graph, graph_eps
        from phaze.model.zoo import resolve_model
        from phaze.sched.adapter import attention_core_times, layer_problems
        from phaze.sched.cache import ScheduleCache

        st = self.spec.settings
        self.grid = self.grid.reset_index(drop=True)
        self.grid["arch_id"] = self.grid["arch_id"].astype(str)
        self._row = {a: i for i, a in enumerate(self.grid["arch_id"])}
        self._peak = 0.0
        # the arch's achieved HBM bandwidth: times the optimizer step of evaluations; bounds
        # leave the step out (0: an optimistic bound stays a bound)
        self._hbm_bw = 0.0
        self._bounds: dict = {}      # (peak, layer times) -> bound samples/s
        self.net = st.net()
        self.cache = ScheduleCache(st.sched.cache_dir or None)
        model = resolve_model(self.spec.source or self.spec.model).with_(name=self.spec.model)
        self.graphs = {}
        # problems[arch_index][(mbs, tp, sp, cp, ep, layer_index, pass)] = SchedProblem
        self.problems = [dict() for _ in range(len(self.grid))]
        # core[(mbs, tp, sp, cp, ep)] = (archs x layers x passes) attention-core seconds
        # (cp > 1)
        self.core = {}
        variants = [(tp, sp, cp, ep) for tp in self.spec.tp for sp in st.graph.sp_values(tp)
                    for cp in self.spec.cp for ep in graph_eps(model, st.placement.ep)]
        if self.spec.dp == "reference":
            # it places the plain graphs only (plain_key): their ILPs are all it needs
            variants = [v for v in variants if not v[1] and v[2] == 1 and v[3] in (0, 1)]
        for mbs in st.microbatch_sizes:
            for tp, sp, cp, ep in variants:
                key = (mbs, tp, sp, cp, ep)
                g = self.graphs[key] = build_graph(model, seq=self.spec.seq, mbs=mbs, tp=tp,
                                                   sequence_parallel=sp, cp=cp, ep=ep,
                                                   **st.graph.build_kwargs())
                for a, li, _layer, pass_, prob in layer_problems(g, self.grid, self.net):
                    self.problems[a][(*key, li, pass_)] = prob
                if cp > 1:
                    self.core[key] = attention_core_times(g, self.grid, self.net)

    # --- SearchProblem -------------------------------------------------------------
    def archs(self):
        return list(zip(self.grid["arch_id"], self.grid["area_mm2"].astype(float)))

    def bound(self, arch_id: str, times: dict | None = None) -> float:
        """Optimistic samples/s: the DP fed with `times` (default: lower_times(arch_id)).
        Only the largest HBM size is placed: HBM size enters the DP as its memory limit
        alone, so the largest one admits every plan of the others and its best is the best
        over all (tests/test_search_bound.py). Archs with identical times and peak FLOP/s
        (often those that differ only in GLB size) share one DP run."""
        times = self.lower_times(arch_id) if times is None else times
        return self.bound_of(times, self._peak_of(arch_id))

    def bound_of(self, times: dict, peak_flops: float, mbs: tuple | None = None) -> float:
        """bound() of any arch with these layer times and peak FLOP/s (memoised), over the
        microbatch sizes `mbs` only (default: all of the sweep's)."""
        key = (peak_flops, mbs, tuple(sorted(times.items())))
        if key not in self._bounds:
            self._peak, self._hbm_bw = peak_flops, 0.0
            self._bounds[key] = self.place(times, largest_hbm_only=True,
                                           mbs=mbs)["samples_per_s"]
        return self._bounds[key]

    def lower_times(self, arch_id: str) -> dict:
        """{(mbs, tp, sp, cp, ep, layer_index, pass): seconds} lower bounds on the arch's layer times
        (sched.heuristic.lower_bound_s: critical path and work / cores, no ILP)."""
        from phaze.sched.heuristic import lower_bound_s

        probs = self.problems[self._row[arch_id]]
        return self._with_core(self._row[arch_id],
                               {k: lower_bound_s(p) if p.n else 0.0 for k, p in probs.items()})

    def _with_core(self, a: int, times: dict) -> dict:
        """`times` plus, for every graph of cp > 1, its attention core's seconds on arch
        index `a` under the keys (mbs, tp, sp, cp, ep, layer_index, pass + "_core") (the ring
        steps of context parallelism: not a scheduled time, the same in bounds and
        evaluations)."""
        for key, arr in self.core.items():
            for li in range(arr.shape[1]):
                for k, ps in enumerate(SCHED_PASSES):
                    times[(*key, li, f"{ps}_core")] = float(arr[a, li, k])
        return times

    def evaluate(self, arch_id: str) -> Design:
        sched = self.spec.settings.sched
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
                # the workflow's solver, settings and ILP cache: the same layer times
                r = self.cache.solve(p, sched.backend(), sched.formulation,
                                     sched.solve_settings())
                self.solved[key] = r.makespan_s
                self.statuses[key] = r.status
            times[k] = self.solved[key]
        self._with_core(self._row[arch_id], times)
        self._peak = self._peak_of(arch_id)
        self._hbm_bw = self._hbm_bw_of(arch_id)
        best = self.place(times)
        area = float(self.grid.loc[self._row[arch_id], "area_mm2"])
        return Design(arch_id, area, best["samples_per_s"], plan=best, n_ilps=n_new)

    def _hbm_bw_of(self, arch_id: str) -> float:
        """The arch's achieved HBM bandwidth as the workflow's placement takes it
        (phaze.place.evaluate.sweep_hbm_bw_Bps; 0 for a grid without the column)."""
        from phaze.place.evaluate import sweep_hbm_bw_Bps

        if "hbm_bw_Bps" in self.grid.columns:
            return sweep_hbm_bw_Bps(self.grid.loc[self._row[arch_id], "hbm_bw_Bps"])
        return 0.0

    def _peak_of(self, arch_id: str) -> float:
        if "peak_flops" in self.grid.columns:
            return float(self.grid.loc[self._row[arch_id], "peak_flops"])
        return 0.0

    def n_problems(self) -> int:
        """Distinct scheduling problems in the whole sweep (what exhaustive solves)."""
        return len({p.key() for probs in self.problems for p in probs.values()})

    # --- placement ------------------------------------------------------------------
    def place(self, times: dict, largest_hbm_only: bool = False,
              mbs: tuple | None = None) -> dict:
        """Best plan over mbs x HBM x recompute x graph variants with these layer times
        (phaze.place.driver's code, as the workflow's placement jobs run it);
        samples_per_s is NaN when no plan fits. Also the fixed strategy's best samples/s
        (not with largest_hbm_only: then only the largest HBM size is placed); `mbs`:
        only these microbatch sizes (default: the sweep's)."""
        if self.spec.dp == "reference":
            return self.place_reference(times)
        from phaze.place.chain import chain_from_graph
        from phaze.place.driver import best_over_variants, context, fixed_plan

        st = self.spec.settings
        ctx = context(st, None if largest_hbm_only else self.spec.fixed)
        hbms, recs = ctx["hbm_bytes"], ctx["recompute"]
        if largest_hbm_only:
            hbms = [max(hbms)]
        best = {"samples_per_s": math.nan, "fixed_samples_per_s": math.nan}
        sizes = st.microbatch_sizes
        for mbs in (sizes if mbs is None else [b for b in sizes if b in mbs]):
            chains = {}
            for key, g in self.graphs.items():
                if key[0] == mbs:
                    lat = {li: tuple(times[(*key, li, ps)] for ps in SCHED_PASSES)
                           for li in range(len(g.layers))}
                    core = {li: tuple(times[(*key, li, f"{ps}_core")] for ps in SCHED_PASSES)
                            for li in range(len(g.layers))} if g.cp > 1 else None
                    chains[key[1:]] = chain_from_graph(g, layer_latency=lat, layer_core_s=core)
            plans = best_over_variants(chains, ctx, hbms, recs, self._peak, self._hbm_bw)
            for hbm in hbms:
                for rec in recs:
                    got = plans[(float(hbm), rec)]
                    if got and not (got[0]["samples_per_s"] <= best["samples_per_s"]):
                        plan, (_t, sp, _cp, _ep) = got
                        best.update({k: v for k, v in plan.items()
                                     if isinstance(v, (int, float, str))})
                        best.update(hbm_bytes=float(hbm), stages=plan.get("stages"),
                                    sequence_parallel=bool(sp))
                    if ctx["fixed"]:
                        fp, _var = fixed_plan(chains, ctx, float(hbm), rec, self._peak,
                                              self._hbm_bw)
                        if fp and fp.get("feasible") and \
                                not (fp["samples_per_s"] <= best["fixed_samples_per_s"]):
                            best["fixed_samples_per_s"] = fp["samples_per_s"]
        return best

    def place_reference(self, times: dict) -> dict:
        from phaze.place.instance import parse_instance
        from phaze.place.refdp import solve_reference

        best = {"samples_per_s": math.nan, "fixed_samples_per_s": math.nan}
        st = self.spec.settings
        for mbs in st.microbatch_sizes:
            for hbm in st.placement.hbm_gib:
                for rec in st.placement.recompute:
                    if rec == "selective":      # the reference knows recompute on/off only
                        continue
                    inst = parse_instance(self.instance(times, mbs, hbm * GiB, rec))
                    out = solve_reference(inst)
                    fx = out["fixedStrategyTimePerBatch"]
                    if fx:
                        f_thr = st.placement.global_batch / fx
                        if not (f_thr <= best["fixed_samples_per_s"]):
                            best["fixed_samples_per_s"] = f_thr
                    if not out["feasible"]:
                        continue
                    thr = st.placement.global_batch / out["finalTimePerBatch"]
                    if not (thr <= best["samples_per_s"]):
                        best.update(samples_per_s=thr, mbs=mbs, hbm_bytes=hbm * GiB,
                                    recompute=rec, p=len(out["stages"]),
                                    d=out["dataParallelDegree"], t=out["tensorParallelDegree"],
                                    time_per_batch_s=out["finalTimePerBatch"])
        return best

    def plain_key(self, mbs: int, tp: int) -> tuple:
        """The key of the graph of (mbs, tp) without sequence, context or expert parallelism
        (ep 1 for an MoE model, 0 for a dense one); UserError when the sweep has none."""
        from phaze.errors import UserError

        for ep in (1, 0):
            if (mbs, tp, False, 1, ep) in self.graphs:
                return (mbs, tp, False, 1, ep)
        raise UserError(f"the reference DP runs {self.spec.model} at tp {tp} without sequence, "
                        "context or expert parallelism, a graph this sweep does not build",
                        field="--dp", fix="sweep sequence parallelism false, cp 1 and ep 1 "
                        "too, or use --dp default")

    def instance(self, times: dict, mbs: int, hbm_bytes: float, recompute: str) -> dict:
        """The reference DP's JSON instance for one microbatch size (docs/reference.md#placement-dp)."""
        nodes, edges = {}, {}
        n_blocks = 0
        for tp in self.spec.tp:
            key = self.plain_key(mbs, tp)
            g = self.graphs[key]
            kinds = [li for li, layer in enumerate(g.layers) for _ in range(layer.repeat)]
            chain = g.expanded()
            n_blocks = sum(1 for layer in chain if layer.kind not in ("prologue", "epilogue"))
            nodes[str(tp)] = [dict(
                id=i, parameterSize=float(layer.param_bytes),
                activationSize=float(layer.activation_bytes.get("none", 0.0)),
                optimalLatencyFw=float(times[(*key, kinds[i], "fwd")]),
                optimalLatencyBw=float(times[(*key, kinds[i], "bwd")]),
                isTensorParallelized=tp > 1) for i, layer in enumerate(chain)]
            edges[str(tp)] = [dict(sourceId=i, destId=i + 1,
                                   communicationCost=float(chain[i].output_bytes))
                              for i in range(len(chain) - 1)]
        fixed = self.spec.fixed
        if fixed is None or fixed[2] not in self.spec.tp:
            fixed = (1, min(self.spec.tp), 1)
        p, d, t = fixed
        pl = self.spec.settings.placement
        return {"maxMemoryPerDevice": float(hbm_bytes), "maxDevices": int(pl.devices),
                "bandwidth": float(self.net.inter_bw_Bps),
                "mbsInBatch": int(math.ceil(pl.global_batch / mbs)),
                "activationRecomputation": recompute != "none",
                "optimizerAlgorithm": "Adam" if pl.optimizer == "adam" else "SGD",
                "fixedPP": int(p), "fixedTMPC": int(t), "fixedDP": int(d),
                "numTransformerLayers": int(max(n_blocks, 1)), "nodes": nodes, "edges": edges}
