"""Typed settings of a sweep, one type per concept, defaults defined here and nowhere else.

A sweep config (configs/default.yaml, checked against phaze/data/schema.yaml) and the CLI
flags of `phaze graph|schedule|schedule-batch|place|search|evaluate` both build these
objects, so every route to a result uses the same values:

  GraphSettings      options of the operator-graph builder (`phaze graph`)
  SchedSettings      per-layer scheduling (solver, formulation, limits, cache)
  PlacementSettings  the placement DP's axes and the training job it plans
  Network            phaze.hw.arch.Network, parsed by `parse_network` (preset name,
                     inline JSON object or a JSON file; one set of key names)

Recompute modes (none, selective, full) are checked by `check_recompute` only.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from phaze.errors import UserError

RECOMPUTE_MODES = ("none", "selective", "full")
OPTIMIZERS = ("sgd", "adam")
# Megatron-Core --cp-comm-type values (phaze.place.plan.CP_COMM_TYPES, the costs; listed
# here so that the CLI's choices need no stage import)
CP_COMM_TYPES = ("p2p", "allgather", "a2a", "a2a+p2p")
# the spelling Transformer Engine accepts for allgather, and Megatron-Core's TransformerConfig
# documents ("p2p" or "all_gather" or "a2a": TE attn_forward_func_with_cp raises on
# "allgather"; Megatron-LM's --cp-comm-type help says "allgather"): the same costs
CP_COMM_TYPE_ALIASES = {"all_gather": "allgather"}
MAX_HBM_GIB = 2.0**20          # 1 PiB per device: beyond any memory, and far from overflow
# The scheduling backend `auto` resolves to (measured on the zoo's layers: docs/sched.md).
DEFAULT_SOLVER = "cpsat"
# What runs when Gurobi was asked for and cannot run (not installed, no licence, a
# size-limited licence too small for the model): the open MILP solver the users asked for.
OPEN_FALLBACK_SOLVER = "cbc"
# choices the CLI offers before importing any stage (phaze --help stays fast)
BACKENDS = ("cpsat", "highs", "cbc", "gurobi")
FORMULATIONS = ("compact", "reference")
ATTENTION_MODES = ("eager", "flash")
SCHEMA_PATH = Path(__file__).parent / "data" / "schema.yaml"


def check_recompute(modes, field: str = "recompute") -> tuple[str, ...]:
    """The recompute modes as a tuple, each one of RECOMPUTE_MODES (UserError otherwise)."""
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    out = tuple(dict.fromkeys(modes))
    bad = [m for m in out if m not in RECOMPUTE_MODES]
    if bad or not out:
        raise UserError(f"unknown recompute mode {bad[0] if bad else '(none given)'!r}",
                        field=field, fix=f"use {', '.join(RECOMPUTE_MODES)}")
    return out


def readable_number(v) -> str:
    """A bound as a user reads it: 1048576, not 1.04858e+06; 0.5; 1e-09."""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}" if (1e-4 <= abs(v) < 1e15) else repr(float(v))


def parse_list(text, conv, field: str, *, minimum: float | None = None,
               maximum: float | None = None) -> tuple:
    """Comma-separated values ("1,2,4") or an iterable, converted with `conv`, each finite
    and >= minimum; UserError naming `field` otherwise."""
    items = [x for x in str(text).split(",") if x.strip()] if isinstance(text, str) else text
    try:
        vals = tuple(conv(x) for x in items)
    except (TypeError, ValueError):
        raise UserError(f"cannot parse {text!r}", field=field,
                        fix="give comma-separated values, e.g. 1,2,4") from None
    lo = "> 0" if minimum is not None and 0 < minimum < 1e-6 else \
        (f">= {readable_number(minimum)}" if minimum is not None else None)
    rng = " and ".join(x for x in (lo, maximum is not None and
                                   f"<= {readable_number(maximum)}") if x)
    fix = f"give values {rng}" if rng else "give finite values"
    for v in vals:
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"must be finite, got {v}", field=field, fix=fix)
        if minimum is not None and v < minimum:
            raise UserError(f"must be {lo}, got {v}", field=field, fix=fix)
        if maximum is not None and v > maximum:
            raise UserError(f"must be <= {readable_number(maximum)}, got {v}", field=field,
                            fix=fix)
    if not vals:
        raise UserError("needs at least one value", field=field,
                        fix="give one or more comma-separated values, e.g. 1,2,4")
    return tuple(dict.fromkeys(vals))


def _bool_axis(v, field: str) -> tuple[bool, ...]:
    vals = (v,) if isinstance(v, bool) else tuple(v)
    if not vals or not all(isinstance(x, bool) for x in vals):
        raise UserError(f"expected true/false or a list of them, got {v!r}", field=field,
                        fix="give true, false or a list such as [false, true]")
    return tuple(dict.fromkeys(vals))


@dataclass(frozen=True)
class GraphSettings:
    """Options of the operator-graph builder.

    fused               fuse each GEMM with its element-wise epilogue (one TC+VC op)
    sequence_parallel   Megatron sequence parallelism values to sweep (an axis: the DP
                        keeps the better of with/without for every TP width t > 1)
    attention           eager (s x s probabilities materialised) | flash (one fused kernel;
                        docs/model.md says which frameworks default to which)
    vocab_pad_multiple  pad the vocabulary to a multiple of this x t (Megatron-LM's
                        --make-vocab-size-divisible-by, 128 there; 1 = as the config says)
    """

    def __post_init__(self):
        if self.attention not in ("eager", "flash"):
            raise UserError(f"unknown attention {self.attention!r}", field="graph.attention",
                            fix="use eager or flash")
        if isinstance(self.vocab_pad_multiple, bool) or not isinstance(self.vocab_pad_multiple, int) \
                or self.vocab_pad_multiple < 1:
            raise UserError(f"must be an integer >= 1, got {self.vocab_pad_multiple!r}",
                            field="graph.vocab_pad_multiple",
                            fix="give an integer >= 1 (1 leaves the vocabulary unpadded)")

    def build_kwargs(self) -> dict:
        """build_graph's keyword arguments for these options (sequence parallelism apart)."""
        return {"fused": self.fused, "attention": self.attention,
                "vocab_pad_multiple": self.vocab_pad_multiple}

    fused: bool = True
    sequence_parallel: tuple[bool, ...] = (False,)
    attention: str = "eager"
    vocab_pad_multiple: int = 1

    @classmethod
    def from_config(cls, block: dict | None) -> "GraphSettings":
        block = dict(block or {})
        kw = {k: block[k] for k in ("attention", "vocab_pad_multiple") if k in block}
        if "fused" in block:
            kw["fused"] = bool(block["fused"])
        if "sequence_parallel" in block:
            kw["sequence_parallel"] = _bool_axis(block["sequence_parallel"],
                                                 "graph.sequence_parallel")
        return cls(**kw)

    def sp_values(self, tp: int) -> tuple[bool, ...]:
        """Sequence-parallel variants that differ at width tp (none at t = 1)."""
        return (False,) if tp == 1 else self.sequence_parallel


