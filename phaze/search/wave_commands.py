"""CLI of the workflow's pruned search (phaze.search.waves): `phaze prune-bound`,
`phaze prune-next`, `phaze prune-collect`."""

from __future__ import annotations

import json

from phaze.errors import UserError


def register(sub) -> None:
    b = sub.add_parser("prune-bound", help="bound pass of one (model, seq): every arch's "
                       "optimistic throughput, and wave 1 (workflow, search.method pruned)")
    b.add_argument("--config-json", required=True,
                   help="the sweep config as one JSON object with ONE model and ONE seq "
                        "(models, microbatch_sizes, graph, placement, network)")
    b.add_argument("--grid", required=True, help="arch grid parquet (phaze arch grid)")
    b.add_argument("--wave1-archs", type=int, required=True,
                   help="archs with the best bounds in wave 1 (search.wave1_archs)")
    b.add_argument("-o", "--output", required=True, help="waves table (parquet)")
    b.add_argument("--wave-grid", required=True, help="write wave 1's grid rows here")
    b.set_defaults(func=cmd_bound)

    n = sub.add_parser("prune-next", help="wave 2: the archs whose bound can beat wave 1's "
                       "best design (or whose Spotlight bound can beat wave 1's best score)")
    n.add_argument("--waves", required=True, help="the bound pass's waves table")
    n.add_argument("--place", required=True, help="wave 1's placement table")
    n.add_argument("--latency", nargs="*", default=(), help="wave 1's merged latency tables")
    n.add_argument("--grid", required=True, help="the sweep's arch grid")
    n.add_argument("--config-json", required=True,
                   help="prune-bound's config (the DP bounds of the archs whose work bound "
                        "reaches the incumbent are computed with it)")
    n.add_argument("-o", "--output", required=True, help="waves table with wave 2 marked")
    n.add_argument("--wave-grid", required=True, help="write wave 2's grid rows here")
    n.add_argument("--summary", help="also write the incumbent and wave sizes here (JSON; "
                   "the workflow's checkpoint reads wave2_archs)")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_next)

    c = sub.add_parser("prune-collect", help="one placement table from the waves' tables")
    c.add_argument("--waves", required=True, help="the final waves table (prune-next's)")
    c.add_argument("--place", nargs="+", required=True, help="the waves' placement tables")
    c.add_argument("-o", "--output", required=True)
    c.set_defaults(func=cmd_collect)


def _spec(cfg_text: str):
    from phaze.place.driver import parse_fixed
    from phaze.search.pipeline import SweepSpec
    from phaze.settings import SweepSettings

    try:
        cfg = json.loads(cfg_text)
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON ({e})", field="--config-json",
                        fix="give valid JSON (the workflow writes it from the config)") from None
    models = cfg.get("models") if isinstance(cfg, dict) else None
    if not (isinstance(models, list) and len(models) == 1 and len(models[0].get("seq", ())) == 1):
        raise UserError("needs exactly one model with one seq", field="--config-json",
                        fix='e.g. {"models": [{"name": "bert-large", "seq": [512], "tp": [1]}]}')
    m = models[0]
    settings = SweepSettings.from_config(cfg)
    return SweepSpec(model=m["name"], source=m.get("hf_config", ""), seq=int(m["seq"][0]),
                     tp=tuple(m.get("tp", (1,))), settings=settings,
                     fixed=parse_fixed(m.get("fixed_plan")), cp=tuple(m.get("cp", (1,))))


def _write(df, path) -> None:
    from phaze.atomic import atomic_path

    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def cmd_bound(args) -> int:
    from dataclasses import replace

    from phaze.hw.grid import read_grid
    from phaze.search.waves import bound_table, wave_grid

    if args.wave1_archs < 1:
        raise UserError(f"must be >= 1, got {args.wave1_archs}", field="--wave1-archs",
                        fix="give how many archs wave 1 evaluates, an integer >= 1")
    spec = replace(_spec(args.config_json), fixed=None)   # the fixed plan never bounds
    grid = read_grid(args.grid)
    waves = bound_table(spec, grid, args.wave1_archs)
    _write(wave_grid(grid, waves, 1), args.wave_grid)
    _write(waves, args.output)
    print(f"wrote {args.output}: bounds of {len(waves)} archs; wave 1: "
          f"{int((waves['wave'] == 1).sum())} archs")
    return 0


def cmd_next(args) -> int:
    from dataclasses import replace

    from phaze.hw.grid import read_grid
    from phaze.jsonout import emit_json
    from phaze.place.table import read_place
    from phaze.report.commands import _load_latency
    from phaze.search.waves import read_waves, summary_line, survivors, wave_grid

    spec = replace(_spec(args.config_json), fixed=None)
    waves = read_waves(args.waves)
    place = read_place(args.place)
    latency = _load_latency(args.latency).drop(columns="_file") if args.latency else None
    grid = read_grid(args.grid)
    out, info = survivors(waves, place, latency, spec, grid)
    _write(wave_grid(grid, out, 2), args.wave_grid)
    _write(out, args.output)
    info["summary"] = summary_line(out)
    info["wave1_archs"] = int((out["wave"] == 1).sum())
    info["wave2_archs"] = int((out["wave"] == 2).sum())
    info = {k: (None if isinstance(v, float) and v != v else v) for k, v in info.items()}
    if args.summary:
        from phaze.atomic import write_text_atomic

        write_text_atomic(args.summary, json.dumps(info) + "\n")
    if args.json:
        emit_json(info)
    else:
        print(f"wrote {args.output}: incumbent {info['incumbent_samples_per_s']} samples/s; "
              f"{info['summary']}")
    return 0


def cmd_collect(args) -> int:
    import pandas as pd

    from phaze.place.table import check, read_place
    from phaze.search.waves import read_waves

    waves = read_waves(args.waves)
    frames = [read_place(p) for p in args.place]
    df = pd.concat(frames, ignore_index=True)
    check(df, "collected placement table")
    want = set(waves.loc[waves["wave"] > 0, "arch_id"])
    got = set(df["arch_id"].astype(str))
    if got != want:
        raise UserError(f"the placement tables hold {len(got)} archs, the waves table "
                        f"{len(want)} evaluated ones", field="--place",
                        fix="give every wave's placement table (and only those)")
    _write(df, args.output)
    print(f"wrote {args.output}: {len(df)} rows of {len(got)} archs")
    return 0
