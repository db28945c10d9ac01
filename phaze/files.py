"""Reading the JSON files users hand to phaze: one reader, one kind of error."""

from __future__ import annotations

import json
from pathlib import Path

from phaze.errors import UserError


def read_json(path, field: str, want=dict):
    """The JSON value in file `path` (of type `want`, None for any). UserError naming
    `field` and the file when it is missing, unreadable, not UTF-8, not JSON or of
    another type."""
    p = Path(path)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no such file {str(p)!r}", field=field) from None
    except OSError as e:
        raise UserError(f"cannot read {p} ({e.strerror or e})", field=field) from None
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text", field=field) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p} is not valid JSON ({e})", field=field) from None
    if want is not None and not isinstance(value, want):
        raise UserError(f"{p} must hold a JSON {'object' if want is dict else want.__name__}",
                        field=field)
    return value
