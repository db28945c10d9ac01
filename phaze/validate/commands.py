"""`phaze validate`: predicted vs measured on the published Megatron-LM runs."""

from __future__ import annotations

import sys

from phaze.errors import UserError
from phaze.validate.data import (TABLE_BRIDGE, TABLE_DGXC, TABLE_H100, TABLE_KORTHIKANTI,
                                 TABLE_NARAYANAN, TABLE_NEMO, cases)

TABLE_CHOICES = {"korthikanti": (TABLE_KORTHIKANTI,), "narayanan": (TABLE_NARAYANAN,),
                 "h100": (TABLE_H100,), "nemo": (TABLE_NEMO,), "dgxc": (TABLE_DGXC,),
                 "bridge": (TABLE_BRIDGE,),
                 "both": (TABLE_KORTHIKANTI, TABLE_NARAYANAN),
                 "all": (TABLE_KORTHIKANTI, TABLE_NARAYANAN, TABLE_H100, TABLE_NEMO, TABLE_DGXC,
                         TABLE_BRIDGE)}


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="predicted vs measured time on published A100 and H100 training runs",
        description="Evaluate every row of Narayanan SC'21 Table 1 and Korthikanti MLSys'23 "
                    "Table 5 on the a100 preset and of the Megatron-LM README's 2024 H100 "
                    "table, NeMo 24.07's DGX-H100 FP8 table, the DGX Cloud benchmarking "
                    "recipes' BF16 and FP8 runs and Megatron-Bridge's (NeMo 25.09-26.06) "
                    "DGX-H100 rows (all three held out) on the h100 preset, "
                    "with the default (calibrated) parameters, and print predicted vs "
                    "measured, per-row and mean absolute error; with Table 5, Korthikanti "
                    "Table 4's per-layer forward/backward times (held out).")
    p.add_argument("--table", choices=sorted(TABLE_CHOICES), default="all",
                   help="all (default): the two A100 tables, the Megatron-LM README H100 "
                        "table, the NeMo 24.07 H100 FP8 table, the DGX Cloud recipes' H100 "
                        "table (dgxc: NeMo 24.09/24.11, BF16 and FP8, seconds per step) and "
                        "the Megatron-Bridge H100 table (bridge: NeMo 25.09-26.06, dense and "
                        "MoE, tokens/s/GPU); "
                        "both: the two A100 tables")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write a predicted-vs-measured plot (png/pdf/svg)")
    p.add_argument("--fit", action="store_true",
                   help="re-fit the parameters of the presets the chosen tables run on (a100 "
                        "on Korthikanti Table 5, the h100 sustained fraction on the README's "
                        "H100 weak-scaling rows; about 2 minutes for both), print them and "
                        "evaluate the tables with them instead of the shipped defaults")
    p.set_defaults(func=run)


