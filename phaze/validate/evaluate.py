"""Evaluate each measured run's strategy with phaze's performance model and compare.

The model itself is NOT here: a prediction comes from the placement stage's fixed-strategy
evaluation (`phaze.place.evaluate.evaluate_plan`, the same code behind `phaze evaluate`)
on the a100 preset, which uses the operator graphs (phaze.model) and the cost model
(phaze.cost). This module only (1) turns a published row into a strategy, (2) searches
the microbatch size and interleave depth where the paper does not give them, and
(3) converts the predicted iteration time to the paper's metric (seconds, or Eq. 3
TFLOP/s per GPU).

An `Evaluator` is any callable (case, mbs, interleave, params) -> PlanResult; tests inject
closed-form ones, `phaze validate` uses `plan_evaluator` (the real code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from phaze.errors import UserError
from phaze.validate.data import Case
from phaze.validate.flops import eq3_tflops_per_gpu

ARCH_PRESET = "a100"
MBS_CHOICES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class PlanResult:
    time_per_batch_s: float
    memory_per_device_bytes: float
    breakdown: dict = field(default_factory=dict)   # seconds per term, as the evaluator reports
    feasible: bool = True                           # fits the device memory


Evaluator = Callable[[Case, int, int, dict | None], PlanResult]


@dataclass(frozen=True)
class Prediction:
    case: Case
    mbs: int
    interleave: int
    searched: bool                  # True: mbs/interleave chosen by search (not published)
    time_per_batch_s: float
    tflops_per_gpu: float           # Eq. 3 convention
    memory_per_device_bytes: float
    breakdown: dict

    @property
    def predicted(self) -> float:
        """The prediction in the table's metric."""
        if self.case.metric == "tflops_per_gpu":
            return self.tflops_per_gpu
        return self.time_per_batch_s

    @property
    def error_pct(self) -> float:
        """Signed relative error of the prediction, in percent of the measured figure."""
        return 100.0 * (self.predicted - self.case.measured) / self.case.measured


