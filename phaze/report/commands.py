"""`phaze report`: summary table (terminal), or summary.csv + plots + report.html."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path


from phaze.atomic import atomic_path, write_text_atomic
from phaze.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="summary of the best designs vs baselines; plots and report.html",
        description="Read placement tables (phaze place) and the arch grid; print the "
                    "summary table, or with -o write summary.csv, PNG plots and a "
                    "self-contained report.html.")
    p.add_argument("--results", metavar="DIR",
                   help="a workflow's results folder: reads the placement, latency and waves "
                        "tables of the (model, seq) pairs of DIR/config.yaml, DIR/arch/grid."
                        "parquet and DIR/config.yaml (flags given as well override these)")
    p.add_argument("--place", nargs="+", metavar="P",
                   help="placement tables results/place/{model}_s{seq}.parquet")
    p.add_argument("--grid", help="arch grid parquet (phaze arch grid)")
    p.add_argument("--latency", nargs="*", default=(), metavar="L",
                   help="merged latency tables, for the Spotlight-style pick when the "
                        "placement tables carry no single_chip_latency_s")
    p.add_argument("--config", help="the sweep's config (the workflow's results/config.yaml): "
                   "named in each best design's `phaze evaluate` command")
    p.add_argument("--waves", nargs="*", default=(), metavar="W",
                   help="a pruned run's waves tables (results/prune/*/waves.parquet): the "
                        "report then says which archs were evaluated and that pruned archs "
                        "have no Pareto points")
    p.add_argument("--tpuv4-hbm-gib", type=float, default=None,
                   help="HBM of the TPUv4-like baseline in GiB (default 32, a TPUv4's): its "
                        "plans are the sweep's rows that fit in it")
    p.add_argument("-o", "--out", default=None,
                   help="output folder; without it the summary is printed only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _load_latency(paths):
    import pandas as pd

    """Latency tables (phaze.sched.table.LATENCY_SCHEMA: every row names its model, seq,
    mbs, graph variant, arch and layer, with the layer's repeat count)."""
    from phaze.files import read_parquet
    from phaze.sched.table import LATENCY_KEY, LATENCY_SCHEMA, validate

    frames = []
    for path in paths:
        df = read_parquet(path, "--latency")
        validate(df, LATENCY_SCHEMA, f"--latency {path}")
        frames.append(df.rename(columns={"layer_repeat": "repeat"}).assign(_file=str(path)))
    if not frames:
        return None
    lat = pd.concat(frames, ignore_index=True)
    dup = lat.duplicated(list(LATENCY_KEY), keep=False)
    if dup.any():
        r = lat[dup].iloc[0]
        key = {k: getattr(r[k], "item", lambda v=r[k]: v)() for k in LATENCY_KEY}
        raise UserError(f"{r['_file']} repeats the row {key}",
                        field="--latency", fix="give each latency table once")
    return lat       # with _file (the table each row came from), for the join's messages


def check_latency_join(latency, grid, grid_path) -> None:
    """The strict join of the latency rows (Spotlight pick, solver section) with the grid:
    every arch they name is in it; a table of another sweep would otherwise pick a
    Spotlight chip outside the grid and certify a ranking from another grid's ILPs."""
    if latency is None:
        return
    known = set(grid["arch_id"].astype(str))
    ids = latency["arch_id"].astype(str)
    out = ~ids.isin(known)
    if out.any():
        raise UserError(f"{latency.loc[out, '_file'].iloc[0]} has latency rows of arch "
                        f"{ids[out].iloc[0]!r}, which is not in {grid_path} "
                        f"({ids[out].nunique()} such archs)", field="--latency",
                        fix="give the latency tables of the sweep that wrote the grid and "
                            "the placement tables")


class Sweep:
    """Everything the report reads: placement rows, grid, latency rows, config."""

    def __init__(self, place, grid, latency, cfg):
        self.place, self.grid, self.latency, self.cfg = place, grid, latency, cfg


def pruned_notes(waves_paths, infeasible=()) -> list[str]:
    """One line per (model, seq) of a pruned run: how many archs were evaluated exactly,
    and what that means: the best design and baselines are exact, or, for the (model,
    seq) pairs in `infeasible`, that no design fits on the evaluated archs and how many
    pruned archs have a bound of 0 (no plan fits on them either)."""
    from phaze.search.waves import read_waves, summary_line

    notes = []
    for path in waves_paths:
        w = read_waves(path)
        for (model, seq), g in w.groupby(["model", "seq"], sort=True):
            head = f"{model} (seq {seq}), pruned search: {summary_line(g)}."
            if (model, int(seq)) in infeasible:
                pruned = g[g["wave"] == 0]
                none = int((pruned["bound_samples_per_s"] <= 0).sum())
                notes.append(f"{head} No design fits on the evaluated archs, and {none} of "
                             f"the {len(pruned)} pruned archs have a throughput bound of 0 "
                             "(no plan fits on them): there is no best design or baseline "
                             "to compare.")
            else:
                notes.append(f"{head} The best design and the baselines are exact; the "
                             "Pareto front, sensitivity and comparison sections show the "
                             "evaluated archs only.")
    return notes


def check_archs_in_grid(place, grid, grid_path) -> None:
    """The strict join of the placement rows with the grid (area, peak FLOP/s): every arch a
    row names must be in the grid (UserError naming the first one and its table). The grid
    may hold more archs than the rows (a pruned search places only the archs it keeps)."""
    known = set(grid["arch_id"].astype(str))
    ids = place["arch_id"].dropna().astype(str)
    missing = ~ids.isin(known)
    if missing.any():
        first = ids[missing].iloc[0]
        src = place.loc[missing[missing].index[0], "source"] if "source" in place.columns else "--place"
        raise UserError(f"{src} has rows of arch {first!r}, which is not in {grid_path} "
                        f"({int(ids[missing].nunique())} such archs)", field="--grid",
                        fix="give the grid the placement tables were computed on "
                            "(results/arch/grid.parquet of the same sweep)")


def build(place_paths, grid_path, latency_paths=(), config_path=None, tpuv4_hbm_gib=None):
    from phaze.report.context import read_config
    from phaze.report.summary import TPUV4_HBM_GIB, fixed_plans_of, summarise
    from phaze.report.tables import load_grid, load_place

    if tpuv4_hbm_gib is not None and not tpuv4_hbm_gib > 0:
        raise UserError(f"must be > 0, got {tpuv4_hbm_gib}", field="--tpuv4-hbm-gib",
                        fix="give the TPUv4-like chip's HBM in GiB, e.g. 32 (a TPUv4's)")
    place = load_place(place_paths)
    grid = load_grid(grid_path)
    latency = _load_latency(latency_paths)
    cfg = read_config(config_path)
    check_archs_in_grid(place, grid, grid_path)
    check_latency_join(latency, grid, grid_path)
    latency = latency.drop(columns="_file") if latency is not None else None
    place = place.drop(columns=[c for c in ("area_mm2",) if c in place.columns]) \
        .merge(grid[["arch_id", "area_mm2"]], on="arch_id", how="left", validate="many_to_one")
    summary = summarise(place, grid, latency,
                        reproduce={"grid": str(grid_path), "config": config_path},
                        tpuv4_hbm_gib=tpuv4_hbm_gib or TPUV4_HBM_GIB,
                        fixed_plans=fixed_plans_of(cfg), config=cfg)
    return Sweep(place, grid, latency, cfg), summary


def runnable_files(out_dir, sweep, summary) -> dict:
    """Megatron arguments, NeMo keys and the chip JSON of every best design, written."""
    from phaze.report.context import sweep_network
    from phaze.report.runnable import chip_json, megatron_args, nemo_yaml
    from phaze.report.summary import role_rows

    from phaze.settings import GraphSettings, PlacementSettings

    # the sweep's placement and graph settings, their defaults where the config leaves
    # them out
    pl = PlacementSettings.from_config((sweep.cfg or {}).get("placement"))
    gs = GraphSettings.from_config((sweep.cfg or {}).get("graph"))
    net = sweep_network(sweep.cfg)     # as costed: with levels, level 0 is the node
    out = {}
    for _, s in summary[summary["status"] == "ok"].iterrows():
        r = role_rows(sweep.place, s)[0][1]
        batch = int(round(r["samples_per_s"] * r["time_per_batch_s"]))   # the row's own
        kw = dict(zero1=pl.zero1, optimizer=pl.optimizer, cp_comm_type=pl.cp_comm_type,
                  vocab_pad_multiple=gs.vocab_pad_multiple, attention=gs.attention)
        stem = f"{s['model']}_s{int(s['seq'])}"
        f = {"evaluate": s["evaluate_command"], "megatron": megatron_args(r, batch, **kw),
             "nemo": nemo_yaml(r, batch, int((net or {}).get("devices_per_node", 8)), **kw),
             "chip": chip_json(sweep.grid[sweep.grid["arch_id"] == r["arch_id"]].iloc[0],
                               r["hbm_bytes"], net)}
        for key, name in (("megatron", f"megatron_{stem}.txt"), ("nemo", f"nemo_{stem}.yaml"),
                          ("chip", f"chip_{stem}.json")):
            write_text_atomic(Path(out_dir) / name, f[key] + ("" if f[key].endswith("\n") else "\n"))
            f[f"{key}_path"] = str(Path(out_dir) / name)
        out[(s["model"], int(s["seq"]))] = f
    return out


# The per-(model, seq) files runnable_files writes; a file in the output folder matching one
# of these and not written by this run is a stale one of an earlier run (stale_runnable).
RUNNABLE_PATTERNS = (r"megatron_.+_s\d+\.txt", r"nemo_.+_s\d+\.yaml", r"chip_.+_s\d+\.json")


def stale_runnable(out_dir, written) -> list[Path]:
    """Files in `out_dir` that match RUNNABLE_PATTERNS (this command's own per-model
    outputs) but that this run did not write: an earlier run's, for a model no longer
    configured or no longer feasible. Nothing else in the folder is touched."""
    import re

    keep = {Path(f).name for f in written}
    pat = re.compile("|".join(f"(?:{p})" for p in RUNNABLE_PATTERNS))
    return sorted(f for f in Path(out_dir).iterdir()
                  if f.is_file() and not f.is_symlink() and pat.fullmatch(f.name)
                  and f.name not in keep)


def sections_html(sweep, summary, files) -> tuple[str, str]:
    """(context section, the sections after the summary table)."""
    from phaze.report import sections
    from phaze.report.context import sweep_context

    import html as _html

    ctx = sections.context_section(sweep_context(sweep.cfg, sweep.grid, sweep.place,
                                                 sweep.latency))
    ctx += "".join(f"\n<p class=\"pruned\">{_html.escape(n)}</p>"
                   for n in getattr(sweep, "pruned_notes", ()))
    spec = (sweep.cfg or {}).get("arch") if sweep.cfg else None
    body = "\n".join([sections.compare_section(sweep.place, sweep.grid, summary),
                      sections.sensitivity_section(sweep.place, sweep.grid, summary, spec),
                      sections.memory_section(sweep.place, summary),
                      sections.solver_section(sweep.latency, sweep.place, summary),
                      sections.runnable_section(files)])
    return ctx, body


def write_report(out_dir, sweep, summary) -> dict[str, str]:
    from phaze.report import html, plots

    place = sweep.place
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    written["summary"] = str(out_dir / "summary.csv")
    figures = {
        "pareto": ("pareto.png", lambda p: plots.pareto_plot(place, summary, p),
                   "Pareto front: training throughput vs chip area (star: TPUv4-like chip at "
                   "its own HBM, the summary's baseline row; diamond: best co-designed chip)"),
        "per_area": ("throughput_per_area.png",
                     lambda p: plots.pareto_plot(place, summary, p, per_area=True),
                     "Throughput per mm^2 of chip area vs chip area"),
        "breakdown": ("breakdown.png", lambda p: plots.breakdown_plot(place, summary, p),
                      "Time per batch of the best plans, split into its parts"),
        "memory": ("memory.png", lambda p: plots.memory_plot(place, summary, p),
                   "Memory per device of the best plan and the baselines, per pipeline stage where "
                   "the table has it (dashed: HBM)"),
    }
    shown = {}
    with tempfile.TemporaryDirectory() as td:
        for key, (name, draw, caption) in figures.items():
            tmp_png = Path(td) / name
            made = draw(tmp_png)
            if made is None:     # the file still exists: the workflow declares every output
                plots.nothing_to_plot(tmp_png, caption)
            with atomic_path(out_dir / name) as tmp:
                tmp.write_bytes(tmp_png.read_bytes())
            written[key] = str(out_dir / name)
            if made is not None:
                shown[key] = (out_dir / name, caption)
        files = runnable_files(out_dir, sweep, summary)
        for (m, q), f in files.items():
            for key in ("megatron", "nemo", "chip"):
                written[f"{key}_{m}_s{q}"] = f[f"{key}_path"]
        ctx, body = sections_html(sweep, summary, files)
        write_text_atomic(out_dir / "report.html",
                          html.render(summary, shown, extra_html=body, context_html=ctx))
    written["html"] = str(out_dir / "report.html")
    # last, once report.html lists this run's files: an earlier run's per-model files go
    for f in stale_runnable(out_dir, written.values()):
        f.unlink(missing_ok=True)
        written.setdefault("removed", []).append(str(f))
    return written


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def results_inputs(results_dir) -> dict:
    """The report's inputs in a workflow's results folder, for the (model, seq) pairs of its
    config.yaml (stale tables of other pairs are left out): {"place", "latency", "waves",
    "grid", "config"}. A pruned run (search.method pruned) has its latency tables per wave
    under prune/; an exhaustive one under latency/. UserError naming --results when the
    folder holds no finished sweep."""
    from phaze.report.context import read_config

    root = Path(results_dir)
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"no {cfg_path}: not a finished workflow's results folder",
                        field="--results", fix="run the workflow (snakemake) first, or pass "
                        "--place/--grid/--latency/--config")
    cfg = read_config(str(cfg_path))
    pairs = [(m["name"], int(q)) for m in cfg.get("models", []) for q in m.get("seq", [])]
    mbs = cfg.get("microbatch_sizes", [])
    from phaze.settings import SearchSettings

    pruned = SearchSettings(**(cfg.get("search") or {})).method == "pruned"
    found = {"place": [], "latency": [], "waves": [], "grid": str(root / "arch" / "grid.parquet"),
             "config": str(cfg_path)}
    for model, seq in pairs:
        found["place"].append(str(root / "place" / f"{model}_s{seq}.parquet"))
        if pruned:
            d = root / "prune" / f"{model}_s{seq}"
            found["waves"].append(str(d / "waves.parquet"))
            found["latency"] += sorted(str(f) for b in mbs
                                       for f in d.glob(f"latency_b{b}_w[12].parquet"))
        else:
            found["latency"] += [str(f) for b in mbs
                                 if (f := root / "latency" / f"{model}_s{seq}_b{b}.parquet").exists()]
    missing = [f for f in found["place"] + [found["grid"]] if not Path(f).exists()]
    if missing:
        raise UserError(f"{missing[0]} is missing: the sweep has not finished",
                        field="--results", fix="run the workflow (snakemake) to the end first")
    return found