@dataclass(frozen=True)
class SchedSettings:
    """Per-layer scheduling: see docs/sched.md.

    solver         auto (the measured default backend), cpsat, highs, cbc, gurobi, heuristic
    formulation    compact | reference
    time_limit_s   seconds per ILP; a solve that hits it keeps its incumbent and gap
    bnb_share      fraction of the limit for the branch and bound before the backend
    threads        solver threads (CP-SAT's portfolio)
    rel_gap        relative gap at which a solve counts as optimal
    cache_dir      content-addressed ILP cache directory ("" = none)
    """

    solver: str = "auto"
    formulation: str = "compact"
    time_limit_s: float = 10.0
    bnb_share: float = 0.5
    threads: int = 8
    rel_gap: float = 1e-6
    cache_dir: str = ""

    def __post_init__(self):
        if not (self.time_limit_s > 0 and math.isfinite(self.time_limit_s)):
            raise UserError(f"must be > 0 and finite, got {self.time_limit_s}",
                            field="time_limit_s",
                            fix="give the seconds one layer ILP may run, e.g. 10 (a solve "
                                "that hits it keeps its incumbent and gap)")
        if not 0 <= self.bnb_share < 1:
            raise UserError(f"must be in [0, 1), got {self.bnb_share}", field="bnb_share",
                            fix="give a fraction of the time limit, e.g. 0.5")
        if self.threads < 1:
            raise UserError(f"must be >= 1, got {self.threads}", field="threads",
                            fix="give the solver threads, an integer >= 1")

    @classmethod
    def from_config(cls, block: dict | None) -> "SchedSettings":
        block = dict(block or {})
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in block.items() if k in names})

    def backend(self) -> str:
        """The solver actually run (auto resolved)."""
        return DEFAULT_SOLVER if self.solver == "auto" else self.solver

    def solve_settings(self) -> dict:
        """What phaze.sched.solve takes (part of every ILP cache key)."""
        return {"time_limit_s": float(self.time_limit_s), "rel_gap": float(self.rel_gap),
                "threads": int(self.threads), "bnb_share": float(self.bnb_share)}

    def record(self) -> dict:
        """The scheduling settings as a result records them: solver run, formulation and
        solve settings."""
        return {"solver": self.backend(), "formulation": self.formulation,
                **self.solve_settings()}


