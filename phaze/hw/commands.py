"""`phaze arch show|list|grid`."""

from __future__ import annotations

import json
import sys

from phaze.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("arch", help="architecture presets and the architecture grid")
    asub = p.add_subparsers(dest="arch_command", metavar="ARCH_COMMAND")

    s = asub.add_parser("show", help="show one preset, chip JSON file, or arch_id of a grid")
    s.add_argument("name", help="preset name (tpuv4, a100, h100), a chip JSON file "
                   "(phaze report's chip_*.json) or an arch_id with --grid")
    s.add_argument("--grid", help="grid parquet to look an arch_id up in")
    s.add_argument("--config", help="with --grid: the sweep's config (the workflow's "
                   "results/config.yaml, found next to results/arch/grid.parquet when not "
                   "given), whose network: and placement.hbm_gib the grid does not store")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_show)

    ls = asub.add_parser("list", help="list presets")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    g = asub.add_parser("grid", help="enumerate and area-filter the architecture grid")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--spec", help="JSON object: the config's arch: mapping (default: reference grid)")
    src.add_argument("--config", help="YAML/JSON config file; its arch: key is the spec")
    g.add_argument("-o", "--output", required=True, help="output parquet (written atomically)")
    g.add_argument("--json", action="store_true", help="print a JSON summary")
    g.set_defaults(func=_grid)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def resolve_arch(name: str, grid: str | None = None):
    """A preset by name, a chip JSON file (phaze.hw.chipfile), or an arch_id looked up in a
    grid parquet."""
    from phaze.hw.arch import arch_from_row
    from phaze.hw.chipfile import is_chip_file, read_chip
    from phaze.hw.presets import PRESETS, get_preset

    from phaze.hw.grid import read_grid

    if name in PRESETS:
        return get_preset(name)
    if is_chip_file(name):
        return read_chip(name)
    if not grid:
        raise UserError(f"{name!r} is not an arch preset", field="--arch",
                        fix=f"use one of {sorted(PRESETS)}, or an arch_id with --grid G.parquet")
    df = read_grid(grid)
    hit = df[df["arch_id"] == name]
    if hit.empty:
        raise UserError(f"arch_id {name!r} is not in {grid}", field="--arch",
                        fix="use an arch_id of that grid")
    return arch_from_row(hit.iloc[0])


def sweep_config_of(grid: str, config: str | None) -> str | None:
    """The sweep config that goes with a grid parquet: `config`, else the workflow's
    results/config.yaml when the grid is its results/arch/grid.parquet, else None."""
    from pathlib import Path

    if config:
        return config
    near = Path(grid).resolve().parent.parent / "config.yaml"
    return str(near) if Path(grid).resolve().parent.name == "arch" and near.is_file() else None


def _show(args) -> int:
    from phaze.jsonout import emit_json
    from phaze.hw.area import area_breakdown_mm2

    from phaze.hw.chipfile import is_chip_file
    from phaze.hw.presets import PRESETS

    from_grid = bool(args.grid) and args.name not in PRESETS and not is_chip_file(args.name)
    if args.config and not from_grid:
        raise UserError("only applies to an arch_id of a grid", field="--config",
                        fix="add --grid G.parquet, or drop --config (a preset or chip "
                            "file carries its own network)")
    a = resolve_arch(args.name, args.grid)
    d = a.to_dict()
    d.update(area_breakdown_mm2(a.n_tc, a.tc_rows, a.tc_cols, a.n_vc, a.vc_lanes, a.glb_bytes))
    notes = {}
    if from_grid:
        # a grid stores the chip only: the network and the HBM size come from the sweep's
        # config (network:, placement.hbm_gib), never from a default that looks like data
        from phaze.settings import SweepSettings, load_config

        cfg_path = sweep_config_of(args.grid, args.config)
        if cfg_path:
            settings = SweepSettings.from_config(load_config(cfg_path))
            d["network"] = settings.net().to_dict()
            d["hbm_bytes"] = None
            d["hbm_gib_swept"] = list(settings.placement.hbm_gib)
            notes["network"] = f"the network: of {cfg_path}; the grid stores none"
            notes["hbm_bytes"] = (f"not stored in the grid; the sweep tried "
                                  f"placement.hbm_gib {list(settings.placement.hbm_gib)} GiB "
                                  f"(from {cfg_path})")
        else:
            d["network"] = d["hbm_bytes"] = None
            why = ("not stored in the grid; it is the sweep config's {}; pass --config "
                   "results/config.yaml (the sweep's config) to show it")
            notes["network"] = why.format("network:")
            notes["hbm_bytes"] = why.format("placement.hbm_gib")
        d["source"] = dict(notes)
    if args.json:
        emit_json(d)
        return 0
    net = d.pop("network")
    d.pop("source", None)
    d.pop("hbm_gib_swept", None)
    for k, v in d.items():
        if k == "name" and not v:
            continue        # a grid arch has no name; its arch_id names it
        print(f"{k:16s} {notes[k] if k in notes else _fmt(v)}{_unit(k, v)}")
    if net is None:
        print(f"network          {notes['network']}")
    else:
        print("network          " + ", ".join(f"{k}={_fmt(v)}" for k, v in net.items()
                                                if v != "")
              + (f"  ({notes['network']})" if "network" in notes else ""))
    return 0


