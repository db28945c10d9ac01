# Helpers shared by the rules: config validation, wildcard values, file lists, params.
# No modelling code here: every computation is a `phaze` subcommand.

import json
import os
import re
import shlex
import shutil
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# ---- config validation (before any job) -------------------------------------------------
from phaze.settings import (
    SCHEMA_PATH,
    SweepSettings,
    check_config_schema,  # noqa: E402
    schema_error,
)


def refuse_config(message):
    """A user error in the config: one line on stderr, exit code 2, before any job
    (Snakemake 9 passes a SystemExit raised while parsing the Snakefile straight through;
    a WorkflowError would print its file, line and two stack lines and exit 1)."""
    print(f"phaze: error: invalid config: {message}", file=sys.stderr)
    sys.exit(2)


def validate_config(cfg):
    """Schema check (filling the arch grid's defaults), then the typed settings (their
    defaults are phaze/settings.py's), then the semantic checks the schema cannot express.
    A problem ends the run in `refuse_config` naming the offending field."""
    from phaze.errors import UserError  # noqa: PLC0415

    try:
        validate(cfg, schema=str(SCHEMA_PATH))
    except WorkflowError as e:
        verr = e.__context__  # the jsonschema ValidationError snakemake wrapped
        if not hasattr(verr, "absolute_path"):
            raise
        refuse_config(f"field {schema_error(verr)}")
    try:
        check_config_schema(cfg)  # strict types: 1.0 is no integer, .nan no number
        settings = SweepSettings.from_config(cfg)
    except UserError as e:
        refuse_config(f"field {e}")
    from phaze.configcheck import semantic_errors  # noqa: PLC0415

    # the grid check runs once, not again in every job
    for msg in semantic_errors(cfg, check_grid=workflow.is_main_process):
        refuse_config(msg)
    return settings


SETTINGS = validate_config(config)

# ---- environment of every job -------------------------------------------------------------
# `phaze` and `mpiexec` come from the environment snakemake itself runs in, even when that
# venv is not activated (e.g. `.venv/bin/snakemake --cores 2`).
VENV_BIN = os.path.dirname(sys.executable)
shell.prefix(f'set -euo pipefail; export PATH={shlex.quote(VENV_BIN)}:"$PATH"; ')


def local_mpi_launcher():
    """mpiexec when one is installed (the `mpi` extra), else '' (phaze place runs serially)."""
    path = VENV_BIN + os.pathsep + os.environ.get("PATH", "")
    return "mpiexec" if shutil.which("mpiexec", path=path) else ""


# ---- wildcard values ----------------------------------------------------------------------
MODELS = {m["name"]: m for m in config["models"]}
MBS = list(SETTINGS.microbatch_sizes)
N_CHUNKS = SETTINGS.jobs.n_chunks
PLACE_RANKS = SETTINGS.jobs.ranks
CHUNKS = list(range(N_CHUNKS))
GRID = "results/arch/grid.parquet"


wildcard_constraints:
    model="|".join(re.escape(n) for n in MODELS),
    seq=r"\d+",
    mbs=r"\d+",
    tp=r"\d+",
    sp=r"[01]",
    cp=r"\d+",
    ep=r"\d+",
    chunk=r"\d+",


def model_seqs():
    """(model, seq) pairs of the sweep."""
    return [(name, s) for name, m in MODELS.items() for s in m["seq"]]


_EPS = {}


def model_eps(model):
    """Expert-parallel sizes of a model's graphs: 0 for a dense model; for an MoE model each
    placement.ep value dividing its routed experts (phaze.model.graph.graph_eps; the config
    check refused a model with none)."""
    from phaze.model.graph import graph_eps  # noqa: PLC0415
    from phaze.model.zoo import resolve_model  # noqa: PLC0415

    if model not in _EPS:
        _EPS[model] = graph_eps(resolve_model(model_arg(model)), SETTINGS.placement.ep)
    return _EPS[model]


def graph_variants(model):
    """(TP width, sequence parallel 0|1, CP size, EP size) of a model's graphs (SP only
    where t > 1; EP 0 for a dense model, one per model_eps for an MoE one)."""
    return [
        (t, int(sp), cp, ep)
        for t in MODELS[model]["tp"]
        for sp in SETTINGS.graph.sp_values(t)
        for cp in MODELS[model].get("cp", [1])
        for ep in model_eps(model)
    ]


