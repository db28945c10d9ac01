"""`phaze place` (reference mode, default-mode sweeps, MPI driver) and `phaze evaluate`."""

from __future__ import annotations

import json
import sys

from phaze.cost.params import FP8_RECIPES
from phaze.errors import UserError
from phaze.settings import (MAX_HBM_GIB, RECOMPUTE_MODES, add_config_arg, add_graph_args,
                            add_model_args, add_network_arg, add_placement_args, add_sched_args,
                            add_router_args, add_token_drop_args, router_options,
                            model_from_args, sweep_settings)


def register(sub) -> None:    # long: the two commands' argparse declarations, nothing else
    p = sub.add_parser(
        "place",
        help="placement DP: best pipeline/data/tensor-parallel plan",
        description="Reference mode (--reference-instance) reproduces the published PHAZE DP; "
        "otherwise sweeps (model, seq, arch, mbs, HBM, recompute) work items with the "
        "realistic DP (optionally under MPI with --mpi) and writes one parquet table.")
    p.add_argument("--reference-instance", metavar="FILE.json",
                   help="a published-format DP instance (examples/reference_instance.json); "
                        "prints/writes the reference output")
    p.add_argument("--nest-instance", metavar="FILE.json",
                   help="a NEST-format DP instance: reproduce NEST's DP optimum (compatibility "
                        "mode, docs/nest.md)")
    p.add_argument("--vs-default", action="store_true",
                   help="with --nest-instance: NEST's optimum plan under phaze's cost model "
                        "against phaze's DP optimum on the same instance (docs/nest.md)")
    p.add_argument("-o", "--output", help="output file (JSON in reference mode, parquet otherwise)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--mpi", action="store_true", help="split work items over MPI ranks")
    p.add_argument("--latency", nargs="+", default=[], help="merged latency tables (parquet)")
    p.add_argument("--graphs", nargs="+", default=[], help="ModelGraph JSON files")
    p.add_argument("--grid", help="arch grid parquet (the archs placed; peak FLOP/s)")
    add_config_arg(p)
    add_placement_args(p)
    add_network_arg(p)
    p.add_argument("--fixed", metavar="PxDxT", help="also evaluate this fixed baseline per item")
    p.add_argument("--work-items", help="JSON list of synthetic work items (tests, benchmarks)")
    p.set_defaults(func=_cmd_place)

    e = sub.add_parser(
        "evaluate",
        help="time and memory of one given training plan",
        description="Evaluate a fixed (tp, pp, dp, mbs, batch, recompute, interleave) plan of a "
        "model on an arch: time per batch, breakdown, memory per device, TFLOP/s per device. "
        "With --arch PRESET (a100, h100, tpuv4) or a chip JSON file: the validated Megatron-LM-on-GPU model "
        "(kernels in order). With --grid G --arch ID: exactly what the sweep computes for "
        "that chip (scheduled layers, the config's settings): a placement row's plan, "
        "given with its --stages, reproduces the row.")
    add_model_args(e)
    e.add_argument("--arch", required=True, help="arch preset name, a chip JSON file (phaze "
                   "report's chip_*.json), or an arch_id with --grid")
    e.add_argument("--grid", help="arch grid parquet to look --arch up in")
    e.add_argument("--tp", type=int, required=True, help="tensor-parallel size")
    e.add_argument("--pp", type=int, required=True, help="pipeline-parallel size")
    e.add_argument("--dp", type=int, required=True, help="data-parallel size")
    e.add_argument("--mbs", type=int, required=True, help="microbatch size in samples")
    e.add_argument("--recompute", choices=RECOMPUTE_MODES, default="full",
                   help="activation recomputation")
    e.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron sequence parallelism (Korthikanti MLSys'23)")
    e.add_argument("--interleave", type=int, default=1,
                   help="pipeline chunks per device (Megatron's interleaved schedule)")
    e.add_argument("--seq", type=int, default=None,
                   help="sequence length in tokens (default: the one --config lists for "
                        "--model, else the model's)")
    e.add_argument("--hbm-gib", type=float,
                   help="HBM per device in GiB (default: the preset's; with --grid the "
                        "largest of the config's sizes)")
    e.add_argument("--stages", help="with --grid: the plan's layer ranges as JSON, e.g. "
                   "[[0,13],[13,26]] (a placement row's stages column); default: Megatron's "
                   "uniform split")
    e.add_argument("--framework", choices=["megatron-lm-2022", "megatron-lm-2021",
                                           "megatron-core-2024", "nemo-2024", "megatron-deepspeed"],
                   help="with --arch PRESET: the framework's default overlaps, optimizer "
                        "sharding (unless --zero1, --no-zero1 or --zero-stage is given), "
                        "kernels (phaze.place.evaluate.FRAMEWORKS; default megatron-lm-2022, "
                        "the validated A100 model)")
    e.add_argument("--ddp-impl", choices=["local", "torch"], default="local",
                   help="Megatron-LM --DDP-impl: torch reduces fp16/bf16 gradient buckets during "
                        "the last microbatch's backward, local after it")
    e.add_argument("--cp", type=int, default=1, help="context-parallel size (ring attention)")
    e.add_argument("--ep", type=int, default=1,
                   help="expert-parallel size (MoE layers; a placement row's ep)")
    e.add_argument("--recompute-method", choices=["uniform", "block"], default="uniform",
                   help="Megatron --recompute-method with --recompute full: uniform re-runs every "
                        "block from a checkpoint every N blocks, block re-runs only the first "
                        "N blocks of each pipeline chunk (N: the number of layers below; "
                        "default uniform)")
    e.add_argument("--recompute-num-layers", type=int, default=1,
                   help="Megatron --recompute-num-layers (default 1)")
    e.add_argument("--recompute-modules",
                   help="Megatron-Core --recompute-modules with --recompute selective, comma-"
                        "separated: core_attn, layernorm, mlp, moe, moe_act, shared_experts, "
                        "mla_up_proj (default: core_attn)")
    e.add_argument("--expert-tp", type=int, default=0,
                   help="Megatron-Core --expert-tensor-parallel-size of the routed experts "
                        "(default 0: the --tp size; another size folds the expert grid, EP "
                        "spanning TP ranks; needs --sequence-parallel when --tp > 1; not with "
                        "--grid)")
    e.add_argument("--first-stage-layers", type=int,
                   help="Megatron --decoder-first-pipeline-num-layers")
    e.add_argument("--last-stage-layers", type=int,
                   help="Megatron --decoder-last-pipeline-num-layers")
    e.add_argument("--account-for-embedding-in-pipeline-split", action="store_true",
                   dest="account_embedding",
                   help="Megatron-Core: the embedding counts as one layer of the first "
                        "pipeline chunk (the blocks plus it split evenly)")
    e.add_argument("--account-for-loss-in-pipeline-split", action="store_true",
                   dest="account_loss",
                   help="Megatron-Core: the output layer and loss count as one layer of the "
                        "last pipeline chunk")
    e.add_argument("--pipeline-layout", metavar="STR",
                   help="Megatron-Core --pipeline-model-parallel-layout: the pp x interleave "
                        "chunks separated by '|', E embedding, t decoder layer, m MTP layer, L "
                        "loss, x*n / (...)*n repeats, e.g. 'Et|(tt|)*30mL' (not with --first/"
                        "--last-stage-layers or --account-for-*-in-pipeline-split)")
    e.add_argument("--mtp-layers", type=int, default=0, metavar="K",
                   help="stand-ins for K multi-token-prediction layers: K copies of the "
                        "model's last layer appended (phaze has no MTP block); the layout's m's "
                        "are they (default 0)")
    e.add_argument("--fp8", action="store_true", help="FP8 GEMMs (Transformer Engine)")
    e.add_argument("--fp8-recipe", choices=list(FP8_RECIPES), default=None,
                   help="Megatron-Core --fp8-recipe of --fp8: delayed (its default), "
                        "tensorwise (per-tensor current scaling; NeMo's fp8_cs) or blockwise "
                        "(1x128 / 128x128 block scales; NeMo's fp8_sc): what quantizing the "
                        "GEMM operands costs and, blockwise, the GEMM's slower rate")
    e.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3],
                   help="ZeRO stage / FSDP (3) timing and memory (default: 1 with --zero1, "
                        "else 0)")
    overlaps = ["grad_reduce", "param_gather", "tp_comm", "p2p", "async_tp", "moe_ep_comm"]
    e.add_argument("--overlap", action="append", default=[], choices=overlaps,
                   help="switch one overlap on (repeatable; Megatron flag names; async_tp: "
                        "--async-tensor-model-parallel-allreduce; moe_ep_comm: "
                        "--overlap-moe-expert-parallel-comm)")
    e.add_argument("--moe-token-dispatcher", choices=["alltoall", "flex"], default="alltoall",
                   help="Megatron-Core --moe-token-dispatcher-type of an MoE model's EP "
                        "traffic: alltoall sends each routed slot, flex (DeepEP / HybridEP) "
                        "each token once per remote node (default alltoall)")
    add_token_drop_args(e)
    add_router_args(e)
    e.add_argument("--no-overlap", action="append", default=[], choices=overlaps,
                   help="switch one of --framework's overlaps off (repeatable)")
    e.add_argument("--cross-entropy-fusion", action="store_true",
                   help="Megatron-Core --cross-entropy-loss-fusion (NeMo cross_entropy_loss_fusion)")
    e.add_argument("--grad-sync-dtype", choices=["fp32", "bf16"],
                   help="gradient buffer and reduction dtype (NeMo distributed Adam "
                        "grad_sync_dtype, Megatron-Core --grad-reduce-in-bf16; default: the "
                        "framework's)")
    e.add_argument("--optimizer-state-dtype", choices=["fp32", "bf16"],
                   help="Adam's master weight, m and v (NeMo distributed Adam dtype, "
                        "Megatron-Core --exp-avg-dtype etc.; default fp32: 12 B per parameter)")
    add_config_arg(e)
    add_placement_args(e, axes=False)
    add_graph_args(e, axes=False)
    add_sched_args(e)
    add_network_arg(e)
    e.add_argument("--allow-infeasible", action="store_true",
                   help="print (or --json) the time and memory of a plan that does not fit "
                        "in HBM and exit 0 (default: such a plan is a user error, exit 2)")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    # the sweep's flags mean something narrower for one plan: say what
    for action in e._actions:
        if action.dest == "zero1":
            action.help = ("shard the optimizer state over the data-parallel replicas (ZeRO-1; "
                           "with --grid the config's, default true; with a preset --arch the "
                           "--framework's unless given)")
        elif action.dest == "devices":
            action.help = ("a check: the plan's tp x pp x dp x cp must equal it (default 1024 "
                           "is the sweep's and is not checked)")
    e.set_defaults(func=_cmd_evaluate)