def candidates(case: Case) -> list[tuple[int, int]]:
    """(microbatch, interleave) pairs to try. Published values are used as given.

    Megatron-LM constraints: the microbatch divides the per-replica batch; interleave v
    divides the layers per stage, needs p > 1, and (Narayanan SC'21 Section 2.2.2) the
    number of microbatches per replica must be a multiple of p."""
    per_replica = case.batch // case.dp
    mbs_list = [case.microbatch] if case.microbatch else \
        [b for b in MBS_CHOICES if per_replica % b == 0]
    out = []
    for b in mbs_list:
        if case.interleave:
            out.append((b, case.interleave))
            continue
        out.append((b, 1))
        if case.pp > 1 and (per_replica // b) % case.pp == 0:
            per_stage = case.layers // case.pp
            out.extend((b, v) for v in range(2, per_stage + 1)
                       if per_stage % v == 0 and case.layers % case.pp == 0)
    return out


def predict(case: Case, evaluator: Evaluator, params: dict | None = None) -> Prediction:
    """Best prediction over the candidates (fastest memory-feasible plan, as a Megatron
    user tunes them); published values leave a single candidate."""
    cands = candidates(case)
    if not cands:
        raise UserError(f"no microbatch divides the per-replica batch {case.batch // case.dp}",
                        field=case.name)
    best = None
    for b, v in cands:
        r = evaluator(case, b, v, params)
        key = (not r.feasible, r.time_per_batch_s)
        if best is None or key < best[0]:
            best = (key, b, v, r)
    _, b, v, r = best
    searched = case.microbatch is None or case.interleave is None
    return Prediction(
        case=case, mbs=b, interleave=v, searched=searched,
        time_per_batch_s=r.time_per_batch_s,
        tflops_per_gpu=eq3_tflops_per_gpu(r.time_per_batch_s, case.gpus, case.batch, case.seq,
                                          case.layers, case.hidden, case.vocab),
        memory_per_device_bytes=r.memory_per_device_bytes, breakdown=dict(r.breakdown))


def mean_abs_error_pct(preds: list[Prediction]) -> float:
    return sum(abs(p.error_pct) for p in preds) / len(preds)


def max_abs_error_pct(preds: list[Prediction]) -> float:
    return max(abs(p.error_pct) for p in preds)


def model_spec_of(case: Case):
    """The Megatron GPT of a published row: pre-LN, learned positions, biases, GELU,
    FFN 4h, tied embeddings (as the zoo's gpt-* entries)."""
    from phaze.model.spec import ModelSpec
    return ModelSpec(name=f"gpt-{case.name.split('/')[0].lower()}", hidden=case.hidden,
                     layers=case.layers, heads=case.heads, ffn=4 * case.hidden,
                     vocab=case.vocab, seq=case.seq, max_positions=case.seq,
                     source=case.table)


# Korthikanti et al. Section 5: selective recomputation recomputes the attention core
# (QK^T, softmax, softmax dropout, attention over V) in the backward pass.
SELECTIVE_RECOMPUTE_OPS = ("attn.scores", "attn.softmax", "attn.dropout", "attn.context")

# Terms the placement evaluation does not model yet (see docs/validate.md, "interface"):
#   optimizer_bytes_per_param  HBM bytes the mixed-precision Adam step moves per parameter:
#       read fp32 grad, master, m, v (16), write master, m, v (12), write bf16 weight (2)
#   static_bytes_per_param     Megatron's memory per parameter with fp32 main gradients:
#       bf16 weight 2 + fp32 grad 4 + fp32 master 4 + Adam m, v 8 (Korthikanti Figure 1)
#   p2p_scatter_gather         Narayanan Section 4.1: a stage boundary sends 1/t of the
#       activation on each of the t IB links, then all-gathers it over NVLink
EXTRA_DEFAULTS = {"optimizer_bytes_per_param": 30.0, "static_bytes_per_param": 18.0,
                  "p2p_scatter_gather": True}


def split_params(params: dict | None):
    """(CostParams overrides, extra-term values) from one flat parameter dict."""
    from dataclasses import fields

    from phaze.cost.params import CostParams
    names = {f.name for f in fields(CostParams)}
    params = dict(params or {})
    cost = {k: v for k, v in params.items() if k in names}
    extra = {**EXTRA_DEFAULTS, **{k: v for k, v in params.items() if k in EXTRA_DEFAULTS}}
    unknown = set(params) - names - set(EXTRA_DEFAULTS)
    if unknown:
        raise KeyError(f"unknown model parameters {sorted(unknown)}")
    return CostParams(**cost), extra


def _layer_latencies(graph, arch, network, cost_params):
    """{layer index: (fwd_s, bwd_s)}, the TP-collective share, and the forward time of the
    selectively recomputed ops; ops of a pass run one after another (a GPU runs kernels
    serially), each on all cores of its class."""
    from phaze.cost.api import op_latencies

    lat, tp, sel = {}, {}, {}
    for li, layer in enumerate(graph.layers):
        vals = []
        for ops in (layer.fwd, layer.bwd):
            if not ops:
                vals.append((0.0, 0.0, 0.0))
                continue
            c = op_latencies(list(ops), arch, network, tp=graph.tp, params=cost_params).lat_all_s[0]
            coll = sum(float(c[k]) for k, o in enumerate(ops) if o.kind == "collective")
            s = sum(float(c[k]) for k, o in enumerate(ops) if o.name in SELECTIVE_RECOMPUTE_OPS)
            vals.append((float(c.sum()), coll, s))
        lat[li] = (vals[0][0], vals[1][0])
        tp[li] = (vals[0][1], vals[1][1])
        sel[li] = vals[0][2]
    return lat, tp, sel


def plan_evaluator(case: Case, mbs: int, interleave: int, params: dict | None = None) -> PlanResult:
    """The real model: graphs (phaze.model), op latencies (phaze.cost) summed per layer,
    placement's fixed-strategy evaluation (phaze.place.plan.evaluate_plan) on the a100
    preset, plus the terms listed in EXTRA_DEFAULTS.

    `params` overrides model parameters by name (calibration only); None means the
    shipped defaults."""
    from dataclasses import replace

    import numpy as np

    from phaze.hw.presets import get_preset
    from phaze.model.graph import build_graph
    from phaze.place.chain import chain_from_graph
    from phaze.place.plan import Links, PlanOptions, evaluate_plan

    cost_params, extra = split_params(params)
    arch = get_preset(ARCH_PRESET)
    net = arch.network
    graph = build_graph(model_spec_of(case), seq=case.seq, mbs=mbs, tp=case.tp,
                        sequence_parallel=case.sequence_parallel)
    lat, tp, sel = _layer_latencies(graph, arch, net, cost_params)
    if case.recompute == "selective":
        # the recomputed attention core runs again before each block's backward
        lat = {li: (f, b + sel[li]) for li, (f, b) in lat.items()}
    chain = chain_from_graph(graph, layer_latency=lat, layer_tp_s=tp)
    if case.recompute == "selective":
        acts = np.array([lg.activation_bytes.get("selective", lg.activation_bytes["none"])
                         for lg in graph.expanded()])
        chain = replace(chain, act_none_bytes=acts)
    if extra["p2p_scatter_gather"] and not case.sequence_parallel and case.tp > 1:
        chain = replace(chain, out_bytes=chain.out_bytes / case.tp)
    eff = cost_params.link_bw_efficiency
    links = Links(node_size=net.devices_per_node, intra_bw_Bps=net.intra_bw_Bps * eff,
                  intra_latency_s=net.intra_latency_s, inter_bw_Bps=net.inter_bw_Bps * eff,
                  inter_latency_s=net.inter_latency_s)
    static = extra["static_bytes_per_param"]
    options = PlanOptions(optimizer="adam", weight_bytes=2.0, grad_bytes=4.0,
                          adam_state_bytes=static - 6.0)
    rc = "full" if case.recompute == "full" else "none"
    r = evaluate_plan(chain, case.pp, case.dp, case.batch, rc, interleave,
                      hbm_bytes=arch.hbm_bytes, links=links, options=options,
                      peak_flops=arch.peak_flops)
    if "time_per_batch_s" not in r:
        return PlanResult(float("inf"), float("inf"), {}, feasible=False)
    # optimizer step: a memory-bound pass over the parameters of the busiest device
    from phaze.validate.memory import params_per_device
    dev_params = params_per_device(graph, case.pp, interleave)
    opt_s = float(dev_params.max()) * extra["optimizer_bytes_per_param"] / (
        arch.hbm_bw_Bps * cost_params.hbm_bw_efficiency)
    breakdown = {k: r[k] for k in ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s")}
    breakdown["optimizer_s"] = opt_s
    breakdown["params_optimizer_bytes_median_device"] = float(np.median(dev_params)) * static
    breakdown["params_optimizer_bytes_max_device"] = float(dev_params.max()) * static
    return PlanResult(time_per_batch_s=r["time_per_batch_s"] + opt_s,
                      memory_per_device_bytes=r["memory_per_device_bytes"],
                      breakdown=breakdown, feasible=r["feasible"])