@dataclass(frozen=True)
class PlacementSettings:
    """The placement DP's axes and the training job it plans.

    devices        accelerators in the cluster
    global_batch   samples per global batch
    hbm_gib        HBM capacities per device to sweep (GiB)
    recompute      activation recomputation modes to sweep (none, selective, full)
    optimizer      sgd (no state) | adam (mixed precision: fp32 master + 2 moments)
    zero1          shard the optimizer state over the data-parallel replicas (ZeRO-1;
                   on by default with adam; configs/paper.yaml sets sgd, off)
    interleave     interleaving depths v of the 1F1B schedule to try (1 = plain 1F1B)
    ep             expert-parallel sizes to search (MoE layers; 1 = none; dense models
                   ignore it)
    zero_stage     ZeRO stages to search (0..3: optimizer state, + gradients, + weights
                   sharded over the data-parallel replicas); empty = the one zero1 says
                   (1 if zero1 else 0)
    cp_comm_type   how a context-parallel attention core reaches the other chunks' keys
                   (Megatron-Core --cp-comm-type: p2p ring, allgather, a2a / Ulysses,
                   a2a+p2p: all-to-alls in groups of cp_a2a_size, a p2p ring across them)
    cp_a2a_size    a2a+p2p's all-to-all level (Megatron-Core
                   --hierarchical-context-parallel-sizes [cp_a2a_size, cp / cp_a2a_size]);
                   it must divide every cp > 1; 0 with the other types
    """

    devices: int = 1024
    global_batch: int = 4096
    hbm_gib: tuple[float, ...] = (32.0, 64.0, 80.0)
    recompute: tuple[str, ...] = ("none", "selective", "full")
    optimizer: str = "adam"
    zero1: bool = True               # mixed-precision Adam + ZeRO-1: the LLM default
    interleave: tuple[int, ...] = (1,)
    ep: tuple[int, ...] = (1,)
    zero_stage: tuple[int, ...] = ()
    cp_comm_type: str = "p2p"
    cp_a2a_size: int = 0

    def __post_init__(self):
        for name in ("devices", "global_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"must be an integer >= 1, got {v!r}", field=name,
                                fix="give an integer >= 1")
        object.__setattr__(self, "hbm_gib", parse_list(self.hbm_gib, float, "hbm_gib",
                                                       minimum=1e-9, maximum=MAX_HBM_GIB))
        object.__setattr__(self, "recompute", check_recompute(self.recompute))
        object.__setattr__(self, "interleave", parse_list(self.interleave, int, "interleave",
                                                          minimum=1))
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}", field="optimizer",
                            fix=f"use {' or '.join(OPTIMIZERS)}")
        object.__setattr__(self, "ep", parse_list(self.ep, int, "ep", minimum=1))
        object.__setattr__(self, "cp_comm_type",
                           CP_COMM_TYPE_ALIASES.get(self.cp_comm_type, self.cp_comm_type))
        if self.cp_comm_type not in CP_COMM_TYPES:
            raise UserError(f"unknown context-parallel communication {self.cp_comm_type!r}",
                            field="cp_comm_type", fix=f"use one of {', '.join(CP_COMM_TYPES)}")
        a = self.cp_a2a_size
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise UserError(f"must be an integer >= 0, got {a!r}", field="cp_a2a_size",
                            fix="give the all-to-all level's size of a2a+p2p (e.g. 8: a node)")
        if self.cp_comm_type == "a2a+p2p" and a < 1:
            raise UserError("cp_comm_type a2a+p2p needs the size of its all-to-all level",
                            field="cp_a2a_size", fix="give cp_a2a_size (--cp-a2a-size), a "
                                                     "divisor of every cp > 1, e.g. the devices "
                                                     "of a node: all-to-alls inside, the ring across")
        if self.cp_comm_type != "a2a+p2p" and a:
            raise UserError(f"is a2a+p2p's all-to-all level, and cp_comm_type is "
                            f"{self.cp_comm_type}", field="cp_a2a_size",
                            fix="drop cp_a2a_size (--cp-a2a-size), or use cp_comm_type a2a+p2p")
        if self.zero_stage not in ((), [], None, ""):
            object.__setattr__(self, "zero_stage", parse_list(self.zero_stage, int, "zero_stage",
                                                              minimum=0, maximum=3))
        else:
            object.__setattr__(self, "zero_stage", ())

    def zero_stages(self) -> tuple[int, ...]:
        """The ZeRO stages the DP searches: zero_stage, else (1,) with zero1, (0,) without."""
        return self.zero_stage or ((1,) if self.zero1 else (0,))

    @classmethod
    def from_config(cls, block: dict | None) -> "PlacementSettings":
        block = dict(block or {})
        kw = {k: block[k] for k in ("devices", "global_batch", "hbm_gib", "recompute",
                                    "optimizer", "zero1", "interleave", "ep", "zero_stage",
                                    "cp_comm_type", "cp_a2a_size")
              if k in block}
        return cls(**kw)

    def hbm_bytes(self) -> tuple[float, ...]:
        return tuple(h * 1024**3 for h in self.hbm_gib)


@dataclass(frozen=True)
class JobSettings:
    """How the workflow lays out its jobs (never changes a result).

    n_chunks       scheduling jobs per (model, seq, microbatch): arch chunks
    cpus_per_job   CPUs a scheduling job asks for (CP-SAT's portfolio runs on them)
    ranks          MPI ranks of a placement job (1: serial)
    """

    n_chunks: int = 2
    cpus_per_job: int = 2
    ranks: int = 2

    @classmethod
    def from_config(cls, cfg: dict) -> "JobSettings":
        sc, pl = cfg.get("scheduling") or {}, cfg.get("placement") or {}
        kw = {k: sc[k] for k in ("n_chunks", "cpus_per_job") if k in sc}
        if "ranks" in pl:
            kw["ranks"] = pl["ranks"]
        return cls(**kw)