def graph_files(model, seq, mbs=None):
    """Graphs of one (model, seq) at one microbatch size (or all of them), every variant."""
    sizes = MBS if mbs is None else [mbs]
    return [
        f"results/graphs/{model}/s{seq}_b{b}_t{t}_sp{sp}_cp{cp}_ep{ep}.json"
        for b in sizes
        for t, sp, cp, ep in graph_variants(model)
    ]


def sched_shards(model, seq, mbs):
    return [f"results/sched/{model}/s{seq}_b{mbs}/{c}.parquet" for c in CHUNKS]


def latency_tables(model, seq):
    return [f"results/latency/{model}_s{seq}_b{b}.parquet" for b in MBS]


def all_latency_tables():
    return [t for m, s in model_seqs() for t in latency_tables(m, s)]


def place_tables():
    return [f"results/place/{m}_s{s}.parquet" for m, s in model_seqs()]


REPORT_FILES = [
    f"results/report/{name}"
    for name in (
        "summary.csv",
        "pareto.png",
        "throughput_per_area.png",
        "breakdown.png",
        "memory.png",
        "report.html",
    )
]


SWEEP_CONFIG = "results/config.yaml"


def all_targets():
    return place_tables() + REPORT_FILES


# ---- params helpers (every value a rule depends on goes through params) --------------------
def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


NETWORK_JSON = as_json(SETTINGS.net().to_dict())


def model_arg(name):
    """What `phaze graph --model` gets: the zoo name, or the Hugging Face config.json path."""
    return MODELS[name].get("hf_config", name)


def model_inputs(wildcards):
    """A Hugging Face config.json is an input (editing it reruns that model's graphs)."""
    path = MODELS[wildcards.model].get("hf_config")
    return [path] if path else []


def mpi_launch(wildcards, resources):
    """`mpiexec -n R` / `srun --mpi=pmi2 -n R`, or nothing for a serial run. Derived from
    resources, so switching launcher (laptop vs SLURM) never reruns a job."""
    if not resources.mpi or int(resources.tasks) < 2:
        return ""
    return f"{resources.mpi} -n {resources.tasks}"


# ---- the pruned search (rules/prune.smk, search.method: pruned) -------------------------
PRUNE_DIR = "results/prune/{model}_s{seq}"


def bound_config(wildcards):
    """The config blocks the bound pass depends on, for one (model, seq) only: editing
    another model, the scheduling or the job layout (placement.ranks included) never
    reruns it."""
    m = dict(MODELS[wildcards.model], seq=[int(wildcards.seq)])
    keys = ("microbatch_sizes", "graph", "placement", "network")
    blocks = {k: config[k] for k in keys if k in config}
    if "placement" in blocks:  # MPI ranks lay out jobs; they never change a result
        blocks["placement"] = {k: v for k, v in blocks["placement"].items() if k != "ranks"}
    return as_json({"models": [m], **blocks})


def wave_shards(wildcards):
    return [
        f"results/prune/{wildcards.model}_s{wildcards.seq}/sched_b{wildcards.mbs}"
        f"_w{wildcards.wave}/{c}.parquet"
        for c in CHUNKS
    ]


def wave_latency(model, seq, wave):
    return [f"results/prune/{model}_s{seq}/latency_b{b}_w{wave}.parquet" for b in MBS]


def waves_of(model, seq):
    """The waves run for (model, seq): 1, and 2 when the checkpoint left any arch to it."""
    info = checkpoints.prune_next.get(model=model, seq=seq).output.summary
    with open(info, encoding="utf-8") as f:
        return [1, 2] if json.load(f)["wave2_archs"] > 0 else [1]


def pruned_latency_tables(model, seq):
    return [t for w in waves_of(model, seq) for t in wave_latency(model, seq, w)]


def report_latency(wildcards):
    """Every merged latency table: in a pruned run, those of the waves that ran."""
    if SETTINGS.search.method == "pruned":
        return [t for m, s in model_seqs() for t in pruned_latency_tables(m, s)]
    return all_latency_tables()


def report_waves(wildcards):
    if SETTINGS.search.method == "pruned":
        return [f"results/prune/{m}_s{s}/waves.parquet" for m, s in model_seqs()]
    return []
