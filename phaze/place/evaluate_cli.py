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


def layer_latencies(graph, arch, network):
    """{layer index: (fwd_s, bwd_s)} and the TP-collective part, ops summed serially."""
    from phaze.cost.api import op_latencies

    lat, tp = {}, {}
    for li, layer in enumerate(graph.layers):
        vals = []
        for ops in (layer.fwd, layer.bwd):
            if not ops:
                vals.append((0.0, 0.0))
                continue
            c = op_latencies(list(ops), arch, network, tp=graph.tp).lat_all_s[0]
            coll = sum(float(c[k]) for k, o in enumerate(ops) if o.kind == "collective")
            vals.append((float(c.sum()), coll))
        lat[li] = (vals[0][0], vals[1][0])
        tp[li] = (vals[0][1], vals[1][1])
    return lat, tp


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
    spec = resolve_model(args.model)
    arch = resolve_arch(args.arch)
    seq = args.seq or spec.seq
    graph = build_graph(spec, seq=seq, mbs=args.mbs, tp=args.tp)
    network = arch.network
    if args.network:
        import json
        from pathlib import Path

        from phaze.hw.arch import Network

        text = Path(args.network).read_text() if Path(args.network).exists() else args.network
        network = Network.from_dict(json.loads(text))
    lat, tp = layer_latencies(graph, arch, network)
    chain = chain_from_graph(graph, layer_latency=lat, layer_tp_s=tp)
    try:
        plan = evaluate_plan(chain, args.pp, args.dp, args.batch, args.recompute, args.interleave,
                             hbm_bytes=arch.hbm_bytes, links=Links.from_any(network),
                             options=PlanOptions(optimizer=args.optimizer, zero1=args.zero1),
                             peak_flops=arch.peak_flops)
    except ValueError as e:
        raise UserError(str(e), field="--pp/--interleave",
                        fix="choose pp * interleave dividing the number of blocks") from None
    if "time_per_batch_s" not in plan:
        raise UserError(plan.get("reason", "plan not evaluable"), field="--batch")
    F = narayanan_flops(args.batch, seq, spec.layers, spec.hidden, spec.vocab,
                        args.recompute == "full")
    gpus = args.tp * args.pp * args.dp
    plan.update(model=spec.name, arch=getattr(arch, "name", args.arch), seq=seq,
                tflops_per_gpu=F / plan["time_per_batch_s"] / gpus / 1e12,
                hbm_bytes=arch.hbm_bytes)
    if args.json:
        emit_json(plan)
        return 0
    GiB = 1024**3
    w = sys.stdout.write
    w(f"{spec.name} on {plan['arch']}: t={args.tp} p={args.pp} d={args.dp} mbs={args.mbs} "
      f"batch={args.batch} recompute={args.recompute} interleave={args.interleave}\n")
    w(f"  time per batch   {plan['time_per_batch_s']:.4f} s   ({plan['samples_per_s']:.1f} samples/s,"
      f" {plan['tflops_per_gpu']:.1f} TFLOP/s per GPU, MFU {plan['mfu'] or 0:.1%})\n")
    for k in ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s"):
        w(f"    {k[:-2]:<10} {plan[k]:.4f} s\n")
    w(f"  memory per device {plan['memory_per_device_bytes'] / GiB:.2f} GiB of "
      f"{arch.hbm_bytes / GiB:.0f} GiB{'' if plan['feasible'] else '  (DOES NOT FIT)'}\n")
    return 0