SEARCH_METHODS = ("pruned", "exhaustive")


@dataclass(frozen=True)
class SearchSettings:
    """How the workflow searches the archs (never changes the best design).

    method        pruned: bound pass, then ILPs + placement in two waves for the archs
                  whose bound can beat the incumbent (phaze.search.waves); exhaustive: all
    wave1_archs   archs with the best bounds in wave 1 (plus the baselines)
    """

    method: str = "pruned"
    wave1_archs: int = 8

    def __post_init__(self):
        if self.method not in SEARCH_METHODS:
            raise UserError(f"must be one of {SEARCH_METHODS}, got {self.method!r}",
                            field="search.method", fix=f"use one of {', '.join(SEARCH_METHODS)}")
        if isinstance(self.wave1_archs, bool) or not isinstance(self.wave1_archs, int) \
                or self.wave1_archs < 1:
            raise UserError(f"must be an integer >= 1, got {self.wave1_archs!r}",
                            field="search.wave1_archs", fix="give an integer >= 1")

    @classmethod
    def from_config(cls, block: dict | None) -> "SearchSettings":
        return cls(**(block or {}))


def parse_network(value, default=None):
    """A Network from a preset name, an inline JSON object, a JSON file, a dict or a
    Network; `default` (or Network()) when value is None or empty."""
    from phaze.hw.arch import Network
    from phaze.hw.presets import NETWORKS

    if value is None or value == "":
        return default if default is not None else Network()
    if isinstance(value, Network):
        return value
    if isinstance(value, dict):
        return Network.from_dict(value)
    text = str(value).strip()
    if text in NETWORKS:
        return NETWORKS[text]
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"{text!r} is neither a network preset, a JSON object nor a file",
                            field="network", fix=f"use one of {sorted(NETWORKS)}, a JSON "
                            "object or a JSON file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path} ({e})", field="network",
                            fix="check the path and that the file is readable text") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON ({e})", field="network",
                        fix="correct the JSON, or give the path of a JSON file") from None
    if not isinstance(obj, dict):
        raise UserError("must be a JSON object", field="network",
                        fix="give a JSON object of network fields, or the path of a JSON file holding one")
    return Network.from_dict(obj)


@dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep config sets besides its models and arch grid."""

    graph: GraphSettings = GraphSettings()
    sched: SchedSettings = SchedSettings()
    placement: PlacementSettings = PlacementSettings()
    network: object = None                      # phaze.hw.arch.Network (None: Network())
    microbatch_sizes: tuple[int, ...] = (1, 2)
    jobs: JobSettings = JobSettings()
    search: SearchSettings = SearchSettings()

    @classmethod
    def from_config(cls, cfg: dict) -> "SweepSettings":
        return cls(graph=GraphSettings.from_config(cfg.get("graph")),
                   sched=SchedSettings.from_config(cfg.get("scheduling")),
                   placement=PlacementSettings.from_config(cfg.get("placement")),
                   network=parse_network(cfg.get("network") or None),
                   microbatch_sizes=parse_list(cfg.get("microbatch_sizes", (1, 2)), int,
                                               "microbatch_sizes", minimum=1),
                   jobs=JobSettings.from_config(cfg),
                   search=SearchSettings.from_config(cfg.get("search")))

    def net(self):
        return parse_network(self.network)

    def record(self) -> dict:
        """What a result records of the settings it was obtained with (phaze search --json,
        a placement table's metadata): phaze's version, the placement, graph and scheduling
        settings, the microbatch sizes and the network."""
        from phaze import __version__

        return {"phaze_version": __version__, "placement": asdict(self.placement),
                "graph": {**self.graph.build_kwargs(),
                          "sequence_parallel": list(self.graph.sequence_parallel)},
                "sched": self.sched.record(), "microbatch_sizes": list(self.microbatch_sizes),
                "network": self.net().to_dict()}


def merge_config(base: dict, over: dict) -> dict:
    """`over` merged into `base` as Snakemake merges a --configfile over the Snakefile's
    configfile (snakemake.utils.update_config): mappings key by key, recursively; any other
    value (a list included) replaced whole."""
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def load_config(path: str, over: str | None = None) -> dict:
    """A sweep config file, checked against the schema (one line naming the field); with
    `over` (a base config, e.g. configs/default.yaml), the file merged over it first, as
    `snakemake --configfile FILE` runs it (merge_config)."""
    if over is not None:
        base = _read_yaml(over, "--over")
        if base is not None and not isinstance(base, dict):
            raise UserError(f"{over} holds a YAML {type(base).__name__}, not a mapping of config "
                            "fields", field="--over", fix="give a sweep config such as "
                            "configs/default.yaml")
        return _checked(merge_config(base or {}, _read_config_file(path)))
    return _checked(_read_config_file(path))


def _read_config_file(path: str) -> dict:
    """The --config file's YAML; an empty file (or one of comments only) is refused in one
    line saying so and what to put in it (the schema's '(top level): None is not of type
    'object'' said neither)."""
    cfg = _read_yaml(path, "--config")
    if cfg is None:
        raise UserError(f"{path} is empty (no YAML mapping in it)", field="--config",
                        fix="copy configs/default.yaml and edit it, or write only the fields "
                            "to change (e.g. 'placement: {hbm_gib: [32]}') and check it with "
                            "`phaze check-config --config FILE --over configs/default.yaml`")
    if not isinstance(cfg, dict):
        raise UserError(f"{path} holds a YAML {type(cfg).__name__}, not a mapping of config "
                        "fields", field="--config",
                        fix="write the fields as a mapping, e.g. 'placement: {hbm_gib: [32]}'")
    return cfg


def _checked(cfg) -> dict:
    check_config_schema(cfg)
    return cfg


def _read_yaml(path: str, field: str):
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text file (a YAML config is)", field=field,
                        fix="give a YAML file (copy configs/default.yaml)") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e})", field=field,
                        fix="give an existing YAML file (copy configs/default.yaml)") from None
    except yaml.YAMLError as e:
        raise yaml_error(path, e, field) from None