def _cmd_place(args) -> int:
    if args.reference_instance and args.nest_instance:
        raise UserError("give one of --reference-instance and --nest-instance",
                        field="--nest-instance", fix="drop one of them")
    if args.reference_instance or args.nest_instance:
        return _place_reference(args)

    from phaze.jsonout import emit_json
    from phaze.place.driver import context, load_inputs, parse_fixed, run_items, write_table

    if not args.output:
        raise UserError("an output parquet is required", field="-o", fix="add -o PATH.parquet")
    settings, _cfg = sweep_settings(args)
    ctx = context(settings, parse_fixed(args.fixed))
    if args.work_items:
        from phaze.files import read_json

        items = read_json(args.work_items, "--work-items", want=list)
    elif args.graphs and args.latency and args.grid:
        items = load_inputs(args.graphs, args.latency, args.grid, ctx)
        settings = _with_graph_settings(settings, ctx["graphs"].values())
    else:
        raise UserError("needs --graphs, --latency and --grid (or --reference-instance / "
                        "--work-items)", field="place",
                        fix="give --graphs, --latency and --grid, or --reference-instance / --work-items")
    import time

    t0 = time.perf_counter()
    table = run_items(items, ctx, args.mpi)
    run_s = time.perf_counter() - t0
    if table is None:           # non-root MPI rank
        return 0
    write_table(table, args.output, settings)
    best = int(((table["row_kind"] == "best") & table["feasible"]).sum())
    summary = {"items": len(items), "rows": len(table), "feasible": best,
               "groups": ctx.get("n_groups"), "run_seconds": run_s, "ranks": ctx.get("ranks"),
               "output": str(args.output)}
    if args.json:
        emit_json(summary)
    else:
        print(f"phaze place: {len(items)} items, {best} feasible -> {args.output}",
              file=sys.stderr)
    return 0


