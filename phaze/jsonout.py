"""The --json contract: exactly one JSON object on stdout, never Infinity or NaN."""

from __future__ import annotations

import json
import math
import sys


def emit_json(obj) -> None:
    """Print exactly one JSON object on stdout (non-finite floats become null)."""
    sys.stdout.write(json.dumps(finite(obj), default=_json_default, separators=(",", ":"),
                                allow_nan=False))
    sys.stdout.write("\n")


def finite(o):
    """`o` with every non-finite float (also inside dicts and lists) replaced by None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return finite(float(o))
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return finite(o.tolist())
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