def yaml_error(path, e, field: str) -> UserError:
    """The UserError of a YAML parse error: where (line and column of the problem, and of
    the bracket or quote left open) and a fix that fits the problem."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    pm, cm = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    at = f" at line {pm.line + 1}, column {pm.column + 1}" if pm else ""
    opened = f"line {cm.line + 1}, column {cm.column + 1}" if cm else ""
    ctx = getattr(e, "context", None) or ""
    msg = f"{path} is not valid YAML{at}: {problem}" + (f" ({ctx} from {opened})"
                                                        if ctx and opened else "")
    closer = {"flow sequence": "]", "flow mapping": "}"}
    kind = next((k for k in closer if k in ctx), None)
    if kind and opened:
        fix = (f"close the '{'[' if kind == 'flow sequence' else '{'}' opened at {opened} "
               f"with '{closer[kind]}', separating its items with commas")
    elif "quoted scalar" in ctx and opened:
        fix = f"close the quote opened at {opened}"
    elif "\t" in problem or "'\\t'" in problem:
        fix = f"replace the tab{at} with spaces (YAML indents with spaces only)"
    elif "mapping values are not allowed" in problem:
        fix = ("check the indentation" + at.replace(" at", " of") + ": a key indented more "
               "than the one above, or a value holding ': ' unquoted")
    else:
        fix = f"correct the YAML{at} (configs/default.yaml is an example)"
    return UserError(msg, field=field, fix=fix)


def check_config_schema(cfg) -> None:
    """Validate a config dict against phaze/data/schema.yaml (UserError naming the field)."""
    import yaml

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = strict_validator()(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: len(list(e.absolute_path)))
    if errors:
        raise schema_error(errors[0])


def schema_error(err) -> UserError:
    """The UserError of one jsonschema ValidationError: the field's full path, the message,
    and for a misspelled field the closest field the schema knows ("did you mean
    placement.hbm_gib?", difflib's close matches over the properties at that level)."""
    from phaze.errors import unknown_field_fix

    err = most_specific(err)
    where = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = sorted(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in known]
        if extra:
            return UserError("unknown config field (not in phaze/data/schema.yaml)",
                             field=field_path([*where, str(extra[0])]),
                             fix=unknown_field_fix(extra[0], known,
                                                   field_path(where) if where else ""))
    return UserError(err.message, field=field_path(where) or "(top level)",
                     fix=schema_fix(err, where))


# what a value matching a schema pattern looks like (the pattern itself helps no one)
PATTERN_EXAMPLES = {
    "fixed_plan": "write it as PxDxT (pipeline x data x tensor degrees), e.g. 8x128x1",
    "name": "use letters, digits, '.' and '-' only, starting with a letter or digit, "
            "e.g. llama2-7b",
}


def schema_fix(err, where: list) -> str:
    """The fix of one jsonschema ValidationError, by the rule it broke: the allowed
    values, the bound, the missing key (and what it takes), the shape wanted."""
    v, val = err.validator, err.validator_value
    here = field_path(where)
    if v == "enum":
        return "use one of: " + ", ".join(map(str, val))
    if v == "type":
        if val == "array":
            return f"write it as a list, e.g. [{err.instance}]"
        kind = {"integer": "an integer (1, not 1.0)", "number": "a finite number",
                "string": "a string", "boolean": "true or false",
                "object": "a mapping (key: value lines)"}.get(val, str(val))
        return f"give {kind}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=",
              "exclusiveMaximum": "<"}
    if v in bounds:
        return f"give a value {bounds[v]} {readable_number(val)}"
    if v == "minItems":
        return f"give at least {val} value{'s' if val != 1 else ''}"
    if v == "maxItems":
        return f"give at most {val} values"
    if v == "uniqueItems":
        return "list each value once"
    if v == "minLength":
        return "give a non-empty value"
    if v == "pattern":
        key = str(where[-1]) if where else ""
        return PATTERN_EXAMPLES.get(key, f"write it to match {val}")
    if v == "required":
        missing = next((k for k in val if isinstance(err.instance, dict)
                        and k not in err.instance), val[0])
        if where and where[0] == "models":
            if missing == "name":
                return ("give name: with a zoo model (`phaze models` lists them), or a "
                        "label for the model together with hf_config: path/to/config.json")
            return f"give {missing}: as a list, e.g. {missing}: [1]" if missing == "tp" \
                else f"give {missing}: as a list, e.g. {missing}: [1024]"
        return (f"give {here + '.' if where else ''}{missing}:; a partial copy that "
                "Snakemake merges over configs/default.yaml is checked with `phaze "
                "check-config --config COPY --over configs/default.yaml`")
    return (f"see {here}'s description in phaze/data/schema.yaml (the field table of "
            "docs/workflow.md)")


