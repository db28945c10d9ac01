"""Load the published measurements in phaze/data/ground_truth.yaml into plain rows.

Each `Case` is one measured training run: a GPT model, a fixed Megatron strategy and the
measured figure. Microbatch and interleave are None where neither the paper nor its
authors' run scripts give them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from phaze.units import GiB

DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "ground_truth.yaml"

TABLE_NARAYANAN = "narayanan2021_table1"
TABLE_KORTHIKANTI = "korthikanti2023_table5"
TABLE_H100 = "megatron_readme_2024_h100"
TABLE_NEMO = "nemo_2407_h100_fp8"
TABLE_DGXC = "dgxc_h100"
TABLE_BRIDGE = "bridge_h100"
TABLES = (TABLE_KORTHIKANTI, TABLE_NARAYANAN, TABLE_H100, TABLE_NEMO, TABLE_DGXC, TABLE_BRIDGE)
# held out and evaluated, never fitted (phaze.validate.calibrate fits other tables only)
HELD_OUT_H100_TABLES = (TABLE_NEMO, TABLE_DGXC, TABLE_BRIDGE)


@dataclass(frozen=True)
class Case:
    table: str                    # TABLE_NARAYANAN | TABLE_KORTHIKANTI
    name: str                     # e.g. "145.6B" or "175B/selective"
    hidden: int
    heads: int
    layers: int
    seq: int
    vocab: int
    tp: int
    pp: int
    gpus: int
    batch: int                    # global batch (sequences)
    recompute: str                # "full" | "selective"
    sequence_parallel: bool
    metric: str                   # "tflops_per_gpu" | "seconds_per_iteration"
    measured: float               # in the metric's unit
    microbatch: int | None = None  # None: not published, searched
    interleave: int | None = None  # None: not published, searched
    arch: str = "a100"             # preset the run is evaluated on
    framework: str | None = None   # phaze.place.evaluate.FRAMEWORKS key (None: its default)
    ddp_impl: str = "local"        # Megatron-LM --DDP-impl (phaze.place.evaluate.DDP_IMPLS)
    family: str = "gpt"            # gpt (Megatron GPT) | llama (RMSNorm, SwiGLU, RoPE, untied) | zoo (see zoo) |
    #                                nemotron (LayerNorm, squared ReLU, RoPE, untied)
    ffn: int = 0                   # MLP inner width; 0 = 4 x hidden
    kv_heads: int = 0              # key/value heads (GQA); 0 = heads
    cp: int = 1                    # context-parallel size
    fp8: bool = False              # FP8 GEMMs (Transformer Engine)
    fp8_recipe: str = "delayed"    # its recipe (Megatron-Core --fp8-recipe; CostParams.fp8_recipe)
    dropout: bool = True           # hidden and attention dropout (GPT family)
    tp_overlap: bool | None = None  # tp_comm_overlap as the run set it (None: the framework's)
    ce_fusion: bool = False        # fused cross entropy (--cross-entropy-loss-fusion)
    # PlanOptions the run's config sets beyond its framework profile, as (name, value) pairs
    plan_options: tuple = ()
    tied_embeddings: bool = True
    caveat: str = ""               # transcription caveat (ground_truth.yaml), "" = read from the source
    # a zoo model (phaze.model.zoo) instead of the family/shape columns above (which then
    # only repeat the zoo model's, for the metrics); mtp_layers: that many copies of its
    # last layer appended (a multi-token-prediction block run as one more layer)
    zoo: str = ""
    mtp_layers: int = 0
    ep: int = 1                    # expert-parallel size (MoE)
    expert_tp: int = 0             # expert tensor-parallel size; 0 = tp
    recompute_modules: tuple = ()  # --recompute-modules of selective recompute; () = the default
    account_embedding: bool = False  # account_for_embedding_in_pipeline_split
    account_loss: bool = False       # account_for_loss_in_pipeline_split
    # Megatron-Core --pipeline-model-parallel-layout ("" = none; phaze.place.layout); its m's
    # are the mtp_layers stand-ins; not with account_embedding / account_loss
    pipeline_layout: str = ""
    # Megatron-Core token dropping of an MoE run (moe_expert_capacity_factor, None:
    # dropless; moe_pad_expert_input_to_capacity): the graph's routed slots
    # (phaze.model.graph.routed_slots), passed as the PlanOptions of those names
    moe_expert_capacity_factor: float | None = None
    moe_pad_expert_input_to_capacity: bool = False
    # the MoE router as the run set it (build_graph's options of these names)
    moe_router_fusion: bool = False
    moe_router_load_balancing_type: str = "none"
    moe_router_force_load_balancing: bool = False
    source: str = ""               # where the row was read (container, table commit)

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp * self.cp)


@dataclass(frozen=True)
class MemoryPoint:
    model: str                    # Korthikanti model name (22B, 175B, 530B, 1T)
    params_and_optimizer_bytes: float
    activations_tp_only_bytes: float
    activations_sp_selective_bytes: float


@lru_cache(maxsize=1)
def raw() -> dict:
    with open(DATA_PATH) as f:
        return yaml.safe_load(f)


def _rows(table: dict) -> list[dict]:
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def narayanan_cases() -> list[Case]:
    t = raw()[TABLE_NARAYANAN]
    out = []
    for r in _rows(t):
        out.append(Case(
            table=TABLE_NARAYANAN, name=f"{r['params_billion']}B", hidden=r["hidden"],
            heads=r["heads"], layers=r["layers"], seq=t["seq"], vocab=t["vocab"],
            tp=r["tp"], pp=r["pp"], gpus=r["gpus"], batch=r["batch"],
            recompute=t["recompute"], sequence_parallel=t["sequence_parallel"],
            metric=t["metric"], measured=float(r["tflops_per_gpu"]),
            microbatch=r["microbatch"], interleave=r["interleave"],
            framework=t["framework"], ddp_impl=r["ddp"]))
    return out


def korthikanti_configs() -> list[dict]:
    return _rows(raw()["korthikanti2023_table3"])


def korthikanti_cases() -> list[Case]:
    t3 = raw()["korthikanti2023_table3"]
    t5 = raw()[TABLE_KORTHIKANTI]
    out = []
    for setting, opts in t5["settings"].items():
        for r in _rows(t3):
            out.append(Case(
                table=TABLE_KORTHIKANTI, name=f"{r['model']}/{setting}", hidden=r["hidden"],
                heads=r["heads"], layers=r["layers"], seq=t3["seq"], vocab=t3["vocab"],
                tp=r["tp"], pp=r["pp"], gpus=r["gpus"], batch=r["batch"],
                recompute=opts["recompute"], sequence_parallel=opts["sequence_parallel"],
                metric=t5["metric"], measured=float(t5["seconds"][setting][r["model"]]),
                microbatch=r["microbatch"], interleave=r["interleave"]))
    return out


TABLE_LAYER_TIMES = "korthikanti2023_table4"


def korthikanti_layer_rows() -> list[dict]:
    """Korthikanti Table 4 (held out): forward / backward milliseconds of one layer per
    experiment, each row with the `model` (a Table 3 model) it was measured on."""
    t4 = raw()[TABLE_LAYER_TIMES]
    return [{"model": t4["model"], **r} for r in _rows(t4)]


def h100_cases() -> list[Case]:
    """The Megatron-LM README's H100 rows. Measured MFU % = the per-GPU TFLOP/s column /
    the bf16 peak (989) where the table gives TFLOP/s, else the MFU column (the strong-
    scaling endpoints, stated in the README text)."""
    t = raw()[TABLE_H100]
    peak = float(t["peak_bf16_tflops"])
    out = []
    for r in _rows(t):
        mfu = 100.0 * r["tflops_per_gpu"] / peak if r["tflops_per_gpu"] else float(r["mfu_pct"])
        out.append(Case(table=TABLE_H100, name=str(r["name"]), hidden=r["hidden"],
                        heads=r["heads"], layers=r["layers"], seq=t["seq"], vocab=t["vocab"],
                        tp=r["tp"], pp=r["pp"], gpus=r["gpus"], batch=r["batch"],
                        recompute=t["recompute"], sequence_parallel=t["sequence_parallel"],
                        metric=t["metric"], measured=mfu, arch=t["arch"],
                        framework=t["framework"], tied_embeddings=bool(t["tied_embeddings"]),
                        caveat=str(r["caveat"] or "")))
    return out


def nemo_cases(table: str = TABLE_NEMO) -> list[Case]:
    """NeMo runs on DGX-H100 (held out): NeMo 24.07's FP8 performance summary, or (table
    TABLE_DGXC) the DGX Cloud benchmarking recipes, BF16 and FP8. Vocabulary padded to a
    multiple of 128 x t as NeMo's make_vocab_size_divisible_by does. A table may keep the
    columns shared by a model in `models` (merged under each row's own), and set fp8 per row
    or for the whole table; the measured figure is the column named by the table's metric."""
    t = raw()[table]
    models = t.get("models", {})
    out = []
    for row in _rows(t):
        r = {**models.get(row.get("model"), {}), **row}
        pad = 128 * r["tp"]
        gpt = r["family"] == "gpt"        # GPT3: tied, dropout; Llama, Nemotron: neither
        out.append(Case(table=table, name=r["name"], hidden=r["hidden"], heads=r["heads"],
                        layers=r["layers"], seq=r["seq"], vocab=-(-r["vocab"] // pad) * pad,
                        tp=r["tp"], pp=r["pp"], gpus=r["gpus"], batch=r["batch"],
                        recompute=r["recompute"], sequence_parallel=r["tp"] > 1,
                        metric=t["metric"], measured=float(r[t["metric"]]),
                        microbatch=r["microbatch"], interleave=r["vp"], arch=t["arch"],
                        framework=t["framework"], tied_embeddings=gpt,
                        family=r["family"], ffn=r["ffn"], kv_heads=r["kv_heads"], cp=r["cp"],
                        fp8=bool(r.get("fp8", t.get("fp8"))), fp8_recipe=t["fp8_recipe"],
                        dropout=gpt,
                        tp_overlap=bool(r["tp_overlap"]), ce_fusion=bool(r["ce_fusion"]),
                        plan_options=_optim_dtype(r["optim_dtype"], t["framework"]),
                        caveat=str(r.get("caveat") or "")))
    return out


def _optim_dtype(name: str, framework: str) -> tuple:
    """PlanOptions pairs of distributed Adam's gradient-sync and state dtype (Apex
    DistributedFusedAdam grad_sync_dtype and dtype, NeMo's optim config;
    phaze.place.evaluate.dtype_options, what `phaze evaluate --grad-sync-dtype
    --optimizer-state-dtype` applies): fp32 is the profile's own (4 B gradients, 12 B state).
    `name` is one dtype for both ("bf16") or "grad/state" ("bf16/fp32")."""
    from phaze.place.evaluate import dtype_options

    grad, _, state = name.partition("/")
    state = state or grad
    if grad == state == "fp32":
        return ()
    return tuple(dtype_options(framework, None if grad == "fp32" else grad,
                               None if state == "fp32" else state).items())


def bridge_cases() -> list[Case]:
    """Megatron-Bridge (NeMo 25.09-26.06) DGX-H100 pre-training rows (held out): zoo models,
    the per-row parallel layout and the recipe settings of ground_truth.yaml's bridge_h100
    (`models` merged under each row as nemo_cases does). The settings that are PlanOptions
    go into plan_options: dispatcher flex (moe_token_dispatcher), a2a_overlap
    (overlap_moe_expert_parallel_comm), fsdp (Megatron-FSDP optim_grads_params: zero_stage 3
    without the distributed optimizer), recompute_layers (full recompute of that many layers
    per stage, method block) and optim_dtype (grad_sync_dtype / state dtype). A model entry
    may set Megatron-Core's token dropping, moe_expert_capacity_factor and
    moe_pad_expert_input_to_capacity (the 25.09 Qwen3 runs; absent: dropless), and
    moe_router_fusion (the perf scripts' common settings of the Qwen3, GPT-OSS and
    DeepSeek-V3 runs; absent: Megatron-Core's default, off), the model's
    moe_router_load_balancing_type (its Megatron-Bridge provider's, with a coefficient > 0)
    and moe_router_force_load_balancing (the perf scripts' benchmark setting); and where a
    model's runs leave the nemo-2024 profile, tp_comm_overlap (Case.tp_overlap) and
    overlap_grad_reduce (a PlanOption)."""
    from phaze.model.zoo import get_model
    from phaze.place.plan import MOE_DISPATCHERS

    t = raw()[TABLE_BRIDGE]
    models = t.get("models", {})
    out = []
    for row in _rows(t):
        r = {**models.get(row.get("model"), {}), **row}
        spec = get_model(r["zoo"])
        if r["dispatcher"] not in MOE_DISPATCHERS:
            raise ValueError(f"{r['name']}: dispatcher {r['dispatcher']!r} not in "
                             f"{MOE_DISPATCHERS}")
        opts = dict(_optim_dtype(r["optim_dtype"], t["framework"]))
        if r["dispatcher"] == "flex":
            opts["moe_token_dispatcher"] = "flex"
        if r["a2a_overlap"]:
            opts["overlap_moe_expert_parallel_comm"] = True
        if "overlap_grad_reduce" in r:      # where the run's config leaves the profile's
            opts["overlap_grad_reduce"] = bool(r["overlap_grad_reduce"])
        if r["fsdp"]:
            opts.update(zero_stage=3, distributed_optimizer=False)
        if r["recompute_layers"]:
            opts.update(recompute_method="block", recompute_num_layers=r["recompute_layers"])
        mods = r["recompute_modules"]
        out.append(Case(table=TABLE_BRIDGE, name=r["name"], hidden=spec.hidden, heads=spec.heads,
                        layers=spec.layers + r.get("mtp_layers", 0), seq=r["seq"],
                        vocab=spec.vocab, tp=r["tp"], pp=r["pp"], gpus=r["gpus"],
                        batch=r["batch"], recompute=r["recompute"],
                        sequence_parallel=r["tp"] > 1, metric=t["metric"],
                        measured=float(r[t["metric"]]), microbatch=r["microbatch"],
                        interleave=r["vp"], arch=t["arch"], framework=t["framework"],
                        tied_embeddings=spec.tied_embeddings, kv_heads=spec.kv_heads, family="zoo",
                        cp=r["cp"], fp8=bool(r["fp8"]),
                        fp8_recipe=r.get("fp8_recipe") or t["fp8_recipe"],
                        dropout=False,
                        ce_fusion=bool(r["ce_fusion"]), plan_options=tuple(opts.items()),
                        tp_overlap=(None if r.get("tp_comm_overlap") is None
                                    else bool(r["tp_comm_overlap"])),
                        caveat=str(r.get("caveat") or ""), zoo=r["zoo"],
                        mtp_layers=int(r.get("mtp_layers", 0)), ep=r["ep"],
                        expert_tp=r["etp"] or 0,
                        recompute_modules=tuple(mods.split(",")) if mods else (),
                        account_embedding=bool(r["account_embedding"]),
                        account_loss=bool(r["account_loss"]),
                        pipeline_layout=str(r.get("pipeline_layout") or ""),
                        moe_expert_capacity_factor=r.get("moe_expert_capacity_factor"),
                        moe_pad_expert_input_to_capacity=bool(
                            r.get("moe_pad_expert_input_to_capacity", False)),
                        moe_router_fusion=bool(r.get("moe_router_fusion", False)),
                        moe_router_load_balancing_type=str(
                            r.get("moe_router_load_balancing_type", "none")),
                        moe_router_force_load_balancing=bool(
                            r.get("moe_router_force_load_balancing", False)),
                        source=f"{r['container']} ({t['table_file']} at {r['table_commit']}; "
                               f"settings: {r['settings_ref']})"))
    return out


def cases(table: str) -> list[Case]:
    if table == TABLE_BRIDGE:
        return bridge_cases()
    if table in (TABLE_NEMO, TABLE_DGXC):
        return nemo_cases(table)
    if table == TABLE_H100:
        return h100_cases()
    if table == TABLE_NARAYANAN:
        return narayanan_cases()
    if table == TABLE_KORTHIKANTI:
        return korthikanti_cases()
    raise KeyError(table)


def memory_points() -> list[MemoryPoint]:
    return [MemoryPoint(r["model"], r["params_and_optimizer"] * GiB,
                        r["activations_tp_only"] * GiB, r["activations_sp_selective"] * GiB)
            for r in _rows(raw()["korthikanti2023_figure1_gib"])]


def calculon_mae_percent(table: str) -> float | None:
    v = raw()["calculon_reference_mae_percent"].get(table)
    return None if v is None else float(v)
