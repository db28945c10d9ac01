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


def _most_specific(err):
    """For a oneOf/anyOf failure, the error of the branch that matched the value's type
    (e.g. 'glb_mib[0]: 0 is not > 0' rather than '[0] is not valid under any schema')."""
    while err.context:
        candidates = [e for e in err.context if e.validator not in ("type", "required", "const")]
        if not candidates:
            break
        err = max(candidates, key=lambda e: len(e.absolute_path))
    return err


def validate_config(cfg):
    """Schema check (filling defaults), then the semantic checks the schema cannot express.
    Raises WorkflowError naming the offending field."""
    try:
        validate(cfg, schema=os.path.join(workflow.basedir, "configs", "schema.yaml"))
    except WorkflowError as e:
        verr = e.__context__  # the jsonschema ValidationError snakemake wrapped
        if not hasattr(verr, "absolute_path"):
            raise
        verr = _most_specific(verr)
        raise WorkflowError(
            f"invalid config: field {_field_path(verr.absolute_path)}: {verr.message}"
        ) from None
    for msg in semantic_errors(cfg):
        raise WorkflowError(f"invalid config: {msg}")


def zoo_models():
    """name -> ModelSpec of phaze's model zoo (the names `phaze graph --model` accepts)."""
    from phaze.model.zoo import ZOO  # noqa: PLC0415

    return ZOO


def semantic_errors(cfg):
    """Errors a JSON schema cannot express, each naming its field."""
    errors = []
    zoo = zoo_models()
    seen = set()
    for i, m in enumerate(cfg["models"]):
        field = f"models[{i}].name"
        if m["name"] in seen:
            errors.append(
                f"field {field}: model {m['name']!r} listed twice; merge its seq/tp lists"
            )
        seen.add(m["name"])
        if "hf_config" in m:
            if not os.path.exists(m["hf_config"]):
                errors.append(f"field models[{i}].hf_config: no such file {m['hf_config']!r}")
            continue
        spec = zoo.get(m["name"])
        if spec is None:
            errors.append(
                f"field {field}: unknown model {m['name']!r}; known: {', '.join(sorted(zoo))}"
                " (or give hf_config: path/to/config.json)"
            )
            continue
        for j, t in enumerate(m["tp"]):
            if spec.heads % t or spec.n_kv_heads % t:
                errors.append(
                    f"field models[{i}].tp[{j}]: TP width {t} does not divide the"
                    f" {spec.heads} attention heads of {m['name']}"
                )
    if workflow.is_main_process:  # once, not again in every job
        errors += grid_errors(cfg["arch"])
    return errors


def grid_errors(arch_spec):
    """Bad axis values, or an empty grid after the area filter (phaze's own grid code)."""
    from phaze.errors import UserError  # noqa: PLC0415
    from phaze.hw.grid import enumerate_grid  # noqa: PLC0415

    try:
        n = len(enumerate_grid(arch_spec))
    except UserError as e:
        return [f"field {e}" if e.field else f"field arch: {e}"]
    if n == 0:
        return ["field arch.area: no arch is left after the area filter; widen it"]
    return []


validate_config(config)

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
        f"results/graphs/{model}/s{seq}_b{b}_t{t}.json" for b in sizes for t in MODELS[model]["tp"]
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
