"""`phaze place` (reference mode, default-mode sweeps, MPI driver) and `phaze evaluate`."""

from __future__ import annotations

import json
import sys



def register(sub) -> None:
    p = sub.add_parser(
        "place",
        help="placement DP: best pipeline/data/tensor-parallel plan",
        description="Reference mode (--reference-instance) reproduces the published PHAZE DP; "
        "otherwise sweeps (model, seq, arch, mbs, HBM, recompute) work items with the "
        "realistic DP (optionally under MPI with --mpi) and writes one parquet table.")
    p.add_argument("--reference-instance", metavar="FILE.json",
                   help="a published-format DP instance; prints/writes the reference output")
    p.add_argument("-o", "--output", help="output file (JSON in reference mode, parquet otherwise)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--mpi", action="store_true", help="split work items over MPI ranks")
    p.add_argument("--latency", nargs="+", default=[], help="merged latency tables (parquet)")
    p.add_argument("--graphs", nargs="+", default=[], help="ModelGraph JSON files")
    p.add_argument("--grid", help="arch grid parquet")
    p.add_argument("--devices", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4096, help="global batch in samples")
    p.add_argument("--hbm-gib", default="64", help="comma-separated HBM sizes in GiB")
    p.add_argument("--recompute", default="none,full", help="comma-separated: none, full")
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    p.add_argument("--zero1", action="store_true", help="shard optimizer state over d (ZeRO-1)")
    p.add_argument("--network", help="network JSON (node_size, intra/inter bandwidth and latency)")
    p.add_argument("--interleave", default="1", help="comma-separated interleaving depths v to try")
    p.add_argument("--fixed", metavar="PxDxT", help="also evaluate this fixed baseline per item")
    p.add_argument("--work-items", help="JSON list of synthetic work items (tests, benchmarks)")
    p.set_defaults(func=_cmd_place)

    e = sub.add_parser(
        "evaluate",
        help="time and memory of one given training plan",
        description="Evaluate a fixed (tp, pp, dp, mbs, batch, recompute, interleave) plan of a "
        "model on an arch: time per batch, breakdown, memory per device, TFLOP/s per GPU.")
    e.add_argument("--model", help="zoo name or config.json (or give --hidden/--heads/--layers)")
    e.add_argument("--hidden", type=int, help="inline GPT: hidden size")
    e.add_argument("--heads", type=int, help="inline GPT: attention heads")
    e.add_argument("--layers", type=int, help="inline GPT: transformer blocks")
    e.add_argument("--vocab", type=int, default=51200,
                   help="inline GPT: vocabulary (default 51,200 as in the Megatron papers)")
    e.add_argument("--arch", required=True, help="arch preset name or arch id")
    e.add_argument("--tp", type=int, required=True)
    e.add_argument("--pp", type=int, required=True)
    e.add_argument("--dp", type=int, required=True)
    e.add_argument("--mbs", type=int, required=True)
    e.add_argument("--batch", type=int, required=True, help="global batch in samples")
    e.add_argument("--recompute", choices=("none", "selective", "full"), default="full")
    e.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron sequence parallelism (Korthikanti MLSys'23)")
    e.add_argument("--interleave", type=int, default=1)
    e.add_argument("--seq", type=int, default=None)
    e.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    e.add_argument("--zero1", action="store_true")
    e.add_argument("--network", help="network JSON (default: the arch's own network)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_evaluate)


def _cmd_place(args) -> int:
    if args.reference_instance:
        return _place_reference(args)
    from phaze.place.driver import run_place_command

    return run_place_command(args)


def _place_reference(args) -> int:
    from phaze.atomic import write_text_atomic
    from phaze.cli import emit_json
    from phaze.place.instance import load_instance
    from phaze.place.refdp import solve_reference

    inst = load_instance(args.reference_instance)
    out = solve_reference(inst)
    if args.output:
        write_text_atomic(args.output, json.dumps(out, indent=1) + "\n")
    if args.json or not args.output:
        emit_json(out)
    else:
        t = out["finalTimePerBatch"]
        print(f"t={out['tensorParallelDegree']} d={out['dataParallelDegree']} "
              f"p={len(out['stages'])} finalTimePerBatch={t} -> {args.output}", file=sys.stderr)
    return 0


def _cmd_evaluate(args) -> int:
    from phaze.place.evaluate_cli import run_evaluate

    return run_evaluate(args)
