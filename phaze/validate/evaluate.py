"""Evaluate each measured run's strategy with phaze's performance model and compare.

The model itself is NOT here: a prediction comes from the placement stage's fixed-strategy
evaluation (`phaze.place.evaluate.evaluate_model`, the code behind `phaze evaluate`)
on the a100 preset, which uses the operator graphs (phaze.model), the cost model
(phaze.cost, the preset's calibrated parameters) and phaze.place.plan.evaluate_plan. This module only (1) turns a published row into a strategy, (2) searches
the microbatch size and interleave depth where the paper does not give them, and
(3) converts the predicted iteration time to the paper's metric (seconds, or Eq. 3
TFLOP/s per GPU).

An `Evaluator` is any callable (case, mbs, interleave, params) -> PlanResult; tests inject
closed-form ones, `phaze validate` uses `plan_evaluator` (the real code).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    recompute_searched: bool = False  # True: case.recompute chosen by search (not published)

    @property
    def predicted(self) -> float:
        """The prediction in the table's metric."""
        if self.case.metric == "tflops_per_gpu":
            return self.tflops_per_gpu
        if self.case.metric == "mfu_pct":
            return mfu_pct(self.case, self.time_per_batch_s)
        if self.case.metric == "tokens_per_s_per_gpu":
            c = self.case
            return c.batch * c.seq / self.time_per_batch_s / c.gpus
        return self.time_per_batch_s

    @property
    def error_pct(self) -> float:
        """Signed relative error of the prediction, in percent of the measured figure."""
        return 100.0 * (self.predicted - self.case.measured) / self.case.measured


def mfu_pct(case: Case, time_s: float) -> float:
    """Megatron's MFU: num_floating_point_operations (no-recompute form, Narayanan Eq. 3
    with 72 and V/12lh) over time x GPUs x the preset's dense bf16 peak."""
    from phaze.hw.presets import get_preset
    from phaze.place.evaluate import narayanan_flops

    F = narayanan_flops(case.batch, case.seq, case.layers, case.hidden, case.vocab, False)
    return 100.0 * F / (time_s * case.gpus * get_preset(case.arch).peak_flops)


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
                        field=case.name,
                        fix=f"give {case.name} a microbatch, or a batch / dp divisible by one of {MBS_CHOICES}")
    # recompute: as published, or (recompute "searched") none, then selective, then full:
    # the least recomputation that fits the device, as a user tunes it
    variants = [case] if case.recompute != "searched" else \
        [replace(case, recompute=m) for m in ("none", "selective", "full")]
    best = None
    for k, cv in enumerate(variants):
        for b, v in cands:
            r = evaluator(cv, b, v, params)
            key = (not r.feasible, k if len(variants) > 1 else 0, r.time_per_batch_s)
            if best is None or key < best[0]:
                best = (key, b, v, r, cv)
    _, b, v, r, case = best
    searched = case.microbatch is None or case.interleave is None
    return Prediction(
        case=case, mbs=b, interleave=v, searched=searched,
        time_per_batch_s=r.time_per_batch_s,
        tflops_per_gpu=eq3_tflops_per_gpu(r.time_per_batch_s, case.gpus, case.batch, case.seq,
                                          case.layers, case.hidden, case.vocab),
        memory_per_device_bytes=r.memory_per_device_bytes, breakdown=dict(r.breakdown),
        recompute_searched=len(variants) > 1)


def mean_abs_error_pct(preds: list[Prediction]) -> float:
    return sum(abs(p.error_pct) for p in preds) / len(preds)


def max_abs_error_pct(preds: list[Prediction]) -> float:
    return max(abs(p.error_pct) for p in preds)


def model_spec_of(case: Case):
    """The model of a published row. family "gpt": Megatron GPT (pre-LN, learned positions,
    biases, GELU, FFN 4h unless given, tied embeddings as the row says; the zoo's gpt-*
    entries); "llama": RMSNorm, SwiGLU, RoPE, no biases, untied, no dropout, Megatron's
    fused QKV (Hugging Face Llama shapes); "nemotron": LayerNorm, squared ReLU (ungated), RoPE,
    no biases, untied, no dropout (Nemotron-4). A row with `zoo` (Megatron-Bridge's table) is
    that zoo model, with `mtp_layers` more copies of its last layer (with_extra_layers)."""
    from phaze.model.spec import ModelSpec
    if case.zoo:
        from phaze.model.zoo import get_model
        return with_extra_layers(get_model(case.zoo), case.mtp_layers)
    name = case.name.split("/")[0].lower()
    common = dict(hidden=case.hidden, layers=case.layers, heads=case.heads,
                  ffn=case.ffn or 4 * case.hidden, vocab=case.vocab, seq=case.seq,
                  kv_heads=case.kv_heads, tied_embeddings=case.tied_embeddings, source=case.table)
    if case.family == "llama":
        return ModelSpec(name=name, activation="swiglu", norm="rmsnorm", position="rope",
                         bias=False, dropout=False, **common)
    if case.family == "nemotron":
        return ModelSpec(name=name, activation="relu2", norm="layernorm", position="rope",
                         bias=False, dropout=False, **common)
    return ModelSpec(name=f"gpt-{name}" if not name.startswith("gpt") else name,
                     max_positions=case.seq, dropout=case.dropout, **common)