def model_source(cfg: dict, name: str) -> str:
    """What builds the model a config calls `name`: its hf_config path, else `name` (a
    zoo model). The graph then carries `name` (`phaze graph --name`)."""
    for m in (cfg or {}).get("models", []):
        if m.get("name") == name and m.get("hf_config"):
            return m["hf_config"]
    return name


def strict_validator():
    """Draft 2020-12 with JSON's types taken strictly: an integer is an int (1.0 is not),
    a number is finite (YAML's .nan and .inf are not)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _c, x: isinstance(x, int) and not isinstance(x, bool),
        "number": lambda _c, x: isinstance(x, (int, float)) and not isinstance(x, bool)
        and math.isfinite(x)})
    return jsonschema.validators.extend(base, type_checker=checker)


def field_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def most_specific(err):
    """For a oneOf/anyOf failure, the error of the branch that matched the value's type
    (e.g. 'glb_mib[0]: 0 is not > 0' rather than '[0] is not valid under any schema')."""
    while err.context:
        candidates = [e for e in err.context if e.validator not in ("type", "required", "const")]
        if not candidates:
            break
        err = max(candidates, key=lambda e: len(e.absolute_path))
    return err


def settings_dict(obj) -> dict:
    """A settings object as plain JSON-able values (provenance, tests)."""
    return json.loads(json.dumps(asdict(obj), default=str))


# ---- CLI flags ---------------------------------------------------------------------------
# Every flag below defaults to None ("not given"): the value then comes from --config when
# one is given, else from the dataclass default above. The help text shows that default.
def add_config_arg(p) -> None:
    p.add_argument("--config", help="sweep config (configs/default.yaml): its graph, "
                   "scheduling, placement and network settings (flags given override it)")


def add_placement_args(p, axes: bool = True) -> None:
    """Flags of PlacementSettings (axes=False: one HBM size and recompute mode)."""
    d = PlacementSettings()
    p.add_argument("--devices", type=int, help=f"accelerators (default {d.devices})")
    p.add_argument("--batch", type=int, help=f"global batch in samples (default {d.global_batch})")
    if axes:
        p.add_argument("--hbm-gib", help="comma-separated HBM sizes in GiB "
                       f"(default {','.join(f'{h:g}' for h in d.hbm_gib)})")
        p.add_argument("--recompute", help="comma-separated recompute modes of "
                       f"{', '.join(RECOMPUTE_MODES)} (default {','.join(d.recompute)})")
        p.add_argument("--interleave", help="comma-separated interleaving depths v to try "
                       f"(default {','.join(map(str, d.interleave))})")
        p.add_argument("--ep", help="comma-separated expert-parallel sizes to search "
                       f"(MoE models; default {','.join(map(str, d.ep))})")
        p.add_argument("--zero-stage", dest="zero_stage", help="comma-separated ZeRO stages "
                       "0..3 to search (default: 1 with --zero1, else 0)")
    p.add_argument("--cp-comm-type", choices=CP_COMM_TYPES + tuple(CP_COMM_TYPE_ALIASES),
                   help="Megatron-Core --cp-comm-type of context parallelism: p2p (ring, K/V "
                        "sends overlapped with the core), allgather or all_gather (K/V all-gathered, "
                        "exposed; Llama 3), a2a (Q/K/V/O all-to-alls, exposed; DeepSpeed-Ulysses) "
                        "or a2a+p2p (all-to-alls in groups of --cp-a2a-size, a p2p ring across "
                        f"them) (default {d.cp_comm_type})")
    p.add_argument("--cp-a2a-size", type=int, metavar="A",
                   help="the all-to-all level of --cp-comm-type a2a+p2p: Megatron-Core "
                        "--hierarchical-context-parallel-sizes A (cp / A); A divides cp")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"(default {d.optimizer})")
    p.add_argument("--zero1", action=argparse.BooleanOptionalAction,
                   help="shard the optimizer state over the data-parallel replicas (ZeRO-1; "
                        f"default {str(d.zero1).lower()})")


def add_token_drop_args(p, note: str = "") -> None:
    """Megatron-Core's MoE token-dropping flags (`phaze graph` and `phaze evaluate`);
    `note` ends the capacity factor's help (what the command does not do with it)."""
    p.add_argument("--moe-expert-capacity-factor", type=float, metavar="CF",
                   help="Megatron-Core --moe-expert-capacity-factor (MoE models): token "
                        "dropping, each expert takes at most ceil(tokens x top_k / experts x "
                        "CF) slots of the tokens one device's router sees, routing balanced "
                        f"(alltoall dispatcher; default: dropless){note}")
    p.add_argument("--moe-pad-expert-input-to-capacity", action="store_true",
                   help="Megatron-Core --moe-pad-expert-input-to-capacity: with "
                        "--moe-expert-capacity-factor, every expert computes exactly its "
                        "capacity (dropped or padded)")


