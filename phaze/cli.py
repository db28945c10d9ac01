"""The `phaze` command. Each stage registers its own subcommands (module.register(sub));
this file only dispatches and turns user errors into one line + exit code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from phaze import __version__
from phaze.errors import UserError

# Modules that define subcommands, in the order `phaze --help` lists them.
COMMAND_MODULES = (
    "phaze.model.commands",     # models, graph
    "phaze.hw.commands",        # arch show|grid|list
    "phaze.cost.commands",      # cost
    "phaze.sched.commands",     # schedule, schedule-batch, merge-latency
    "phaze.place.commands",     # place, evaluate
    "phaze.search.commands",    # search
    "phaze.report.commands",    # report
    "phaze.validate.commands",  # validate
)


def emit_json(obj) -> None:
    """Print exactly one JSON object on stdout (the --json contract)."""
    json.dump(obj, sys.stdout, default=_json_default, separators=(",", ":"))
    sys.stdout.write("\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phaze",
        description="Co-search accelerator architecture and distributed training plan.",
    )
    parser.add_argument("--version", action="version", version=f"phaze {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"phaze: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
