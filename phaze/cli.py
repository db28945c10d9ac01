"""The `phaze` command. Each stage registers its own subcommands (module.register(sub));
this file only dispatches and turns user errors into one line + exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from phaze import __version__
from phaze.errors import UserError
from phaze.jsonout import emit_json  # noqa: F401  (kept importable from here)

# Modules that define subcommands, in the order `phaze --help` lists them.
COMMAND_MODULES = (
    "phaze.commands",           # check-config
    "phaze.model.commands",     # models, graph
    "phaze.hw.commands",        # arch show|grid|list
    "phaze.cost.commands",      # cost
    "phaze.sched.commands",     # schedule, schedule-batch, merge-latency
    "phaze.place.commands",     # place, evaluate
    "phaze.search.commands",    # search
    "phaze.report.commands",    # report
    "phaze.validate.commands",  # validate
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phaze",
        description="Co-search accelerator architecture and distributed training plan.",
    )
    parser.add_argument("--version", action="version", version=f"phaze {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