# Megatron-Core --moe-router-load-balancing-type values phaze models (build_graph's
# moe_router_load_balancing_type), each with a coefficient > 0 (a zero coefficient computes
# nothing: "none"); sinkhorn (a routing algorithm of its own) is not modelled
MOE_LOAD_BALANCING = ("none", "aux_loss", "seq_aux_loss", "global_aux_loss")


def add_model_args(p) -> None:
    """--model, or an inline Megatron GPT's --hidden/--heads/--layers/--vocab (model_from_args)."""
    p.add_argument("--model", help="zoo name or config.json (or give --hidden/--heads/--layers)")
    p.add_argument("--hidden", type=int, help="inline GPT: hidden size")
    p.add_argument("--heads", type=int, help="inline GPT: attention heads")
    p.add_argument("--layers", type=int, help="inline GPT: transformer blocks")
    p.add_argument("--vocab", type=int, default=51200,
                   help="inline GPT: vocabulary (default 51,200 as in the Megatron papers)")


def model_from_args(args, cfg=None):
    """--model NAME|config.json (a name of --config's models resolves to its hf_config),
    or an inline Megatron GPT (--hidden --heads --layers [--seq] [--vocab]: FFN 4h,
    learned positions, tied embeddings)."""
    from phaze.model.zoo import resolve_model

    inline = [getattr(args, k, None) for k in ("hidden", "heads", "layers")]
    if getattr(args, "model", None):
        if any(v is not None for v in inline):
            raise UserError("give either --model or --hidden/--heads/--layers, not both",
                            field="--model", fix="drop --model or --hidden/--heads/--layers")
        src = model_source(cfg, args.model)
        spec = resolve_model(src)
        return spec.with_(name=args.model) if src != args.model else spec
    if any(v is None for v in inline):
        raise UserError("needs --model, or all of --hidden, --heads and --layers", field="--model",
                        fix="e.g. --model gpt3-175b or --hidden 12288 --heads 96 --layers 96 --seq 2048")
    from phaze.model.spec import ModelSpec

    h, a, l = inline
    seq = args.seq or 2048
    for name, v in (("--hidden", h), ("--heads", a), ("--layers", l), ("--seq", seq),
                    ("--vocab", args.vocab)):
        if v < 1:
            raise UserError("must be >= 1", field=name, fix=f"give {name} 1 or more")
    return ModelSpec(name=f"gpt-h{h}-a{a}-l{l}", hidden=h, layers=l, heads=a, ffn=4 * h,
                     vocab=args.vocab, seq=seq, max_positions=seq, source="inline").validate()


def add_router_args(p) -> None:
    """Megatron-Core's MoE router flags (`phaze graph` and `phaze evaluate`): what the
    routing op's kernels are (phaze.model.graph.build_graph's options of these names)."""
    p.add_argument("--moe-router-fusion", action="store_true",
                   help="Megatron-Core --moe-router-fusion: an MoE router's top-k and scoring "
                        "as one fused kernel per pass (default: the eager PyTorch kernels)")
    p.add_argument("--moe-router-load-balancing-type", default="none",
                   choices=MOE_LOAD_BALANCING,
                   help="Megatron-Core's load-balancing loss of an MoE router, with a "
                        "coefficient > 0: its kernels are timed (default none, as a zero "
                        "--moe-aux-loss-coeff)")
    p.add_argument("--moe-router-force-load-balancing", action="store_true",
                   help="Megatron-Core's benchmark switch: route on random logits (its "
                        "kernels are timed; routing is balanced either way)")


ROUTER_OPTIONS = ("moe_router_fusion", "moe_router_load_balancing_type",
                  "moe_router_force_load_balancing")


def router_options(src, spec) -> dict:
    """build_graph's router options (ROUTER_OPTIONS) that `src` sets beyond Megatron-Core's
    defaults: the add_router_args flags, or a validate Case's fields of the same names; on
    a dense model they are refused (UserError naming the flag)."""
    o = {k: getattr(src, k) for k in ROUTER_OPTIONS}
    o = {k: v for k, v in o.items() if v not in (False, "none")}
    if o and not spec.experts:
        flag = "--" + next(iter(o)).replace("_", "-")
        raise UserError(f"sets an MoE router, and {spec.name} has no routed experts",
                        field=flag, fix=f"drop {flag}")
    return o