def run(args) -> int:
    from phaze.validate.evaluate import plan_evaluator, predict
    from phaze.validate.calibrate import FIT_TABLE, H100_FIT_TABLE
    from phaze.validate.report import (held_out_summary, held_out_text, plot, row_dict, summary,
                                       text_table)

    params, fitted = None, None
    if args.plot:
        _check_plot_path(args.plot)
    if args.fit:
        from phaze.validate.calibrate import (A100_FIT_PARAMS, FIT_START, FIT_TABLE,
                                              H100_FIT_PARAMS, H100_FIT_TABLE, fit)
        # fit the presets the chosen tables run on (each on its own fitting table)
        used = {c.arch for t in TABLE_CHOICES[args.table] for c in cases(t)}
        fitted = {}
        if "a100" in used:
            print(f"fitting {[p.name for p in A100_FIT_PARAMS]} on {FIT_TABLE} ...",
                  file=sys.stderr)
            params, mae = fit(FIT_TABLE, plan_evaluator, A100_FIT_PARAMS, FIT_START)
            fitted.update(table=FIT_TABLE, mae_pct=mae, params=params)
        if "h100" in used:
            print(f"fitting {[p.name for p in H100_FIT_PARAMS]} on {H100_FIT_TABLE} ...",
                  file=sys.stderr)
            h_params, h_mae = fit(H100_FIT_TABLE, plan_evaluator, H100_FIT_PARAMS,
                                  {"sustained_clock_fraction": 1.0}, sweeps=1, iters=12)
            fitted["h100"] = {"table": H100_FIT_TABLE, "mae_pct": h_mae, "params": h_params}
    h_params = fitted["h100"]["params"] if fitted and "h100" in fitted else None
    preds = {t: [predict(c, plan_evaluator, h_params if c.arch == "h100" else params)
                 for c in cases(t)]
             for t in TABLE_CHOICES[args.table]}
    layer_rows = None
    if TABLE_KORTHIKANTI in TABLE_CHOICES[args.table]:   # its per-layer companion, held out
        from phaze.validate.evaluate import split_params
        from phaze.validate.layer_times import predict_layer_times
        layer_rows = predict_layer_times(split_params(params)[0])
    if args.plot:
        try:
            plot(preds, args.plot)
        except OSError as e:
            raise UserError(f"cannot write {args.plot}: {e.strerror or e}", field="--plot",
                            fix="name a file in a writable directory") from None
    if args.json:
        from phaze.jsonout import emit_json
        # the presets the evaluated tables run on (a row's own is in rows[].arch)
        archs = sorted({c.arch for t in preds for c in cases(t)})
        from phaze import __version__
        emit_json({"phaze_version": __version__, "archs": archs,
                   "calibration": calibration_info(), "fit": fitted,
                   "tables": summary(preds),
                   "held_out": held_out_summary(preds, (FIT_TABLE, H100_FIT_TABLE)),
                   "rows": [row_dict(p) for ps in preds.values() for p in ps],
                   "layer_times": layer_rows})
        return 0
    info = calibration_info()
    archs = {c.arch for t in preds for c in cases(t)}   # print the presets the tables use
    if "a100" in archs:
        refit = bool(fitted and "params" in fitted)
        print(f"a100 preset parameters ({'re-fitted' if refit else 'shipped'}; fitted on "
              f"{info['fit_table']}, held out: {info['held_out_table']}):")
        for k, v in {**info["params"], **((fitted or {}).get("params") or {})}.items():
            if k in info["params"]:
                print(f"  {k:<26} {v:.4g}" if isinstance(v, float) else f"  {k:<26} {v}")
    if "h100" in archs:
        print("h100 preset parameters (kernels: benchmarks/data/h100_kernels_measured.csv; "
              "sustained_clock_fraction fitted on the Megatron-LM README's H100 weak-scaling "
              "rows, docs/validate.md)" + (" [re-fitted]" if h_params else "") + ":")
        for k, v in {**info["h100_params"], **(h_params or {})}.items():
            print(f"  {k:<26} {v:.4g}" if isinstance(v, float) else f"  {k:<26} {v}")
    print()
    for t, ps in preds.items():
        print(text_table(ps))
        print()
        if t == TABLE_KORTHIKANTI and layer_rows:
            from phaze.validate.layer_times import text_table as layer_table
            print(layer_table(layer_rows))
            print()
    held = held_out_summary(preds, (FIT_TABLE, H100_FIT_TABLE))
    if held:
        print(held_out_text(held))
    if args.plot:
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


# file types matplotlib writes (savefig's format is taken from the name)
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def _check_plot_path(path) -> None:
    """UserError (field --plot) unless `path` is a new or regular file of a plot format."""
    from pathlib import Path

    from phaze.atomic import check_output_path

    ext = Path(str(path)).suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise UserError(f"cannot tell a plot format from {str(path)!r}", field="--plot",
                        fix=f"end the name in .{', .'.join(PLOT_FORMATS[:4])} or another of "
                            f"{', '.join(PLOT_FORMATS[4:])}")
    try:
        check_output_path(path)
    except UserError as e:
        raise UserError(str(e).split(": ", 1)[-1].split("; fix:")[0], field="--plot",
                        fix=e.fix) from None


def calibration_info() -> dict:
    from phaze.cost.params import PRESET_PARAMS
    from phaze.validate.calibrate import FIT_TABLE, HELD_OUT_TABLE

    return {"fit_table": FIT_TABLE, "held_out_table": HELD_OUT_TABLE,
            "params": dict(PRESET_PARAMS["a100"]), "h100_params": dict(PRESET_PARAMS["h100"])}