def run(args) -> int:
    from phaze.jsonout import emit_json
    from phaze.report.summary import COMMANDS, format_terminal

    if args.results:
        found = results_inputs(args.results)
        args.place = args.place or found["place"]
        args.grid = args.grid or found["grid"]
        args.latency = args.latency or found["latency"]
        args.waves = args.waves or found["waves"]
        args.config = args.config or found["config"]
    for flag in ("place", "grid"):
        if not getattr(args, flag):
            raise UserError("is required (or give --results DIR)", field=f"--{flag}",
                            fix=f"give --{flag} FILE or --results DIR")
    sweep, summary = build(args.place, args.grid, args.latency, args.config,
                           args.tpuv4_hbm_gib)
    bad = summary[summary["status"] != "ok"]
    sweep.pruned_notes = pruned_notes(args.waves, set(zip(bad["model"], bad["seq"].astype(int))))
    written = write_report(args.out, sweep, summary) if args.out else {}
    if args.json:
        rows = [{k: _clean(v) for k, v in r.items()} for r in summary.to_dict("records")]
        emit_json({"summary": rows, "files": written, "pruned": sweep.pruned_notes,
                   "n_infeasible": int((summary["status"] != "ok").sum())})
        return 0
    print(format_terminal(summary))
    for note in sweep.pruned_notes:
        print(note)
    for _, r in summary[summary["status"] == "ok"].iterrows():
        for role, col in COMMANDS:
            if isinstance(r.get(col), str):
                print(f"reproduce {r['model']} (seq {r['seq']}), {role}: {r[col]}")
    for key, path in written.items():
        if key == "removed":
            print("\n".join(f"removed stale {p}" for p in path))
        else:
            print(f"wrote {path}")
    return 0
