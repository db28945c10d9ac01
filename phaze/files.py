"""Reading the JSON files users hand to phaze: one reader, one kind of error."""

from __future__ import annotations

import json
from pathlib import Path

from phaze.errors import UserError


def read_json(path, field: str, want=dict, fix: str | None = None):
    """The JSON value in file `path` (of type `want`, None for any). UserError naming
    `field` and the file when it is missing (with `fix`, e.g. what else the flag takes),
    unreadable, not UTF-8, not JSON or of another type."""
    p = Path(path)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no such file {str(p)!r}", field=field,
                        fix=fix or "check the path") from None
    except OSError as e:
        raise UserError(f"cannot read {p} ({e.strerror or e})", field=field,
                        fix="give a readable file (check its permissions, or that it is "
                            "not a folder)") from None
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text", field=field,
                        fix="save it as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p} is not valid JSON at line {e.lineno}, column {e.colno}: "
                        f"{e.msg}", field=field, fix=json_fix(e)) from None
    if want is not None and not isinstance(value, want):
        kind = "object" if want is dict else want.__name__
        raise UserError(f"{p} must hold a JSON {kind}, not a {type(value).__name__}",
                        field=field, fix="make the file's top level a JSON "
                        + ("object {...}" if want is dict else kind))
    return value


def json_fix(e: json.JSONDecodeError) -> str:
    """The fix of a JSON syntax error: where, and the usual cause of that message."""
    where = f"line {e.lineno}, column {e.colno}"
    if "double quotes" in e.msg:
        return (f"at {where}, quote keys and strings with double quotes and drop any "
                "trailing comma (JSON has no comments)")
    if "Expecting value" in e.msg and e.pos >= len(e.doc.rstrip()):
        return "the file ends early or is empty: complete the JSON (or write it again)"
    return f"correct the JSON at {where} (a missing comma, bracket or quote)"


def read_parquet(path, field: str, fix: str | None = None):
    """The parquet table in file `path` (a pandas DataFrame). UserError naming `field` and
    the file when it is missing (with `fix`, e.g. the command that writes it) or is not a
    readable parquet table (pyarrow raises several exception types for a bad file)."""
    import os

    import pandas as pd

    if os.path.isdir(path):     # pandas would read a directory as an (empty) dataset
        raise UserError(f"{path} is a directory, not a parquet file", field=field, fix=fix)
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"no such file {path}", field=field, fix=fix) from None
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's fault
        first = (str(e).splitlines() or [""])[0][:200]     # one line, whatever pyarrow says
        raise UserError(f"{path} is not a readable parquet table ({e.__class__.__name__}: "
                        f"{first})", field=field,
                        fix="give a parquet table phaze wrote (rerun the step that writes it)") from None
