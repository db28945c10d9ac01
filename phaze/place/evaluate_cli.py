"""`phaze evaluate`: one fixed plan of a zoo model on an arch preset (or grid arch id).

Layer latencies: each op of a pass runs on all cores of its class (intra-op), one after the
other (a device runs a layer's ops serially when no schedule is given), from the cost model
(phaze.cost.api.op_latencies); TP collectives are ops of the graph and are summed apart
for the breakdown. TFLOP/s per GPU uses Narayanan et al. (SC'21) Eq. 3:
  with full recomputation    F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h))
  without recomputation      F = 72 B s l h^2 (1 + s/(6h) + V/(12 l h))
(the logit layer is never recomputed: 6 B s h V FLOP either way), divided by time and GPUs.
"""

from __future__ import annotations

import sys

from phaze.errors import UserError
from phaze.place.chain import chain_from_graph
from phaze.place.plan import Links, PlanOptions, evaluate_plan


def narayanan_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int,
                    recompute: bool) -> float:
    B, s, l, h, V = batch, seq, layers, hidden, vocab
    if recompute:
        return 96.0 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    return 72.0 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))


# Korthikanti et al. (MLSys'23) Section 5: selective recomputation re-runs the attention
# core (QK^T, softmax, softmax dropout, attention over V) before each block's backward.
SELECTIVE_RECOMPUTE_OPS = ("attn.scores", "attn.softmax", "attn.dropout", "attn.context")

# Megatron-LM's training settings that `phaze evaluate` models (docs/place.md):
# fp32 main gradients (2 + 4 + 12 = 18 B/param with Adam, Korthikanti Figure 1), the
# optimizer step timed as a memory-bound pass, scatter/gather pipeline p2p.
EVALUATE_OPTIONS = dict(grad_bytes=4.0, optimizer_bytes_per_param=30.0, p2p_scatter_gather=True)


def layer_latencies(graph, arch, network, params=None, selective=False):
    """{layer index: (fwd_s, bwd_s)} and the TP-collective part, ops summed serially.
    With selective=True the backward also re-runs SELECTIVE_RECOMPUTE_OPS' forward."""
    from phaze.cost.api import op_latencies

    lat, tp = {}, {}
    for li, layer in enumerate(graph.layers):
        vals = []
        for ops in (layer.fwd, layer.bwd):
            if not ops:
                vals.append((0.0, 0.0, 0.0))
                continue
            c = op_latencies(list(ops), arch, network, tp=graph.tp, params=params).lat_all_s[0]
            coll = sum(float(c[k]) for k, o in enumerate(ops) if o.kind == "collective")
            sel = sum(float(c[k]) for k, o in enumerate(ops) if o.name in SELECTIVE_RECOMPUTE_OPS)
            vals.append((float(c.sum()), coll, sel))
        lat[li] = (vals[0][0], vals[1][0] + (vals[0][2] if selective else 0.0))
        tp[li] = (vals[0][1], vals[1][1])
    return lat, tp


def default_cost_params(arch):
    """The cost model's parameters for an arch: the calibrated set of its preset if any."""
    from phaze.cost import params as cp

    get = getattr(cp, "preset_params", None)
    return get(getattr(arch, "name", "")) if get else cp.CostParams()


def evaluate_model(spec, arch, *, tp: int, pp: int, dp: int, mbs: int, batch: int,
                   recompute: str = "full", interleave: int = 1, seq: int | None = None,
                   sequence_parallel: bool = False, network=None, optimizer: str = "adam",
                   zero1: bool = False, cost_params=None, options: dict | None = None) -> dict:
    """One fixed plan of `spec` on `arch`: graph -> op latencies summed per layer -> uniform
    Megatron split (evaluate_plan). recompute: none | selective | full. `cost_params`
    (CostParams) and `options` (PlanOptions overrides) default to the arch's calibrated
    parameters and EVALUATE_OPTIONS. Returns the plan dict plus tflops_per_gpu (Eq. 3),
    model, arch, seq, hbm_bytes. Raises ValueError for a split that does not fit."""
    from dataclasses import replace

    import numpy as np

    from phaze.model.graph import build_graph

    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")
    seq = seq or spec.seq
    network = network or arch.network
    cost_params = cost_params or default_cost_params(arch)
    graph = build_graph(spec, seq=seq, mbs=mbs, tp=tp, sequence_parallel=sequence_parallel)
    selective = recompute == "selective"
    lat, tps = layer_latencies(graph, arch, network, cost_params, selective=selective)
    chain = chain_from_graph(graph, layer_latency=lat, layer_tp_s=tps)
    if selective:
        acts = [lg.activation_bytes.get("selective", lg.activation_bytes["none"])
                for lg in graph.expanded()]
        chain = replace(chain, act_none_bytes=np.array(acts, dtype=float))
    links = replace(Links.from_any(network), bw_efficiency=cost_params.link_bw_efficiency)
    opts = PlanOptions(**{**EVALUATE_OPTIONS, "optimizer": optimizer, "zero1": zero1,
                          **(options or {})})
    plan = evaluate_plan(chain, pp, dp, batch, "full" if recompute == "full" else "none",
                         interleave, hbm_bytes=arch.hbm_bytes, links=links, options=opts,
                         peak_flops=arch.peak_flops,
                         hbm_bw_Bps=arch.hbm_bw_Bps * cost_params.hbm_bw_efficiency)
    plan["recompute"] = recompute
    if "time_per_batch_s" in plan:
        F = narayanan_flops(batch, seq, spec.layers, spec.hidden, spec.vocab, recompute == "full")
        plan["tflops_per_gpu"] = F / plan["time_per_batch_s"] / (tp * pp * dp) / 1e12
    plan.update(model=spec.name, arch=getattr(arch, "name", ""), seq=seq,
                hbm_bytes=arch.hbm_bytes, sequence_parallel=sequence_parallel)
    return plan