def with_extra_layers(spec, n: int):
    """`spec` with n more copies of its last layer (every per-layer kind list extended by its
    last entry): a multi-token-prediction block run as one more decoder layer
    (ModelSpec.with_extra_layers)."""
    return spec.with_extra_layers(n)


def split_params(params: dict | None, arch: str = ARCH_PRESET):
    """(CostParams, PlanOptions overrides) from one flat dict of parameter overrides on top
    of the a100 preset's calibrated defaults; keys are CostParams or PlanOptions fields."""
    from dataclasses import fields, replace

    from phaze.cost.params import CostParams
    from phaze.hw.presets import get_preset
    from phaze.place.evaluate import default_cost_params
    from phaze.place.plan import PlanOptions

    cost_names = {f.name for f in fields(CostParams)}
    opt_names = {f.name for f in fields(PlanOptions)}
    params = dict(params or {})
    unknown = set(params) - cost_names - opt_names
    if unknown:
        raise KeyError(f"unknown model parameters {sorted(unknown)}")
    base = default_cost_params(get_preset(arch))
    cost = replace(base, **{k: v for k, v in params.items() if k in cost_names})
    return cost, {k: v for k, v in params.items() if k in opt_names}


def _token_drop(case: Case) -> dict:
    """The PlanOptions of a run's MoE token dropping ({} for a dropless run): the graph
    evaluate_model builds takes them (graph.routed_slots)."""
    if case.moe_expert_capacity_factor is None:
        return {}
    return {"moe_expert_capacity_factor": case.moe_expert_capacity_factor,
            "moe_pad_expert_input_to_capacity": case.moe_pad_expert_input_to_capacity}


def plan_evaluator(case: Case, mbs: int, interleave: int, params: dict | None = None) -> PlanResult:
    """The real model: `phaze evaluate`'s code path (phaze.place.evaluate.evaluate_model:
    graphs -> op latencies summed per layer -> evaluate_plan) on the a100 preset.

    `params` overrides model parameters by name (calibration only); None means the
    shipped defaults, i.e. exactly what `phaze evaluate` uses."""
    from phaze.hw.presets import get_preset
    from phaze.place.evaluate import evaluate_model

    from phaze.settings import router_options

    cost, opts = split_params(params, case.arch)
    spec = model_spec_of(case)
    try:
        r = evaluate_model(spec, get_preset(case.arch), tp=case.tp, pp=case.pp,
                           dp=case.dp, mbs=mbs, batch=case.batch, recompute=case.recompute,
                           interleave=interleave, seq=case.seq,
                           sequence_parallel=case.sequence_parallel, cost_params=cost,
                           options={**({} if case.tp_overlap is None
                                       else {"tp_comm_overlap": case.tp_overlap}),
                                    **_token_drop(case), **dict(case.plan_options), **opts},
                           framework=case.framework, ddp_impl=case.ddp_impl, cp=case.cp,
                           fp8=case.fp8, fp8_recipe=case.fp8_recipe,
                           cross_entropy_fusion=case.ce_fusion, ep=case.ep,
                           expert_tp=case.expert_tp,
                           recompute_modules=case.recompute_modules or None,
                           account_embedding=case.account_embedding,
                           account_loss=case.account_loss,
                           pipeline_layout=case.pipeline_layout or None,
                           mtp_layers=case.mtp_layers or None,
                           graph_options=router_options(case, spec) or None)
    except ValueError:
        return PlanResult(float("inf"), float("inf"), {}, feasible=False)
    if "time_per_batch_s" not in r:
        return PlanResult(float("inf"), float("inf"), {}, feasible=False)
    from phaze.place.plan import BREAKDOWN_KEYS
    breakdown = {k: r[k] for k in BREAKDOWN_KEYS}
    return PlanResult(time_per_batch_s=r["time_per_batch_s"],
                      memory_per_device_bytes=r["memory_per_device_bytes"],
                      breakdown=breakdown, feasible=r["feasible"])