def _with_graph_settings(settings, graphs):
    """`settings` with the graph options the placed graphs were built with (what the table
    records of how its rows were obtained; the place command's own flags have none): fused,
    attention and the vocabulary padding where every graph agrees, the sequence-parallel
    values they hold."""
    from dataclasses import replace

    graphs = list(graphs)
    if not graphs:
        return settings
    agreed = {}
    for name in ("fused", "attention", "vocab_pad_multiple"):
        values = {getattr(x, name) for x in graphs}
        if len(values) == 1:
            agreed[name] = values.pop()
    sp = tuple(sorted({bool(x.sequence_parallel) for x in graphs}))
    return replace(settings, graph=replace(settings.graph, sequence_parallel=sp, **agreed))


def _place_reference(args) -> int:
    from phaze.atomic import write_text_atomic
    from phaze.jsonout import emit_json, finite
    if args.vs_default and not args.nest_instance:
        raise UserError("--vs-default needs --nest-instance", field="--vs-default",
                        fix="add --nest-instance FILE, or drop --vs-default")
    if args.nest_instance and args.vs_default:
        from phaze.place.nest import load_nest_instance
        from phaze.place.nest_compare import compare_with_nest

        try:
            r = compare_with_nest(load_nest_instance(args.nest_instance))
        except ValueError as e:
            raise UserError(str(e), field="--vs-default") from None
        keys = ("p", "d", "t", "stages", "time_per_batch_s", "memory_per_device_bytes",
                "compute_s", "bubble_s", "p2p_s", "dp_sync_s")
        out = {"nest_plan": {k: r["nest"][k] for k in keys},
               "phaze_plan": {k: r["phaze"][k] for k in keys} if r["phaze"] else None,
               "speedup": r["speedup"], "nest_finalTimePerBatch": r["nest_raw"]["finalTimePerBatch"],
               "method": "nest-instance under phaze's default-mode cost model (phaze.place.nest_compare)"}
        if args.output:
            write_text_atomic(args.output, json.dumps(finite(out), indent=1, allow_nan=False) + "\n")
        if args.json or not args.output:
            emit_json(out)
        return 0
    if args.nest_instance:
        from phaze.place.nest import load_nest_instance, solve_nest

        out = solve_nest(load_nest_instance(args.nest_instance))
    else:
        from phaze.place.instance import load_instance
        from phaze.place.refdp import solve_reference

        out = solve_reference(load_instance(args.reference_instance))
    if args.output:
        write_text_atomic(args.output, json.dumps(finite(out), indent=1, allow_nan=False) + "\n")
    if args.json or not args.output:
        emit_json(out)
    else:
        t = out["finalTimePerBatch"]
        print(f"t={out['tensorParallelDegree']} d={out['dataParallelDegree']} "
              f"p={len(out['stages'])} finalTimePerBatch={t} -> {args.output}", file=sys.stderr)
    return 0


def _config_seq(cfg, name):
    """The sequence length the config's models entry `name` lists, None when it has no
    such entry; UserError when it lists several (the sweep runs each: say which)."""
    for m in (cfg or {}).get("models", []):
        if m.get("name") == name and m.get("seq"):
            seqs = m["seq"] if isinstance(m["seq"], list) else [m["seq"]]
            if len(seqs) > 1:
                raise UserError(f"the config runs {name} at seq {seqs}", field="--seq",
                                fix=f"give --seq, one of {', '.join(map(str, seqs))}")
            return int(seqs[0])
    return None


def _stages(text):
    if not text:
        return None
    try:
        st = json.loads(text)
        assert isinstance(st, list) and all(isinstance(s, list) and len(s) == 2 and
                                            all(isinstance(x, int) for x in s) for s in st)
    except (json.JSONDecodeError, AssertionError):
        raise UserError(f"expected a JSON list of [start, end] pairs, got {text!r}",
                        field="--stages", fix="e.g. --stages '[[0,13],[13,26]]'") from None
    return st


