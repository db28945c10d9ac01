"""`phaze validate`: predicted vs measured on the published Megatron-LM runs."""

from __future__ import annotations

import sys

from phaze.validate.data import TABLE_KORTHIKANTI, TABLE_NARAYANAN, cases

TABLE_CHOICES = {"korthikanti": (TABLE_KORTHIKANTI,), "narayanan": (TABLE_NARAYANAN,),
                 "both": (TABLE_KORTHIKANTI, TABLE_NARAYANAN)}


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="predicted vs measured time on published A100 training runs",
        description="Evaluate every row of Narayanan SC'21 Table 1 and Korthikanti MLSys'23 "
                    "Table 5 on the a100 preset with the default (calibrated) parameters and "
                    "print predicted vs measured, per-row and mean absolute error.")
    p.add_argument("--table", choices=sorted(TABLE_CHOICES), default="both")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write a predicted-vs-measured plot (png/pdf/svg)")
    p.set_defaults(func=run)


def run(args) -> int:
    from phaze.validate.evaluate import plan_evaluator, predict
    from phaze.validate.report import plot, row_dict, summary, text_table

    preds = {t: [predict(c, plan_evaluator) for c in cases(t)] for t in TABLE_CHOICES[args.table]}
    if args.plot:
        plot(preds, args.plot)
    if args.json:
        from phaze.cli import emit_json
        emit_json({"arch": "a100", "tables": summary(preds),
                   "rows": [row_dict(p) for ps in preds.values() for p in ps]})
        return 0
    for t, ps in preds.items():
        print(text_table(ps))
        print()
    if args.plot:
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
