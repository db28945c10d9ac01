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
    "phaze.search.wave_commands",  # prune-bound, prune-next, prune-collect
    "phaze.report.commands",    # report
    "phaze.validate.commands",  # validate
)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with its default, where it has one that matters
    (not None, False or empty) and the text does not already state it."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        empty = d is None or d is False or d is argparse.SUPPRESS or \
            (isinstance(d, (list, tuple)) and not d)
        if empty or "default" in text.lower() or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line naming the argument (exit 2), and every
    option's default in its help (DefaultsFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"phaze: error: {message}; fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="phaze",
        description="Co-search accelerator architecture and distributed training plan.",
    )
    parser.add_argument("--version", action="version", version=f"phaze {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
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
        for attr in ("output", "out"):       # `-o ''` is a mistake, never "no output"
            if getattr(args, attr, None) == "":
                raise UserError("empty output name", field="-o", fix="name a file or folder")
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"phaze: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001  (an expected failure becomes one line; a bug re-raises)
        msg = expected_failure(e)
        if msg is None:
            raise
        print(f"phaze: error: {msg}", file=sys.stderr)
        return 2


def expected_failure(e: BaseException) -> str | None:
    """One line for a failure the user's input or machine causes (I/O, a corrupt file,
    memory), naming the file where known; None for anything else (a bug: traceback)."""
    if isinstance(e, OSError):
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        return f"cannot access{where}: {e.strerror or e}; fix: check the path, its " \
               "permissions and free space"
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({e.reason}); fix: pass the right file"
    if isinstance(e, MemoryError):
        return "out of memory; fix: a smaller sweep (fewer archs, models or axis values)"
    if type(e).__module__.startswith("pyarrow"):
        return f"cannot read a parquet table ({str(e).splitlines()[0] if str(e) else type(e).__name__}); " \
               "fix: regenerate it (delete it and rerun)"
    return None


if __name__ == "__main__":
    sys.exit(main())
