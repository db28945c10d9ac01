"""Runnable outputs of a best design: its plan as Megatron-LM arguments and as NeMo
config keys, and its chip as a JSON file (phaze.hw.chipfile) that `phaze arch show FILE`
and `phaze evaluate --arch FILE` read. The chip file is a hardware description, not a
reproduction: `phaze evaluate --arch FILE` costs it by the GPU-preset route (no layer
ILPs); the sweep's row is recomputed by the summary's evaluate_command (--grid G --arch ID).

Megatron splits the transformer blocks evenly over pipeline stages; an uneven DP split is
given with --decoder-first/last-pipeline-num-layers (Megatron-core) when only the first and
last stages differ, else it is not expressible and the text says so. The chain's layer 0
is the embedding (prologue) and its last layer the head (epilogue): they sit on the first
and the last stage as in Megatron."""

from __future__ import annotations

import json
import shlex

from phaze.units import GiB


def chunk_blocks(stages, n: int) -> list[int]:
    """Transformer blocks of each chunk of a plan's stages ([lo, hi) layer ranges) over a
    chain of n layers (prologue + n-2 blocks + epilogue)."""
    return [(hi - lo) - (lo == 0) - (hi == n) for lo, hi in stages]


def block_split(stages: list, n: int) -> dict | None:
    """Blocks per chunk of a plan's stages over a chain of n layers (prologue + n-2 blocks
    + epilogue): {"first", "middle", "last", "chunks"}, or None when the middle chunks
    differ (not expressible in Megatron)."""
    blocks = chunk_blocks(stages, n)
    if len(blocks) == 1:
        return {"first": blocks[0], "middle": None, "last": blocks[0], "chunks": 1}
    mid = blocks[1:-1]
    if mid and len(set(mid)) > 1:
        return None
    return {"first": blocks[0], "middle": mid[0] if mid else None, "last": blocks[-1],
            "chunks": len(blocks)}


def pipeline_layout(stages, n: int) -> str:
    """Megatron-Core's --pipeline-model-parallel-layout of a plan's stages (chunks in
    order, phaze.place.layout's grammar): E the prologue (embedding), t*k the chunk's k
    blocks, L the epilogue (output layer and loss); a chunk may hold nothing. It expresses
    every split the DP makes, interleaved or not."""
    out = []
    for (lo, hi), k in zip(stages, chunk_blocks(stages, n)):
        body = "t" if k == 1 else (f"t*{k}" if k > 1 else "")
        out.append(("E" if lo == 0 else "") + body + ("L" if hi == n else ""))
    return "|".join(out)


def split_kind(stages, n: int, v: int) -> str:
    """How Megatron takes a plan's split: "even" (the uniform split), "ends" (only the
    first and last pipeline ranks differ, v = 1: --decoder-first/last-pipeline-num-layers)
    or "layout" (anything else: --pipeline-model-parallel-layout; with v > 1 the first /
    last rank flags would split each rank's blocks evenly over its chunks)."""
    blocks = chunk_blocks(stages, n)
    if len(set(blocks)) <= 1:
        return "even"
    split = block_split(stages, n)
    return "ends" if v == 1 and split is not None else "layout"


def plan_axes(r, zero1: bool = False) -> tuple[int, int, int]:
    """(ep, cp, ZeRO stage) of a placement row; a table without those columns (older
    rows): (1, 1, 1 if zero1 else 0)."""
    def col(k, default):
        v = r.get(k) if hasattr(r, "get") else None
        return int(v) if v is not None and v == v else default
    return col("ep", 1), col("cp", 1), col("zero_stage", 1 if zero1 else 0)


# Megatron-Core's data-parallel sharding per ZeRO stage (custom FSDP, core_r0.11+:
# --use-custom-fsdp --data-parallel-sharding-strategy; stage 1 is the distributed optimizer)
ZERO_MEGATRON = {1: ["--use-distributed-optimizer"],
                 2: ["--use-distributed-optimizer", "--use-custom-fsdp",
                     "--data-parallel-sharding-strategy optim_grads"],
                 3: ["--use-distributed-optimizer", "--use-custom-fsdp",
                     "--data-parallel-sharding-strategy optim_grads_params"]}