def _cmd_evaluate(args) -> int:
    from phaze.jsonout import emit_json

    for name in ("tp", "pp", "dp", "mbs", "interleave", "cp", "ep"):
        if getattr(args, name) < 1:
            raise UserError(f"must be >= 1, got {getattr(args, name)}", field=f"--{name}",
                            fix=f"give --{name} 1 or more (1: no {name} splitting)")
    if args.expert_tp < 0:
        raise UserError(f"must be >= 1, got {args.expert_tp}", field="--expert-tp",
                        fix="give --expert-tp 1 or more, or drop it (the experts' TP = --tp)")
    if getattr(args, "batch", None) is not None and args.batch < 1:
        raise UserError(f"must be >= 1, got {args.batch}", field="--batch",
                        fix="give the global batch in samples, a multiple of --mbs x --dp")
    if args.seq is not None and args.seq < 1:
        raise UserError(f"must be >= 1, got {args.seq}", field="--seq",
                        fix="give the sequence length in tokens, or drop --seq (the model's own)")
    used = args.tp * args.pp * args.dp * args.cp
    if getattr(args, "devices", None) is not None and int(args.devices) != used:
        raise UserError(f"{args.devices} devices, but the plan uses tp x pp x dp x cp = {used}",
                        field="--devices", fix=f"drop --devices, or give {used}")
    if args.mtp_layers < 0:
        raise UserError(f"must be >= 0, got {args.mtp_layers}", field="--mtp-layers",
                        fix="give the model's MTP layers (0: none)")
    if args.pipeline_layout is not None:
        clash = [flag for flag, on in (
            ("--first-stage-layers", args.first_stage_layers is not None),
            ("--last-stage-layers", args.last_stage_layers is not None),
            ("--account-for-embedding-in-pipeline-split", args.account_embedding),
            ("--account-for-loss-in-pipeline-split", args.account_loss)) if on]
        if clash:
            raise UserError(f"sets every pipeline chunk, so it cannot be combined with "
                            f"{', '.join(clash)}", field="--pipeline-layout",
                            fix=f"drop {' and '.join(clash)} (the layout spells the ends out), "
                                f"or drop --pipeline-layout")
    if args.hbm_gib is not None and not 0 < args.hbm_gib <= MAX_HBM_GIB:
        from phaze.settings import readable_number
        raise UserError(f"must be in (0, {readable_number(MAX_HBM_GIB)}], got {args.hbm_gib}",
                        field="--hbm-gib", fix="give the device memory in GiB, e.g. 80")
    settings, cfg = sweep_settings(args)
    spec = model_from_args(args, cfg)
    seq = args.seq or _config_seq(cfg, getattr(args, "model", None)) or spec.seq
    try:
        if args.grid:
            plan, hbm, arch_label = _evaluate_grid(args, spec, settings, seq)
        else:
            if args.stages:
                raise UserError("--stages needs --grid", field="--stages",
                                fix="add --grid G --arch ID (the sweep route), or drop --stages")
            plan, hbm, arch_label = _evaluate_preset(args, spec, settings, seq)
    except UserError as e:
        raise _flag_named(e) from None
    except ValueError as e:
        raise _plan_error(str(e), args) from None
    if "time_per_batch_s" not in plan:
        raise UserError(*_not_evaluable(plan.get("reason", "plan not evaluable"), args,
                                        settings.placement.global_batch))
    plan["arch"] = arch_label
    if not plan.get("feasible", True) and not args.allow_infeasible:
        tried = None if args.grid else _fitting_changes(args, spec, settings, seq, hbm, plan)
        raise UserError(*_does_not_fit(plan, hbm, args, tried))
    if args.json:
        emit_json(plan)
        return 0
    _print_plan(spec, args, plan, hbm, settings.placement.global_batch)
    return 0


# build_graph's option names in its errors -> the `phaze evaluate` flags that set them
GRAPH_FLAGS = {"expert_tp": "--expert-tp", "recompute_modules": "--recompute-modules",
               "attention": "--attention", "ep": "--ep", "cp": "--cp",
               "moe_router_load_balancing_type": "--moe-router-load-balancing-type"}


def _flag_named(e: UserError) -> UserError:
    """A graph-builder error as the command line says it: its field and any mention of it
    in the fix become the flag (expert_tp -> --expert-tp)."""
    import re

    flag = GRAPH_FLAGS.get(e.field)
    if flag is None:
        return e
    # not a config field's path (graph.attention) nor the flag itself
    fix = re.sub(rf"(?<![\w.-]){re.escape(e.field)}(?!\w)", flag, e.fix) if e.fix else e.fix
    return UserError(e.message, field=flag, fix=fix)


def _plan_error(message: str, args) -> UserError:
    """The UserError of a plan the placement code refuses (ValueError): the field and fix
    that match what is wrong (phaze.place.plan's stage checks, evaluate's cp check)."""
    if message.startswith("pipeline layout"):
        fix = "see `phaze evaluate --help` (--pipeline-layout) for the grammar"
        if "unknown symbol" in message or "repeat count" in message:
            pass
        elif "decoder layers (t)" in message:
            fix = "give one t per decoder layer of --model"
        elif "chunks, pp x interleave" in message:
            fix = "give --pp x --interleave chunks, or the --pp / --interleave the message names"
        elif "MTP" in message:
            fix = "give --mtp-layers K with K the layout's m's, or drop the m's"
        return UserError(message, field="--pipeline-layout", fix=fix)
    if message.startswith("stages must be"):
        return UserError(message, field="--stages",
                         fix="give --pp x --interleave ranges [[0,a],[a,b],...,[y,N]] "
                             "(a placement row's stages column), or drop --stages for "
                             "Megatron's uniform split")
    if "accounting both" in message:
        flag = ("--account-for-embedding-in-pipeline-split" if args.account_embedding
                else "--account-for-loss-in-pipeline-split")
        return UserError(message, field=flag,
                         fix="give either --first/--last-stage-layers or the accounting flags")
    if message.startswith("uneven pipeline ends"):
        return UserError(message, field="--pp", fix="use --pp 2 or more, or drop "
                                                    "--first-stage-layers/--last-stage-layers")
    if message.startswith("the ends ("):
        return UserError(message, field="--first-stage-layers/--last-stage-layers",
                         fix="give ends within the model's blocks (with --pp 2 and both "
                             "ends: summing to them)")
    if "first=" in message or "at least one block" in message:
        return UserError(message, field="--first-stage-layers/--last-stage-layers",
                         fix="leave at least one block to every other pipeline chunk, "
                             "the rest dividing evenly")
    if "do not split" in message:
        fix = "choose --pp and --interleave whose product divides the blocks"
        if args.grid:
            fix += ", or give the split with --stages"
        else:
            fix += (", or set --first-stage-layers/--last-stage-layers or "
                    "--account-for-embedding-in-pipeline-split/--account-for-loss-in-"
                    "pipeline-split")
        return UserError(message, field="--pp/--interleave", fix=fix)
    if message.startswith("expert parallelism"):
        fix = ("drop --ep: a dense model has no experts to spread" if "dense model" in message
               else "use an --ep dividing the experts (and --dp x --cp), or drop it")
        return UserError(message, field="--ep", fix=fix)
    if message.startswith("moe options:"):
        return UserError(message[len("moe options: "):], field="--moe-token-dispatcher/--overlap",
                         fix="drop --moe-token-dispatcher and --overlap moe_ep_comm for a dense model")
    if message.startswith("fp8:"):
        fix = ("drop --fp8, or use --framework megatron-core-2024 / nemo-2024"
               if "Transformer Engine" in message else "drop --fp8, or use --arch h100")
        return UserError(message[5:], field="--fp8", fix=fix)
    if message.startswith("overlap p2p"):
        return UserError(message, field="--overlap", fix="drop --overlap p2p with this framework")
    if message.startswith("interleave ="):
        fix = ("drop --interleave with this framework" if "DeepSpeed" in message
               else "drop --interleave, or use --pp 2 or more")
        return UserError(message, field="--interleave", fix=fix)
    return UserError(message, field="--pp/--interleave/--stages")