def _list(args) -> int:
    from phaze.jsonout import emit_json
    from phaze.hw.presets import PRESETS

    rows = {n: {"area_mm2": a.area_mm2, "peak_flops": a.peak_flops, "arch_id": a.arch_id}
            for n, a in PRESETS.items()}
    if args.json:
        emit_json({"presets": rows})
        return 0
    for n, r in rows.items():
        print(f"{n:8s} {r['arch_id']}  {r['area_mm2']:8.1f} mm^2  {r['peak_flops'] / 1e12:8.1f} TFLOP/s")
    return 0


def _grid(args) -> int:
    from phaze.atomic import atomic_path
    from phaze.jsonout import emit_json
    from phaze.hw.grid import PUBLISHED_KEPT, enumerate_grid, full_spec

    spec = _read_spec(args)
    df = enumerate_grid(spec)
    total = len(enumerate_grid(spec, filter_area=False))
    with atomic_path(args.output) as tmp:
        df.to_parquet(tmp, index=False)
    summary = {"output": args.output, "candidates": total, "kept": len(df),
               "published_kept_reference_grid": PUBLISHED_KEPT,
               "area_filter": full_spec(spec)["area"]}
    if args.json:
        emit_json(summary)
    else:
        print(f"{len(df)} of {total} candidate archs kept -> {args.output}", file=sys.stderr)
    return 0


def _read_spec(args) -> dict | None:
    if args.spec:
        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON ({e.msg})", field="--spec",
                            fix="give valid JSON, e.g. --spec '{\"n_tc\": [1, 2]}'") from None
    elif args.config:
        import yaml

        try:
            with open(args.config) as f:
                cfg = yaml.safe_load(f)
        except OSError as e:
            raise UserError(f"cannot read {args.config}: {e.strerror}", field="--config",
                            fix="check the path and that the file is readable") from None
        except yaml.YAMLError as e:
            from phaze.settings import yaml_error

            raise yaml_error(args.config, e, "--config") from None
        if not isinstance(cfg, dict) or "arch" not in cfg:
            raise UserError("config has no arch: mapping", field="--config",
                            fix="add an arch: block (configs/default.yaml has one)")
        spec = cfg["arch"]
    else:
        return None
    if spec is not None and not isinstance(spec, dict):
        raise UserError(f"must be a mapping, got {type(spec).__name__}", field="arch",
                        fix="give arch: as a mapping of axis names to values, e.g. arch: {n_tc: [1, 2]}")
    return spec


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _unit(key: str, v) -> str:
    """The value again in the unit a reader thinks in (bytes as GiB / MiB, rates as TB/s,
    TFLOP/s, GHz), after the exact figure the chip JSON holds; "" where none helps."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v:
        return ""
    scale = {"hbm_bytes": (2**30, "GiB"), "glb_bytes": (2**20, "MiB"),
             "hbm_bw_Bps": (1e12, "TB/s"), "glb_bw_Bps": (1e12, "TB/s"),
             "peak_flops": (1e12, "TFLOP/s"), "clock_hz": (1e9, "GHz")}.get(key)
    return f"  ({v / scale[0]:g} {scale[1]})" if scale else ""
