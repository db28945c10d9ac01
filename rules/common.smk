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


def _field_path(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def validate_config(cfg):
    """Schema check (filling defaults), then the semantic checks the schema cannot express.
    Raises WorkflowError naming the offending field."""
    try:
        validate(cfg, schema=os.path.join(workflow.basedir, "configs", "schema.yaml"))
    except WorkflowError as e:
        verr = e.__context__  # the jsonschema ValidationError snakemake wrapped
        if not hasattr(verr, "absolute_path"):
            raise
        raise WorkflowError(
            f"invalid config: field {_field_path(verr.absolute_path)}: {verr.message}"
        ) from None
    for msg in semantic_errors(cfg):
        raise WorkflowError(f"invalid config: {msg}")


# Canonical zoo names (foundation issue); used only if phaze.model's own listing is absent.
_ZOO_FALLBACK = (
    "bert-large gpt2-xl opt-350m llama2-7b llama2-70b llama3-8b megatron-bert "
    "megatron-gpt2-54 megatron-gpt2-72 gpt3-175b gpt-1.7b gpt-3.6b gpt-7.5b gpt-18.4b "
    "gpt-39.1b gpt-76.1b gpt-145.6b gpt-310.1b gpt-529.6b gpt-1t gpt-22b gpt-530b"
).split()


def zoo_names():
    """Model names `phaze graph --model` accepts, from phaze's zoo when it is installed."""
    try:
        from phaze.model import zoo  # noqa: PLC0415
    except ImportError:
        return set(_ZOO_FALLBACK)
    for attr in ("names", "list_models", "model_names"):
        fn = getattr(zoo, attr, None)
        if callable(fn):
            return set(fn())
    for attr in ("ZOO", "MODELS"):
        table = getattr(zoo, attr, None)
        if isinstance(table, dict):
            return set(table)
    return set(_ZOO_FALLBACK)


def semantic_errors(cfg):
    """Errors a JSON schema cannot express, each naming its field."""
    errors = []
    names = zoo_names()
    seen = set()
    for i, m in enumerate(cfg["models"]):
        field = f"models[{i}].name"
        if m["name"] in seen:
            errors.append(f"field {field}: model {m['name']!r} listed twice; merge its seq/tp lists")
        seen.add(m["name"])
        if "hf_config" in m:
            if not os.path.isfile(m["hf_config"]):
                errors.append(f"field models[{i}].hf_config: no such file {m['hf_config']!r}")
        elif m["name"] not in names:
            errors.append(
                f"field {field}: unknown model {m['name']!r}; known: {', '.join(sorted(names))}"
                " (or give hf_config: path/to/config.json)"
            )
    errors += grid_errors(cfg["arch"])
    return errors


def grid_errors(arch_spec):
    """An empty grid after the area filter, found by phaze's own grid code when present."""
    try:
        from phaze.hw import grid as hw_grid  # noqa: PLC0415
    except ImportError:
        return []
    count = getattr(hw_grid, "count_grid", None)
    if not callable(count):
        return []
    try:
        n = count(arch_spec)
    except Exception as e:  # a UserError names its field
        return [f"field arch: {e}"]
    if n == 0:
        return ["field arch: the grid is empty after the area filter (arch.area); widen it"]
    return []


validate_config(config)

# ---- environment of every job -------------------------------------------------------------
# `phaze` and `mpiexec` come from the environment snakemake itself runs in, even when that
# venv is not activated (e.g. `.venv/bin/snakemake --cores 2`).
VENV_BIN = os.path.dirname(sys.executable)
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(VENV_BIN)}:\"$PATH\"; ")


def local_mpi_launcher():
    """mpiexec when one is installed (the `mpi` extra), else '' (phaze place runs serially)."""
    path = VENV_BIN + os.pathsep + os.environ.get("PATH", "")
    return "mpiexec" if shutil.which("mpiexec", path=path) else ""


# ---- wildcard values ----------------------------------------------------------------------
MODELS = {m["name"]: m for m in config["models"]}
MBS = list(config["microbatch_sizes"])
N_CHUNKS = int(config["scheduling"]["n_chunks"])
CHUNKS = list(range(N_CHUNKS))
GRID = "results/arch/grid.parquet"

wildcard_constraints:
    model="|".join(re.escape(n) for n in MODELS),
    seq=r"\d+",
    mbs=r"\d+",
    tp=r"\d+",
    chunk=r"\d+",


def model_seqs():
    """(model, seq) pairs of the sweep."""
    return [(name, s) for name, m in MODELS.items() for s in m["seq"]]


def graph_files(model, seq, mbs=None):
    """Graphs of one (model, seq) at one microbatch size (or all of them), every TP width."""
    sizes = MBS if mbs is None else [mbs]
    return [
        f"results/graphs/{model}/s{seq}_b{b}_t{t}.json"
        for b in sizes
        for t in MODELS[model]["tp"]
    ]


def sched_shards(model, seq, mbs):
    return [f"results/sched/{model}/s{seq}_b{mbs}/{c}.parquet" for c in CHUNKS]


def latency_tables(model, seq):
    return [f"results/latency/{model}_s{seq}_b{b}.parquet" for b in MBS]


def place_tables():
    return [f"results/place/{m}_s{s}.parquet" for m, s in model_seqs()]


REPORT_FILES = ["results/report/summary.csv", "results/report/pareto.png", "results/report/report.html"]


def report_available():
    """The report stage lands after the workflow; until then the sweep ends at placement."""
    import importlib.util  # noqa: PLC0415

    try:
        return importlib.util.find_spec("phaze.report.commands") is not None
    except ModuleNotFoundError:
        return False


def all_targets():
    return place_tables() + (REPORT_FILES if report_available() else [])


# ---- params helpers (every value a rule depends on goes through params) --------------------
def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


NETWORK_JSON = as_json(config["network"])


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