def add_graph_args(p, axes: bool = True) -> None:
    """The graph flags of the sweep's commands (axes: the sequence-parallel axis too) and,
    axes False, of `phaze evaluate`, where a --framework profile brings its own kernel."""
    d = GraphSettings()
    p.add_argument("--fused", action=argparse.BooleanOptionalAction,
                   help=f"fuse GEMM epilogues (default {str(d.fused).lower()})")
    p.add_argument("--attention", choices=("eager", "flash"),
                   help=f"attention kernel (default {d.attention})" if axes else
                   "attention kernel (default: the --framework profile's, flash for "
                   "megatron-core-2024 and nemo-2024, eager for the others; without "
                   f"--framework the config's graph.attention, {d.attention})")
    p.add_argument("--vocab-pad-multiple", type=int,
                   help=f"pad the vocabulary to a multiple of this x t (default {d.vocab_pad_multiple})")
    if axes:
        p.add_argument("--sequence-parallel", dest="sequence_parallel",
                       help="sequence-parallel values to sweep: false, true or false,true "
                       "(default false)")


def add_sched_args(p) -> None:
    d = SchedSettings()
    p.add_argument("--solver", help=f"scheduling backend (default {d.solver})")
    p.add_argument("--time-limit", type=float, help=f"seconds per ILP (default {d.time_limit_s:g})")
    p.add_argument("--cache", help="ILP cache directory (default: the config's, else none)")


def add_network_arg(p) -> None:
    p.add_argument("--network", help="network: a preset name (tpuv4-ici, dgx-a100, "
                   "dgx-h100), a JSON object or a JSON file with the keys devices_per_node, "
                   "intra_bw_Bps, intra_latency_s, inter_bw_Bps, inter_latency_s "
                   "(default: the config's, else a DGX-A100-like node)")


AXES = ("hbm_gib", "recompute", "interleave", "ep", "zero_stage")


def sweep_settings(args) -> tuple["SweepSettings", dict]:
    """(SweepSettings, config dict or {}) from --config and the flags of the add_*_args
    helpers that `args` has; a flag given explicitly overrides the config."""
    from dataclasses import replace

    cfg = load_config(args.config) if getattr(args, "config", None) else {}
    s = SweepSettings.from_config(cfg)
    g = lambda name: getattr(args, name, None)  # noqa: E731
    pl = {}
    for flag, key in (("devices", "devices"), ("batch", "global_batch"), ("hbm_gib", "hbm_gib"),
                      ("recompute", "recompute"), ("optimizer", "optimizer"),
                      ("zero1", "zero1"), ("interleave", "interleave"), ("ep", "ep"),
                      ("zero_stage", "zero_stage"), ("cp_comm_type", "cp_comm_type"),
                      ("cp_a2a_size", "cp_a2a_size")):
        v = g(flag)
        # axes come as comma-separated text; a command's own single value (evaluate's
        # --interleave, --hbm-gib) is not an axis
        if v is not None and (isinstance(v, str) or key not in AXES):
            pl[key] = v
    if "cp_a2a_size" in pl and pl["cp_a2a_size"] < 1:
        raise UserError(f"must be >= 1, got {pl['cp_a2a_size']}", field="--cp-a2a-size",
                        fix="give a2a+p2p's all-to-all level, a divisor of --cp")
    if "hbm_gib" in pl:
        pl["hbm_gib"] = parse_list(pl["hbm_gib"], float, "--hbm-gib", minimum=1e-9,
                                   maximum=MAX_HBM_GIB)
    if "interleave" in pl:
        pl["interleave"] = parse_list(pl["interleave"], int, "--interleave", minimum=1)
    if "recompute" in pl:
        pl["recompute"] = check_recompute(pl["recompute"], "--recompute")
    if "ep" in pl:
        pl["ep"] = parse_list(pl["ep"], int, "--ep", minimum=1)
    if "zero_stage" in pl:
        pl["zero_stage"] = parse_list(pl["zero_stage"], int, "--zero-stage", minimum=0, maximum=3)
    placement = replace(s.placement, **pl) if pl else s.placement
    graph = s.graph
    if g("fused") is not None:
        graph = replace(graph, fused=bool(g("fused")))
    for flag in ("attention", "vocab_pad_multiple"):
        if g(flag) is not None:
            graph = replace(graph, **{flag: g(flag)})
    if isinstance(g("sequence_parallel"), str):
        graph = replace(graph, sequence_parallel=parse_list(
            g("sequence_parallel"), _parse_bool, "--sequence-parallel"))
    sched = s.sched
    for flag, key in (("solver", "solver"), ("time_limit", "time_limit_s"), ("cache", "cache_dir")):
        if g(flag) is not None:
            sched = replace(sched, **{key: g(flag)})
    network = parse_network(g("network"), s.net()) if g("network") is not None else s.net()
    return replace(s, graph=graph, sched=sched, placement=placement, network=network), cfg


def _parse_bool(x) -> bool:
    v = str(x).strip().lower()
    if v not in ("true", "false", "1", "0"):
        raise ValueError(v)
    return v in ("true", "1")