def _not_evaluable(reason: str, args, batch: int) -> tuple[str, str, str | None]:
    """(message, field, fix) of a plan evaluate_plan refuses before timing it (its
    "reason"): the batch not a multiple of mbs x dp, ep not dividing dp x cp, interleaving
    with a microbatch count that pp does not divide; the fix names values that work."""
    def few(xs):
        xs = list(xs)
        return ", ".join(map(str, xs[:8])) + (", ..." if len(xs) > 8 else "")

    if reason.startswith("batch"):
        k = args.mbs * args.dp
        lo, hi = batch // k * k, (batch // k + 1) * k
        fix = f"a --batch multiple of --mbs x --dp = {k} ({few(x for x in (lo, hi) if x)})"
        if batch % args.mbs == 0:
            fix += f", or a --dp dividing batch / mbs = {batch // args.mbs} " \
                   f"({few(x for x in range(1, batch // args.mbs + 1) if batch // args.mbs % x == 0)})"
        return f"{reason} = {k}", "--batch", fix
    if reason.startswith("ep") and "expert_tp" in reason:
        n = args.tp * args.dp * args.cp
        return reason, "--ep/--expert-tp", f"an --ep x --expert-tp dividing --tp x --dp x --cp = {n}"
    if reason.startswith("ep"):
        dc = args.dp * args.cp
        return reason, "--ep", f"an --ep dividing --dp x --cp = {dc} " \
                               f"({few(x for x in range(1, dc + 1) if dc % x == 0)})"
    if reason.startswith("interleaving"):
        m = -(-batch // (args.mbs * args.dp))
        return (f"interleaving needs the {m} microbatches per batch (batch / (mbs x dp)) to be "
                f"a multiple of --pp {args.pp}", "--interleave",
                "--interleave 1, or a --batch, --mbs or --dp giving a multiple of --pp "
                "microbatches")
    # a refusal this function does not know yet: name the plan's flags rather than no fix
    return reason, "--tp/--pp/--dp/--cp/--mbs/--batch", \
        "change the plan's sizes so that the constraint above holds"


def _fitting_changes(args, spec, settings, seq, hbm, plan) -> tuple[list, list]:
    """The one-flag changes of a plan that does not fit (the preset route), each evaluated:
    ([(flags, GiB per device)] of those that fit, [flags] of those tried). Per flag the
    least change that fits: the next recompute modes and ZeRO stages in order, twice the
    tp, pp, dp, ep or cp, half the microbatch, flash attention where `plan` (the one that
    does not fit) ran eager."""
    import argparse

    GiB = 1024**3
    stage = args.zero_stage or 0
    groups = [[("--recompute", {"recompute": m}) for m in
               RECOMPUTE_MODES[RECOMPUTE_MODES.index(args.recompute) + 1:]]]
    if args.dp * args.cp > 1:
        groups.append([("--zero-stage", {"zero_stage": z}) for z in range(stage + 1, 4)])
    for name in ("tp", "pp", "dp"):
        groups.append([(f"--{name}", {name: 2 * getattr(args, name)})])
    if spec.experts:
        groups.append([("--ep", {"ep": 2 * args.ep})])
    if args.mbs > 1:
        halves = [args.mbs >> k for k in range(1, args.mbs.bit_length())]
        groups.append([("--mbs", {"mbs": m}) for m in halves])
    if plan.get("graph_options", {}).get("attention") == "eager":
        groups.append([("--attention", {"attention": "flash"})])
    else:
        groups.append([("--cp", {"cp": 2 * args.cp})])
    fit, tried = [], []
    for group in groups:
        for flag, change in group:
            label = f"{flag} {next(iter(change.values()))}"
            tried.append(label)
            try:
                plan, _, _ = _evaluate_preset(argparse.Namespace(**{**vars(args), **change}),
                                              spec, settings, seq)
            except Exception:   # noqa: BLE001 - a variant that cannot run is no hint; the
                continue        # user's own error is still the one reported
            need = plan.get("memory_per_device_bytes")
            if need is not None and "time_per_batch_s" in plan and need <= hbm:
                fit.append((label, need / GiB))
                break
    return fit, tried


def _does_not_fit(plan, hbm, args, tried=None) -> tuple[str, str, str]:
    """(message, field, fix) of a plan whose memory per device exceeds the HBM: the
    memory needed against the HBM with its two largest parts, and the flags that shrink it
    (`tried`: _fitting_changes's result: those evaluated to fit; None: the usual ones)."""
    import math

    GiB = 1024**3
    parts = sorted(((plan.get(f"memory_{k}_bytes") or 0.0, k) for k in
                    ("weights", "grads", "optimizer", "activations", "buffers")), reverse=True)
    largest = ", ".join(f"{k} {v / GiB:.2f} GiB" for v, k in parts[:2] if v > 0)
    msg = (f"memory per device {plan['memory_per_device_bytes'] / GiB:.2f} GiB exceeds the "
           f"{hbm / GiB:.4g} GiB HBM" + (f" (largest: {largest})" if largest else ""))
    hbm_fix = f"--hbm-gib {math.ceil(plan['memory_per_device_bytes'] / GiB)}"
    if tried is not None:
        fit, labels = tried
        if fit:
            alone = ", ".join(f"{flag} ({gib:.1f} GiB)" for flag, gib in fit)
            fix = f"each of these alone fits: {alone}; or {hbm_fix}"
        else:
            names = ", ".join(dict.fromkeys(x.split(" ")[0] for x in labels))
            fix = f"no one change of {names} fits alone: combine them, or {hbm_fix}"
        return msg, "memory", fix + " (or --allow-infeasible to print the plan anyway)"
    fixes = []
    stronger = RECOMPUTE_MODES[RECOMPUTE_MODES.index(args.recompute) + 1:]
    if stronger:
        fixes.append("--recompute " + " or ".join(stronger))
    fixes.append("a larger --pp or --tp")
    stage = plan.get("zero_stage", args.zero_stage or 0) or 0
    if stage < 3 and args.dp * args.cp > 1:
        fixes.append("--zero-stage " + ", ".join(map(str, range(stage + 1, 4))))
    if args.mbs > 1:
        fixes.append("a smaller --mbs")
    fixes.append("a larger --hbm-gib")
    return (msg, "memory",
            ", ".join(fixes) + " (or --allow-infeasible to print the plan anyway)")


def _evaluate_grid(args, spec, settings, seq):
    from phaze.hw.grid import read_grid
    from phaze.place.evaluate import evaluate_sweep_plan

    # framework switches describe a GPU software stack: the sweep route has its own settings
    # (the config); never ignore them silently
    preset_only = {"framework": None, "fp8": False, "fp8_recipe": None, "overlap": [],
                   "no_overlap": [],
                   "ddp_impl": "local", "cross_entropy_fusion": False,
                   "grad_sync_dtype": None, "optimizer_state_dtype": None,
                   "first_stage_layers": None, "last_stage_layers": None,
                   "account_embedding": False, "account_loss": False,
                   "pipeline_layout": None, "mtp_layers": 0,
                   "moe_token_dispatcher": "alltoall", "expert_tp": 0,
                   "moe_expert_capacity_factor": None,
                   "moe_pad_expert_input_to_capacity": False, "moe_router_fusion": False,
                   "moe_router_load_balancing_type": "none",
                   "moe_router_force_load_balancing": False,
                   "recompute_modules": None, "recompute_method": "uniform",
                   "recompute_num_layers": 1}
    for name, default in preset_only.items():
        if getattr(args, name, default) != default:
            flag = {"account_embedding": "--account-for-embedding-in-pipeline-split",
                    "account_loss": "--account-for-loss-in-pipeline-split"}.get(
                        name, "--" + name.replace("_", "-"))
            uneven = (" (with --grid, --stages gives uneven stages)"
                      if "stage" in name or "account" in name else "")
            raise UserError("is a setting of the GPU model (--arch PRESET), not of the sweep "
                            "route", field=flag,
                            fix=f"drop {flag} with --grid{uneven}, or evaluate on --arch PRESET")
    _check_cp_comm_flag(args)
    grid = read_grid(args.grid)
    row = grid[grid["arch_id"] == args.arch].reset_index(drop=True)
    if row.empty:
        raise UserError(f"arch_id {args.arch!r} is not in {args.grid}", field="--arch",
                        fix="use an arch_id of that grid (a report's best design, or `phaze arch show ID --grid G` to check one)")
    hbm = (args.hbm_gib if args.hbm_gib is not None else max(settings.placement.hbm_gib)) * 1024**3
    plan = evaluate_sweep_plan(spec, row, tp=args.tp, pp=args.pp, dp=args.dp, mbs=args.mbs,
                               recompute=args.recompute, hbm_bytes=hbm, seq=seq,
                               sequence_parallel=args.sequence_parallel,
                               interleave=args.interleave, stages=_stages(args.stages),
                               settings=settings, ep=args.ep, zero_stage=args.zero_stage,
                               cp=args.cp)
    return plan, hbm, args.arch


def _evaluate_preset(args, spec, settings, seq):
    from dataclasses import replace

    from phaze.hw.chipfile import is_chip_file, read_chip
    from phaze.hw.presets import get_preset
    from phaze.model.graph import TOKEN_DROP_FLAGS, check_token_drop
    from phaze.place.evaluate import DEFAULT_FRAMEWORK, evaluate_model

    # the sweep route's graph and scheduling flags: the preset route builds its graph as the
    # framework runs it and schedules no layer ILP; never ignore them silently
    for name, flag in (("fused", "--fused/--no-fused"), ("solver", "--solver"),
                       ("time_limit", "--time-limit"), ("cache", "--cache")):
        if getattr(args, name, None) is not None:
            raise UserError("is a setting of the sweep route (--grid), not of the GPU model "
                            "(--arch PRESET or chip file), which schedules no layer ILP and "
                            "fuses kernels as --framework runs them", field=flag,
                            fix=f"drop {flag}, or evaluate a grid arch with --grid G --arch ID")
    if args.fp8_recipe and not args.fp8:
        raise UserError("is the recipe of FP8 training, which is off", field="--fp8-recipe",
                        fix="add --fp8, or drop --fp8-recipe")
    if args.ddp_impl != "local" and (args.framework or DEFAULT_FRAMEWORK) not in (
            "megatron-lm-2021", "megatron-lm-2022"):
        raise UserError(f"is Megatron-LM's --DDP-impl, which {args.framework} has not (it runs "
                        "its own data-parallel engine)", field="--ddp-impl",
                        fix="drop --ddp-impl, or use --framework megatron-lm-2021 / 2022")
    if args.optimizer_state_dtype and settings.placement.optimizer != "adam":
        raise UserError(f"sets Adam's state dtype, and the optimizer is "
                        f"{settings.placement.optimizer} (no state)",
                        field="--optimizer-state-dtype",
                        fix="drop --optimizer-state-dtype, or use --optimizer adam")
    check_token_drop(spec, args.moe_expert_capacity_factor,
                     args.moe_pad_expert_input_to_capacity, args.moe_token_dispatcher,
                     names=TOKEN_DROP_FLAGS)
    router = router_options(args, spec)
    if args.expert_tp and not spec.experts:     # refused whatever its value (= --tp too)
        raise UserError(f"{spec.name} has no routed experts", field="--expert-tp",
                        fix="drop --expert-tp (dense models have no expert tensor parallelism)")
    arch = read_chip(args.arch) if is_chip_file(args.arch) else get_preset(args.arch)
    if args.hbm_gib is not None:
        arch = replace(arch, hbm_bytes=args.hbm_gib * 1024**3)
    network = settings.net() if (args.network or args.config) else None
    spec = spec.with_extra_layers(args.mtp_layers)     # the MTP layers' stand-ins
    plan = evaluate_model(spec, arch, tp=args.tp, pp=args.pp, dp=args.dp, mbs=args.mbs,
                          batch=settings.placement.global_batch, recompute=args.recompute,
                          interleave=args.interleave, seq=seq,
                          sequence_parallel=args.sequence_parallel, network=network,
                          optimizer=settings.placement.optimizer,
                          zero1=bool(args.zero1),
                          # --attention wins over the framework's kernel; without either,
                          # the config's (or the settings' default)
                          graph_options={**({"attention": args.attention} if getattr(
                              args, "attention", None) else {"attention": settings.graph.attention}
                                            if args.framework is None else {}),
                                         "vocab_pad_multiple": settings.graph.vocab_pad_multiple,
                                         **router},
                          framework=args.framework, cp=args.cp, fp8=args.fp8,
                          fp8_recipe=args.fp8_recipe or "delayed",
                          first_stage_layers=args.first_stage_layers,
                          last_stage_layers=args.last_stage_layers, ddp_impl=args.ddp_impl,
                          account_embedding=args.account_embedding,
                          account_loss=args.account_loss,
                          pipeline_layout=args.pipeline_layout,
                          mtp_layers=args.mtp_layers or None,
                          cross_entropy_fusion=args.cross_entropy_fusion, ep=args.ep,
                          expert_tp=args.expert_tp,
                          options=_overlap_options(args, settings) or None,
                          recompute_modules=_recompute_modules(args))
    return plan, arch.hbm_bytes, arch.name


def _recompute_modules(args) -> tuple | None:
    if args.recompute_modules is None:
        return None
    if args.recompute != "selective":
        raise UserError("chooses what selective recomputation re-runs", field="--recompute-modules",
                        fix="add --recompute selective, or drop --recompute-modules")
    from phaze.model.graph import RECOMPUTE_MODULES, check_recompute_modules

    mods = [m.strip() for m in args.recompute_modules.split(",") if m.strip()]
    if not mods:
        raise UserError(f"names no module: {args.recompute_modules!r}", field="--recompute-modules",
                        fix="give Megatron-Core module names, e.g. core_attn,layernorm, or drop it")
    try:
        return check_recompute_modules(mods)
    except UserError as e:
        bad = next(m for m in mods if m not in RECOMPUTE_MODULES)
        raise UserError(f"unknown recompute module {bad!r}", field="--recompute-modules",
                        fix=e.fix) from None


def _overlap_options(args, settings=None) -> dict:
    names = {"grad_reduce": "overlap_grad_reduce", "param_gather": "overlap_param_gather",
             "tp_comm": "tp_comm_overlap", "p2p": "overlap_p2p",
             "async_tp": "async_tensor_model_parallel_allreduce",
             "moe_ep_comm": "overlap_moe_expert_parallel_comm"}
    o = {names[x]: True for x in getattr(args, "overlap", [])}
    both = set(getattr(args, "overlap", [])) & set(getattr(args, "no_overlap", []))
    if both:
        raise UserError(f"{sorted(both)[0]} is both in --overlap and --no-overlap",
                        field="--no-overlap", fix="give each overlap once")
    o.update({names[x]: False for x in getattr(args, "no_overlap", [])})
    if getattr(args, "moe_token_dispatcher", "alltoall") != "alltoall":
        o["moe_token_dispatcher"] = args.moe_token_dispatcher
    _check_cp_comm_flag(args)
    if settings is not None and args.cp > 1:   # the flag, else the config's, else p2p
        o["cp_comm_type"] = settings.placement.cp_comm_type
        o["cp_a2a_size"] = settings.placement.cp_a2a_size
    elif getattr(args, "cp_a2a_size", None):
        raise UserError("sets a2a+p2p's all-to-all level, and context parallelism is off",
                        field="--cp-a2a-size", fix="add --cp N (N > 1), or drop --cp-a2a-size")
    if getattr(args, "moe_expert_capacity_factor", None) is not None:
        o["moe_expert_capacity_factor"] = args.moe_expert_capacity_factor
    if getattr(args, "moe_pad_expert_input_to_capacity", False):
        o["moe_pad_expert_input_to_capacity"] = True
    method = getattr(args, "recompute_method", "uniform")
    layers = getattr(args, "recompute_num_layers", 1)
    if (method, layers) != ("uniform", 1):
        if layers < 1:
            raise UserError(f"must be >= 1, got {layers}", field="--recompute-num-layers",
                            fix="give the number of blocks per chunk (or group) to recompute")
        if args.recompute != "full":
            raise UserError("sets how full recomputation runs", field="--recompute-method/"
                            "--recompute-num-layers", fix="add --recompute full, or drop them")
        o.update(recompute_method=method, recompute_num_layers=layers)
    from phaze.place.evaluate import dtype_options

    o.update(dtype_options(getattr(args, "framework", None), getattr(args, "grad_sync_dtype", None),
                           getattr(args, "optimizer_state_dtype", None)))
    # optimizer sharding: the framework's own unless the command line says otherwise
    # (--zero-stage N, or --no-zero1 = stage 0); the sweep config's zero1 is a sweep setting
    stage = getattr(args, "zero_stage", None)
    if stage is None and getattr(args, "zero1", None) is False:
        stage = 0
    if stage is not None:
        o.update(zero_stage=stage, distributed_optimizer=False)
        if stage == 1:
            o["zero1"] = True
    return o


def _check_cp_comm_flag(args) -> None:
    """UserError for --cp-comm-type without context parallelism, and for --zero-stage
    with a --zero1 / --no-zero1 that says otherwise (both evaluate routes)."""
    if getattr(args, "cp_comm_type", None) and args.cp <= 1:
        raise UserError("sets how context parallelism exchanges keys, which is off",
                        field="--cp-comm-type", fix="add --cp N (N > 1), or drop --cp-comm-type")
    stage, zero1 = getattr(args, "zero_stage", None), getattr(args, "zero1", None)
    if stage is not None and zero1 is not None and zero1 != (stage == 1):
        flag = "--zero1" if zero1 else "--no-zero1"
        raise UserError(f"contradicts --zero-stage {stage}", field=flag,
                        fix="give --zero-stage alone (--zero1 is --zero-stage 1), or drop "
                            "--zero-stage")


def _print_plan(spec, args, plan, hbm, batch) -> None:
    from phaze.place.plan import token_drop_label

    GiB = 1024**3
    w = sys.stdout.write
    axes = "".join(f" {k}={v}" for k, v in (("cp", args.cp), ("ep", args.ep)) if v > 1)
    net = plan.get("network") or {}
    where = f" ({net['name']} network)" if net.get("name") else \
        (f" (network: {net['devices_per_node']} per node, {net['intra_bw_Bps'] / 1e9:g} / "
         f"{net['inter_bw_Bps'] / 1e9:g} GB/s in / between nodes)" if net else "")
    w(f"{spec.name} on {plan['arch']}{where}: t={args.tp} p={args.pp} d={args.dp}{axes} "
      f"mbs={args.mbs} batch={batch} recompute={args.recompute} interleave={args.interleave}\n")
    if plan.get("framework"):       # the preset route: how the figure was obtained
        po, go = plan.get("plan_options", {}), plan.get("graph_options", {})
        router = [x for x, on in (("fused", go.get("moe_router_fusion")),
                                  (go.get("moe_router_load_balancing_type"),
                                   go.get("moe_router_load_balancing_type", "none") != "none"),
                                  ("forced balance", go.get("moe_router_force_load_balancing")))
                  if on]
        cal = plan.get("calibration")
        how = [f"framework {plan['framework']}",
               {"none": "uncalibrated: the chip's name is no preset's",
                "given": "cost parameters given"}.get(cal, f"{cal} calibration")
               ] + [x for x, on in (
            (f"fp8 {plan.get('fp8_recipe')}", plan.get("fp8")),
            # what the plan ran: Megatron turns sequence parallelism off at t = 1
            ("sequence parallel", plan.get("sequence_parallel", args.sequence_parallel)),
            ("no sequence parallel at t = 1", args.sequence_parallel
             and not plan.get("sequence_parallel", True)),
            (f"expert TP {po.get('expert_tp')}", po.get("expert_tp")),
            (f"dispatcher {po.get('moe_token_dispatcher')}",
             po.get("moe_token_dispatcher", "alltoall") != "alltoall"),
            ("router " + ",".join(router), bool(router)),
            (f"CP {po.get('cp_comm_type')}", args.cp > 1),
            ("token drop " + token_drop_label(po.get("moe_expert_capacity_factor"),
                                              po.get("moe_pad_expert_input_to_capacity", False)),
             po.get("moe_expert_capacity_factor") is not None),
            (f"grads {po.get('grad_bytes', 0):g} B", True),
            (f"recompute {po.get('recompute_method')} {po.get('recompute_num_layers')}",
             (po.get("recompute_method"), po.get("recompute_num_layers")) != ("uniform", 1)),
            (f"recompute modules {','.join(plan.get('recompute_modules') or [])}",
             plan.get("recompute_modules") is not None),
            (f"pipeline layout {plan.get('pipeline_layout')}", plan.get("pipeline_layout")),
            ("overlaps " + ",".join(k for k in ("overlap_grad_reduce", "overlap_param_gather",
                                                "tp_comm_overlap", "overlap_p2p",
                                                "overlap_moe_expert_parallel_comm") if po.get(k)),
             any(po.get(k) for k in ("overlap_grad_reduce", "overlap_param_gather",
                                     "tp_comm_overlap", "overlap_p2p",
                                     "overlap_moe_expert_parallel_comm")))) if on]
        w(f"  ({'; '.join(how)})\n")
    extra = (f", {plan['tflops_per_device']:.1f} TFLOP/s per device"
             if plan.get("tflops_per_device") else "")
    if "tflops_per_gpu_eq3" in plan:
        extra += f" ({plan['tflops_per_gpu_eq3']:.1f} by Narayanan Eq. 3)"
    mfu = f"MFU {plan['mfu'] or 0:.1%}"
    if plan.get("mfu_fp8_peak") is not None:
        mfu += f" of the bf16 peak, {plan['mfu_fp8_peak']:.1%} of the FP8 peak"
    w(f"  time per batch   {plan['time_per_batch_s']:.6g} s   ({plan['samples_per_s']:.1f} "
      f"samples/s{extra}, {mfu})\n")
    from phaze.place.plan import BREAKDOWN_KEYS
    for k in BREAKDOWN_KEYS:
        w(f"    {k[:-2]:<10} {plan[k]:.6g} s\n")
    # the CP steps beyond the chunk's own attention core: a ring (p2p), KV all-gathers or
    # Q/K/V/O all-to-alls (plan.context_parallel_chain), as the plan's cp_comm_type says
    cp_kind = {"allgather": "CP all-gather steps", "a2a": "CP all-to-all steps",
               "a2a+p2p": "CP all-to-all and ring steps"}.get(
        plan.get("plan_options", {}).get("cp_comm_type"), "CP ring steps")
    inside = [f"{name} {plan[k]:.6g} s" for k, name in (("ep_a2a_s", "EP all-to-alls"),
                                                        ("cp_ring_s", cp_kind))
              if plan.get(k)]
    if inside:   # parts of compute_s (the busiest device), not breakdown terms of their own
        w(f"      (in compute: {', '.join(inside)})\n")
    w(f"  memory per device {plan['memory_per_device_bytes'] / GiB:.2f} GiB of "
      f"{hbm / GiB:.0f} GiB{'' if plan['feasible'] else '  (DOES NOT FIT)'}\n")