def cp_comm_arg(cp_comm_type: str | None) -> str:
    """The sweep's placement.cp_comm_type as Megatron-Core's --cp-comm-type and NeMo's
    cp_comm_type take it: Transformer Engine raises on "allgather", its spelling is
    "all_gather" (phaze.settings.CP_COMM_TYPE_ALIASES)."""
    from phaze.settings import CP_COMM_TYPE_ALIASES

    c = CP_COMM_TYPE_ALIASES.get(cp_comm_type, cp_comm_type)
    return "all_gather" if c == "allgather" else c


# the sweep's attention kernels as Megatron-Core --attention-backend names them: eager
# (the s x s probabilities materialised) is its own DotProductAttention, "local"
ATTENTION_BACKENDS = {"eager": "local", "flash": "flash"}


def megatron_args(r, global_batch: int, zero1: bool = False, optimizer: str = "adam",
                  cp_comm_type: str = "p2p", vocab_pad_multiple: int = 1,
                  attention: str = "eager") -> str:
    """Megatron-LM pretrain_gpt.py arguments of a placement row (one line per flag): the
    row's TP, PP, CP, EP sizes and ZeRO stage (plan_axes); with CP, the sweep's
    `cp_comm_type` (placement.cp_comm_type: the row was costed with it); the graph's
    vocabulary padding (graph.vocab_pad_multiple, Megatron's
    --make-vocab-size-divisible-by, x TP in both) and attention kernel (graph.attention:
    ATTENTION_BACKENDS), which the row's layer times were costed with."""
    t, p, d, v = int(r["t"]), int(r["p"]), int(r["d"]), int(r["interleave"])
    ep, cp, zero = plan_axes(r, zero1)
    stages = json.loads(r["stages"]) if isinstance(r["stages"], str) else list(r["stages"])
    split = block_split(stages, stages[-1][1]) if stages else {"first": 0, "middle": None,
                                                               "last": 0, "chunks": p * v}
    lines = [f"# world size {p * d * t * cp} devices: data parallel = world / (TP x CP x PP) = {d}",
             f"--tensor-model-parallel-size {t}", f"--pipeline-model-parallel-size {p}",
             f"--context-parallel-size {cp}", f"--micro-batch-size {int(r['mbs'])}",
             f"--global-batch-size {global_batch}", f"--seq-length {int(r['seq'])}",
             f"--optimizer {optimizer}",
             f"--make-vocab-size-divisible-by {int(vocab_pad_multiple)}",
             f"--attention-backend {ATTENTION_BACKENDS[attention]}"]
    if cp > 1:
        lines.append(f"--cp-comm-type {cp_comm_arg(cp_comm_type)}")
    if r["recompute"] == "full":
        lines += ["--recompute-granularity full", "--recompute-method uniform",
                  "--recompute-num-layers 1"]
    elif r["recompute"] == "selective":
        lines.append("--recompute-granularity selective")
    if _is_on(r.get("sequence_parallel")):
        lines.append("--sequence-parallel")
    if ep > 1:
        lines.append(f"--expert-model-parallel-size {ep}")
    lines += ZERO_MEGATRON.get(zero, [])
    if zero >= 2:
        lines.append(f"# ZeRO-{zero}: DeepSpeed (Megatron-DeepSpeed) names it --zero-stage {zero}")
    if not stages:
        lines.append("# the table gives no stages: Megatron's uniform split assumed")
        return "\n".join(lines)
    kind = split_kind(stages, stages[-1][1], v)
    if kind == "layout":        # Megatron-Core >= 0.13; the layout also sets the chunks
        # quoted: '|' and '*' are shell syntax
        lines.append("--pipeline-model-parallel-layout "
                     + shlex.quote(pipeline_layout(stages, stages[-1][1])))
    else:
        if v > 1:
            lines.append(f"--num-layers-per-virtual-pipeline-stage {split['first']}")
        if kind == "ends" and p > 1:
            lines += [f"--decoder-first-pipeline-num-layers {split['first']}",
                      f"--decoder-last-pipeline-num-layers {split['last']}"]
    return "\n".join(lines)


