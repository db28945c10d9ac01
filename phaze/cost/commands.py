"""`phaze cost`: per-op latencies (1 core and all cores) and binding bounds on one arch."""

from __future__ import annotations

import argparse

from phaze.errors import UserError
from phaze.settings import GraphSettings


def register(sub) -> None:
    p = sub.add_parser("cost", help="operator latencies of a layer graph (or ad-hoc ops) on one arch")
    p.add_argument("--arch", required=True, help="preset (tpuv4, a100, h100) or arch_id with --grid")
    p.add_argument("--grid", help="grid parquet to look an arch_id up in")
    p.add_argument("--graph", help="ModelGraph JSON written by `phaze graph`")
    p.add_argument("--model", help="zoo name or config.json (builds the graph; alternative to --graph)")
    p.add_argument("--seq", type=int, help="sequence length with --model (default: the model's)")
    p.add_argument("--mbs", type=int, default=1, help="microbatch size with --model (default 1)")
    p.add_argument("--sequence-parallel", action="store_true", help="with --model: Megatron SP")
    # the sweep's default (GraphSettings): one graph per setting on every route
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=GraphSettings().fused,
                   help="fuse GEMMs with their element-wise epilogues (one TC+VC op; default "
                        f"{str(GraphSettings().fused).lower()}, as the sweep's graph.fused)")
    p.add_argument("--gemm", action="append", default=[], metavar="B,M,N,K",
                   help="an ad-hoc bf16 GEMM (repeatable)")
    p.add_argument("--vector", action="append", default=[], metavar="CLASS:ELEMENTS",
                   help="an ad-hoc vector op, e.g. softmax:1048576 (repeatable)")
    p.add_argument("--tp", type=int, default=None, help="TP group size (default: the graph's)")
    p.add_argument("--pass", dest="pass_", choices=("fwd", "bwd", "both"), default="both")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cost)


def _cost(args) -> int:
    from phaze.jsonout import emit_json
    from phaze.cost.api import bound_names, op_latencies
    from phaze.hw.commands import resolve_arch

    arch = resolve_arch(args.arch, args.grid)
    groups = []  # (label, ops, tp)
    comms = {}   # sizes of the graph's other communicators (expert TP)
    adhoc = _adhoc_ops(args.gemm, args.vector)
    if adhoc:
        groups.append(("adhoc", adhoc, args.tp or 1))
    if args.graph and args.model:
        raise UserError("give either --graph or --model, not both", field="--model",
                        fix="drop --graph or --model")
    if args.graph or args.model:
        g = _load_or_build_graph(args)
        tp = args.tp or g.tp
        comms = {**g.collective_groups, "tp": tp}
        passes = ("fwd", "bwd") if args.pass_ == "both" else (args.pass_,)
        for layer in g.layers:
            for ps in passes:
                groups.append((f"{layer.kind}.{ps}", list(layer.ops(ps)), tp))
    if not groups:
        raise UserError("nothing to cost", field="--graph", fix="pass --graph G.json or --gemm/--vector")
    if args.tp is not None and args.tp < 1:
        raise UserError(f"must be >= 1, got {args.tp}", field="--tp",
                        fix="give the tensor-parallel width, >= 1 (1: no splitting)")
    rows = []
    for label, ops, tp in groups:
        if not ops:
            continue
        c = op_latencies(ops, [arch], arch.network, tp=tp, groups=comms or None)
        b1, ba = bound_names(c.bound_one)[0], bound_names(c.bound_all)[0]
        for j, o in enumerate(ops):
            rows.append({"group": label, "op": o.name, "kind": o.kind, "core_class": o.core_class,
                         "flops": o.flops, "lat_one_s": float(c.lat_one_s[0, j]),
                         "lat_all_s": float(c.lat_all_s[0, j]), "bound_one": b1[j], "bound_all": ba[j]})
    if args.json:
        emit_json({"arch_id": arch.arch_id, "arch": arch.name or arch.arch_id, "ops": rows})
        return 0
    print(f"arch {arch.name or arch.arch_id} ({arch.arch_id}), peak {arch.peak_flops / 1e12:.1f} TFLOP/s")
    print(f"{'group':16s} {'op':24s} {'class':6s} {'1 core (s)':>11s} {'bound':8s} {'all cores (s)':>13s} {'bound':8s}")
    for r in rows:
        print(f"{r['group']:16s} {r['op']:24s} {r['core_class']:6s} {r['lat_one_s']:11.4e} {r['bound_one']:8s} "
              f"{r['lat_all_s']:13.4e} {r['bound_all']:8s}")
    return 0


def _load_or_build_graph(args):
    if args.graph:
        from phaze.model.serialize import load_graph

        return load_graph(args.graph)
    from phaze.model.graph import build_graph
    from phaze.model.zoo import resolve_model

    return build_graph(resolve_model(args.model), seq=args.seq, mbs=args.mbs, tp=args.tp or 1,
                       sequence_parallel=args.sequence_parallel, fused=args.fused)


def _adhoc_ops(gemms, vectors):
    from phaze.model.ops import GemmDims, Op

    ops = []
    for i, spec in enumerate(gemms):
        parts = spec.split(",")
        try:
            b, m, n, k = (int(x) for x in parts)
        except ValueError:
            raise UserError(f"expected four integers B,M,N,K, got {spec!r}", field="--gemm",
                            fix="give four comma-separated integers, e.g. --gemm 1,4096,4096,4096") from None
        if min(b, m, n, k) <= 0:
            raise UserError(f"sizes must be positive, got {spec!r}", field="--gemm",
                            fix="give B, M, N and K all >= 1, e.g. --gemm 1,4096,4096,4096")
        ops.append(Op(f"gemm{i}:{b}x{m}x{n}x{k}", "gemm", gemm=GemmDims(b, m, n, k), flops=2.0 * b * m * n * k))
    for i, spec in enumerate(vectors):
        cls, _, e = spec.partition(":")
        try:
            e = int(e)
        except ValueError:
            raise UserError(f"expected CLASS:ELEMENTS, got {spec!r}", field="--vector",
                            fix="give CLASS:ELEMENTS with an integer ELEMENTS") from None
        if e <= 0:
            raise UserError(f"elements must be positive, got {e}", field="--vector",
                            fix="give ELEMENTS >= 1")
        ops.append(Op(f"vec{i}:{cls}", "vector", vclass=cls, elements=e))
    return ops