def _model_of(args, resolve_model):
    """--model NAME|config.json, or an inline Megatron GPT (--hidden --heads --layers
    [--seq] [--vocab]: FFN 4h, learned positions, tied embeddings)."""
    inline = [getattr(args, k, None) for k in ("hidden", "heads", "layers")]
    if getattr(args, "model", None):
        if any(v is not None for v in inline):
            raise UserError("give either --model or --hidden/--heads/--layers, not both",
                            field="--model")
        return resolve_model(args.model)
    if any(v is None for v in inline):
        raise UserError("needs --model, or all of --hidden, --heads and --layers", field="--model",
                        fix="e.g. --model gpt3-175b or --hidden 12288 --heads 96 --layers 96 --seq 2048")
    from phaze.model.spec import ModelSpec

    h, a, l = inline
    seq = args.seq or 2048
    for name, v in (("--hidden", h), ("--heads", a), ("--layers", l), ("--seq", seq),
                    ("--vocab", args.vocab)):
        if v < 1:
            raise UserError("must be >= 1", field=name)
    return ModelSpec(name=f"gpt-h{h}-a{a}-l{l}", hidden=h, layers=l, heads=a, ffn=4 * h,
                     vocab=args.vocab, seq=seq, max_positions=seq, source="inline").validate()


def run_evaluate(args) -> int:
    from phaze.cli import emit_json

    for name in ("tp", "pp", "dp", "mbs", "batch", "interleave"):
        if getattr(args, name) < 1:
            raise UserError("must be >= 1", field=f"--{name}")
    try:
        from phaze.hw.commands import resolve_arch
        from phaze.model.graph import build_graph
        from phaze.model.zoo import resolve_model
    except ImportError as e:
        raise UserError(f"needs the graph and cost stages ({e.name} missing)", field="evaluate") from None
    spec = _model_of(args, resolve_model)
    arch = resolve_arch(args.arch)
    seq = args.seq or spec.seq
    network = None
    if args.network:
        import json
        from pathlib import Path

        from phaze.hw.arch import Network

        text = Path(args.network).read_text() if Path(args.network).exists() else args.network
        network = Network.from_dict(json.loads(text))
    try:
        plan = evaluate_model(spec, arch, tp=args.tp, pp=args.pp, dp=args.dp, mbs=args.mbs,
                              batch=args.batch, recompute=args.recompute,
                              interleave=args.interleave, seq=seq,
                              sequence_parallel=getattr(args, "sequence_parallel", False),
                              network=network, optimizer=args.optimizer, zero1=args.zero1)
    except ValueError as e:
        raise UserError(str(e), field="--pp/--interleave",
                        fix="choose pp * interleave dividing the number of blocks") from None
    if "time_per_batch_s" not in plan:
        raise UserError(plan.get("reason", "plan not evaluable"), field="--batch")
    if not getattr(arch, "name", ""):
        plan["arch"] = args.arch
    if args.json:
        emit_json(plan)
        return 0
    GiB = 1024**3
    w = sys.stdout.write
    w(f"{spec.name} on {plan['arch']}: t={args.tp} p={args.pp} d={args.dp} mbs={args.mbs} "
      f"batch={args.batch} recompute={args.recompute} interleave={args.interleave}\n")
    w(f"  time per batch   {plan['time_per_batch_s']:.4f} s   ({plan['samples_per_s']:.1f} samples/s,"
      f" {plan['tflops_per_gpu']:.1f} TFLOP/s per GPU, MFU {plan['mfu'] or 0:.1%})\n")
    for k in ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s", "optimizer_s"):
        w(f"    {k[:-2]:<10} {plan[k]:.4f} s\n")
    w(f"  memory per device {plan['memory_per_device_bytes'] / GiB:.2f} GiB of "
      f"{arch.hbm_bytes / GiB:.0f} GiB{'' if plan['feasible'] else '  (DOES NOT FIT)'}\n")
    return 0