def nemo_yaml(r, global_batch: int, devices_per_node: int, zero1: bool = False,
              optimizer: str = "adam", cp_comm_type: str = "p2p", vocab_pad_multiple: int = 1,
              attention: str = "eager") -> str:
    """NeMo (Megatron GPT) trainer/model config keys of a placement row, as YAML (with CP,
    the sweep's `cp_comm_type`, a TransformerConfig field NeMo passes through; the graph's
    vocabulary padding and attention backend as megatron_args)."""
    t, p, d, v = int(r["t"]), int(r["p"]), int(r["d"]), int(r["interleave"])
    ep, cp, zero = plan_axes(r, zero1)
    world = p * d * t * cp
    per_node = min(world, devices_per_node)
    rec = {"full": "full", "selective": "selective"}.get(r["recompute"])
    # ZeRO-2 / 3 are NeMo's torch FSDP (fsdp_sharding_strategy grad / full), which runs
    # with a plain optimizer; ZeRO-1 its distributed optimizer
    opt = ("distributed_fused_adam" if zero == 1 else "fused_adam") if optimizer == "adam" else "sgd"
    stages = json.loads(r["stages"]) if isinstance(r["stages"], str) else list(r["stages"])
    lines = ["trainer:", f"  devices: {per_node}", f"  num_nodes: {-(-world // per_node)}",
             "model:", f"  tensor_model_parallel_size: {t}",
             f"  pipeline_model_parallel_size: {p}", f"  context_parallel_size: {cp}",
             *([f"  cp_comm_type: {cp_comm_arg(cp_comm_type)}"] if cp > 1 else []),
             f"  expert_model_parallel_size: {ep}",
             f"  virtual_pipeline_model_parallel_size: {v if v > 1 else 'null'}",
             f"  micro_batch_size: {int(r['mbs'])}", f"  global_batch_size: {global_batch}",
             f"  encoder_seq_length: {int(r['seq'])}",
             f"  make_vocab_size_divisible_by: {int(vocab_pad_multiple)}",
             f"  attention_backend: {ATTENTION_BACKENDS[attention]}",
             f"  sequence_parallel: {'true' if _is_on(r.get('sequence_parallel')) else 'false'}",
             f"  activations_checkpoint_granularity: {rec or 'null'}"]
    if rec == "full":
        lines += ["  activations_checkpoint_method: uniform",
                  "  activations_checkpoint_num_layers: 1"]
    if zero >= 2:
        lines += ["  fsdp: true", f"  fsdp_sharding_strategy: {'grad' if zero == 2 else 'full'}"]
    kind = split_kind(stages, stages[-1][1], v) if stages else "even"
    if kind == "ends":          # TransformerConfig fields NeMo passes through
        split = block_split(stages, stages[-1][1])
        lines += [f"  num_layers_in_first_pipeline_stage: {split['first']}",
                  f"  num_layers_in_last_pipeline_stage: {split['last']}"]
    elif kind == "layout":
        lines.append(f"  pipeline_model_parallel_layout: "
                     f"\"{pipeline_layout(stages, stages[-1][1])}\"")
    lines += ["  optim:", f"    name: {opt}"]
    return "\n".join(lines) + "\n"


def chip_arch(grid_row, hbm_bytes: float, network: dict | None):
    """The Arch of a grid row with the plan's HBM capacity and the sweep's network."""
    from phaze.hw.arch import Network, arch_from_row

    net = Network.from_dict(dict(network)) if network else Network()
    a = arch_from_row(grid_row, network=net, hbm_bytes=float(hbm_bytes))
    return a.with_(name=f"phaze-{a.arch_id}")


def chip_json(grid_row, hbm_bytes: float, network: dict | None) -> str:
    from phaze.hw.chipfile import chip_dict

    return json.dumps(chip_dict(chip_arch(grid_row, hbm_bytes, network)), indent=1) + "\n"


def hbm_note(hbm_bytes: float) -> str:
    return f"{hbm_bytes / GiB:g} GiB"


def _is_on(v) -> bool:
    """A row's boolean column as stored (bool, numpy bool, or None / NaN for an infeasible
    row's): True only for a true value (numpy's True_ is not `True`)."""
    return v is not None and v == v and bool(v)
