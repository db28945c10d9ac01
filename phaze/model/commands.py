"""`phaze models` (the zoo) and `phaze graph` (training operator graph of one model)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from phaze.errors import UserError
from phaze.settings import ATTENTION_MODES as ATTENTION
from phaze.settings import GraphSettings
from phaze.settings import (add_model_args, add_router_args, add_token_drop_args,
                            model_from_args, router_options)

if TYPE_CHECKING:
    from phaze.model.ops import ModelGraph


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("graph", help="training operator graph of a model (per layer, fwd + bwd)",
                       description="Build the forward and backward operator graph of a model for one "
                                   "microbatch on one device of a tensor-parallel group.")
    add_model_args(p)
    p.add_argument("--seq", type=int, default=None,
                   help="sequence length (default: the zoo's, or min(max_position_embeddings, 4096) "
                        "for a config.json)")
    p.add_argument("--mbs", type=int, default=1, help="microbatch size (default 1)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel width (default 1)")
    p.add_argument("--sequence-parallel", action="store_true", help="Megatron sequence parallelism")
    p.add_argument("--cp", type=int, default=1,
                   help="context-parallel size: the graph of one device's seq / cp chunk, its "
                        "attention core one ring step (default 1; 2 x cp must divide --seq)")
    p.add_argument("--ep", type=int, default=0,
                   help="expert-parallel size the plan runs (MoE models): each routed-expert "
                        "GEMM is experts / ep GEMMs, one per local expert, as Transformer "
                        "Engine's GroupedLinear launches them; a divisor of the routed experts, "
                        "or 0 (default): one GEMM of all the device's token slots. A dense "
                        "model's graph has ep 0 whatever is given")
    add_token_drop_args(p, ". The sweep's schedule tables do not key it")
    add_router_args(p)
    # the sweep's default (GraphSettings): one graph per setting on every route
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=GraphSettings().fused,
                   help="fuse GEMMs with their element-wise epilogues (one TC+VC op; default "
                        f"{str(GraphSettings().fused).lower()}, as the sweep's graph.fused)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per element (default 2, bf16)")
    p.add_argument("--name", help="the model's name in the graph and every table built from it "
                   "(default: the zoo name or the config's)")
    p.add_argument("--attention", choices=ATTENTION, default="eager",
                   help="eager: s x s probabilities materialised and kept (HF eager, Megatron's unfused "
                        "softmax); flash: one fused kernel, no s^2 tensor kept (default eager)")
    p.add_argument("--vocab-pad-multiple", type=int, default=1,
                   help="pad the vocabulary to a multiple of this x tp, as Megatron-LM's "
                        "--make-vocab-size-divisible-by (128 there); default 1 = no padding")
    p.add_argument("-o", "--output", help="write the graph as JSON to this file (atomic)")
    p.add_argument("--json", action="store_true", help="print a one-object JSON summary")
    p.set_defaults(func=cmd_graph)


def cmd_models(args: argparse.Namespace) -> int:
    from phaze.model.graph import build_graph
    from phaze.model.zoo import ZOO

    from phaze.jsonout import emit_json

    rows = []
    for name, s in ZOO.items():
        g = build_graph(s, seq=s.seq)  # parameter count from the graph itself
        rows.append({"name": name, "layers": s.layers, "hidden": s.hidden, "heads": s.heads,
                     "kv_heads": s.n_kv_heads, "ffn": s.ffn, "experts": s.experts, "top_k": s.top_k,
                     "vocab": s.vocab, "seq": s.seq,
                     "activation": s.activation, "norm": s.norm, "position": s.position,
                     "params": g.params_total, "source": s.source})
    if args.json:
        emit_json({"models": rows})
        return 0
    print(f"{'name':18s} {'layers':>6s} {'hidden':>6s} {'heads':>5s} {'kv':>4s} {'ffn':>6s} "
          f"{'vocab':>6s} {'seq':>5s} {'act':>6s} {'params':>10s}")
    for r in rows:
        print(f"{r['name']:18s} {r['layers']:6d} {r['hidden']:6d} {r['heads']:5d} {r['kv_heads']:4d} "
              f"{r['ffn']:6d} {r['vocab']:6d} {r['seq']:5d} {r['activation']:>6s} {r['params'] / 1e9:9.3f}B")
    return 0


def graph_summary(graph: ModelGraph, model_graph_t1: ModelGraph) -> dict:
    """The stable `phaze graph --json` keys (documented in docs/model.md)."""
    # the largest block kind (a model may have several: sliding / full attention)
    block = max((lg for lg in graph.layers if lg.kind not in ("prologue", "epilogue")),
                key=lambda lg: lg.activation_bytes["none"])
    layers = [{"kind": lg.kind, "repeat": lg.repeat, "n_ops_fwd": len(lg.fwd), "n_ops_bwd": len(lg.bwd),
               "flops_fwd": lg.flops("fwd"), "flops_bwd": lg.flops("bwd"),
               "param_count": lg.param_count, "param_bytes": lg.param_bytes,
               "expert_param_bytes": lg.expert_param_bytes(),
               "param_bytes_per_device": lg.device_param_bytes(graph.ep),
               "shared_param_bytes": lg.shared_param_bytes,
               "activation_bytes": dict(lg.activation_bytes),
               "input_bytes": lg.input_bytes, "output_bytes": lg.output_bytes}
              for lg in graph.layers]
    return {
        "model": graph.model, "seq": graph.seq, "mbs": graph.mbs, "tp": graph.tp,
        "sequence_parallel": graph.sequence_parallel, "fused": graph.fused, "dtype_bytes": graph.dtype_bytes,
        "attention": graph.attention, "vocab_pad_multiple": graph.vocab_pad_multiple,
        "unfused_bias": graph.unfused_bias, "apex_layernorm": graph.apex_layernorm,
        "cp": graph.cp, "kv_bytes": graph.kv_bytes, "ep": graph.ep,
        "moe_expert_capacity_factor": graph.moe_expert_capacity_factor,
        "moe_pad_expert_input_to_capacity": graph.moe_pad_expert_input_to_capacity,
        "moe_router_fusion": graph.moe_router_fusion,
        "moe_router_load_balancing_type": graph.moe_router_load_balancing_type,
        "moe_router_force_load_balancing": graph.moe_router_force_load_balancing,
        "params": graph.params_total,
        "flops_fwd": model_graph_t1.flops("fwd"),
        "flops_bwd": model_graph_t1.flops("bwd"),
        "flops_fwd_per_device": graph.flops("fwd"),
        "flops_bwd_per_device": graph.flops("bwd"),
        "activation_bytes_per_layer": block.activation_bytes["none"],
        "activation_bytes_per_layer_by_recompute": dict(block.activation_bytes),
        # expert parallelism keeps 1/ep of the routed experts on a device
        "param_bytes_per_device": sum(lg.device_param_bytes(graph.ep) * lg.repeat
                                      for lg in graph.layers),
        "activation_bytes_per_device": sum(lg.activation_bytes["none"] * lg.repeat for lg in graph.layers),
        "n_layers": graph.n_layers,
        "layers": layers,
    }


# a block keeping more than this on one device is a mistake, not a plan (an H200 holds 141 GB)
MAX_BLOCK_ACTIVATION_BYTES = 256 * 2**30


def check_graph_size(g: ModelGraph) -> None:
    """UserError naming --seq when one block keeps more than MAX_BLOCK_ACTIVATION_BYTES."""
    worst = max(lg.activation_bytes.get("none", 0.0) for lg in g.layers)
    if worst > MAX_BLOCK_ACTIVATION_BYTES:
        raise UserError(f"{g.seq} makes one layer keep {worst / 2**30:,.0f} GiB of activations on one "
                        f"device (bound {MAX_BLOCK_ACTIVATION_BYTES / 2**30:.0f} GiB)", field="seq",
                        fix="pass a smaller --seq, --attention flash or a wider --tp")


def cmd_graph(args: argparse.Namespace) -> int:
    from phaze.model.graph import build_graph

    from phaze.jsonout import emit_json
    from phaze.model.serialize import save_graph

    spec = model_from_args(args)
    if args.name:
        spec = spec.with_(name=args.name)
    if args.dtype_bytes not in (1, 2, 4):
        raise UserError(f"must be 1, 2 or 4, got {args.dtype_bytes}", field="dtype-bytes",
                        fix="use --dtype-bytes 1, 2 or 4")
    if args.vocab_pad_multiple < 1:
        raise UserError(f"must be a positive integer, got {args.vocab_pad_multiple}", field="vocab-pad-multiple",
                        fix="give --vocab-pad-multiple 1 or more")
    from phaze.model.graph import TOKEN_DROP_FLAGS, check_token_drop

    check_token_drop(spec, args.moe_expert_capacity_factor, args.moe_pad_expert_input_to_capacity,
                     names=TOKEN_DROP_FLAGS)
    # the token dropping goes into the model-FLOPs graph below too: the slots computed
    opts = dict(fused=args.fused, dtype_bytes=args.dtype_bytes, attention=args.attention,
                vocab_pad_multiple=args.vocab_pad_multiple,
                moe_expert_capacity_factor=args.moe_expert_capacity_factor,
                moe_pad_expert_input_to_capacity=args.moe_pad_expert_input_to_capacity,
                **router_options(args, spec))
    g = build_graph(spec, seq=args.seq, mbs=args.mbs, tp=args.tp, sequence_parallel=args.sequence_parallel,
                    cp=args.cp, ep=args.ep, **opts)
    check_graph_size(g)
    # the model's FLOPs: the whole sequence on one device (no TP shard, no CP chunk)
    g1 = g if g.tp == 1 and g.cp == 1 else build_graph(spec, seq=g.seq, mbs=g.mbs, tp=1, **opts)
    if args.output:
        save_graph(g, args.output, spec=spec.to_dict())
    summary = graph_summary(g, g1)
    if args.json:
        if args.output:
            summary["output"] = str(args.output)
        emit_json(summary)
        return 0
    _print_table(g, summary)
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _fmt_dims(o) -> str:
    if o.gemm is None:
        return o.collective or o.vclass
    g = o.gemm
    return (f"{g.batch}x" if g.batch > 1 else "") + f"{g.m}x{g.n}x{g.k}"


def _print_table(g: ModelGraph, s: dict) -> None:
    print(f"{g.model}: seq {g.seq}, microbatch {g.mbs}, tp {g.tp}"
          f"{f', cp {g.cp} ({g.tokens_per_device} tokens per device; the attention core is one of the cp ring steps, the placement adds the other {g.cp - 1})' if g.cp > 1 else ''}"
          f"{f', ep {g.ep} ({g.moe_experts // g.ep} local experts)' if g.ep else ''}"
          f"{f', token drop capacity factor {g.moe_expert_capacity_factor:g}' if g.moe_expert_capacity_factor is not None else ''}"
          f"{' padded' if g.moe_pad_expert_input_to_capacity else ''}"
          f"{', sequence parallel' if g.sequence_parallel else ''}{', fused' if g.fused else ''}"
          f", {g.attention} attention - sizes per device")
    hdr = f"  {'pass':4s} {'op':32s} {'kind':10s} {'dims / class':22s} {'GFLOP':>10s} {'MB read':>9s} {'MB writ':>9s} {'MB saved':>9s}"
    for lg in g.layers:
        dev = lg.device_param_bytes(g.ep) / g.dtype_bytes
        ex = (f" ({lg.expert_param_bytes() / g.dtype_bytes / g.ep / 1e6:.2f} M of them routed "
              f"experts: 1/{g.ep} of {lg.expert_param_bytes() / g.dtype_bytes / 1e6:.2f} M)"
              if g.ep > 1 and lg.expert_param_bytes() else "")
        print(f"\n[{lg.kind}] x{lg.repeat}: params {dev / 1e6:.2f} M/device{ex}, activations kept "
              + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in lg.activation_bytes.items()))
        print(hdr)
        for p in ("fwd", "bwd"):
            for o in lg.ops(p):
                kind = o.kind + ("+" + "+".join(o.fused) if o.fused else "")
                print(f"  {p:4s} {o.name:32s} {kind[:10]:10s} {_fmt_dims(o)[:22]:22s} {o.flops / 1e9:10.3f} "
                      f"{o.bytes_read / 1e6:9.2f} {o.bytes_written / 1e6:9.2f} {o.saved_bytes / 1e6:9.2f}")
            print(f"  {p:4s} {'total':32s} {'':10s} {'':22s} {lg.flops(p) / 1e9:10.3f}")
    print(f"\nmodel: params {s['params'] / 1e9:.3f} B (all shards); one microbatch: "
          f"fwd {s['flops_fwd'] / 1e12:.3f} TFLOP, bwd {s['flops_bwd'] / 1e12:.3f} TFLOP (all devices); "
          f"per device fwd {s['flops_fwd_per_device'] / 1e12:.3f}, bwd {s['flops_bwd_per_device'] / 1e12:.3f} TFLOP")
    print(f"per device: params {s['param_bytes_per_device'] / 2**30:.2f} GiB, activations (no recompute) "
          f"{s['activation_bytes_per_device'] / 2**30:.2f} GiB; per block "
          f"{s['activation_bytes_per_layer'] / 2**20:.1f} MiB")
