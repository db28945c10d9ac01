"""`phaze check-config`: a sweep config checked as the workflow checks it, before any job;
with -o, the config written back (as the report's `phaze evaluate` commands read it)."""

from __future__ import annotations

import json

from phaze.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("check-config", help="check a sweep config before running it",
                       description="Schema, typed settings, every model at every TP width, "
                       "the arch grid: the checks the workflow runs before its first job.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="sweep config YAML (configs/default.yaml)")
    src.add_argument("--config-json", help="the config as one JSON object (the workflow's)")
    p.add_argument("--over", help="a base config the --config file is merged over first, as "
                   "`snakemake --configfile` merges a partial copy over configs/default.yaml")
    p.add_argument("-o", "--output", help="write the checked config here (YAML)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_check)


def _check(args) -> int:
    import yaml

    from phaze.atomic import write_text_atomic
    from phaze.configcheck import semantic_errors
    from phaze.jsonout import emit_json
    from phaze.settings import SweepSettings, check_config_schema, load_config, settings_dict

    if args.config:
        cfg = load_config(args.config, over=args.over)
    else:
        try:
            cfg = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            from phaze.files import json_fix

            raise UserError(f"not JSON ({e})", field="--config-json",
                            fix=json_fix(e)) from None
        check_config_schema(cfg)
    settings = SweepSettings.from_config(cfg)
    errors = semantic_errors(cfg)
    if errors:
        message, _, fix = errors[0].removeprefix("field ").partition("; fix: ")
        raise UserError(message, field="config", fix=fix or None)
    if args.output:
        write_text_atomic(args.output, yaml.safe_dump(cfg, sort_keys=False))
    if args.json:
        emit_json({"ok": True, "settings": settings_dict(settings)})
    else:
        print("config ok" + (f" -> {args.output}" if args.output else ""))
    return 0
