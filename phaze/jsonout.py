"""The --json contract: exactly one JSON object on stdout, never Infinity or NaN."""

from __future__ import annotations

import json
import math
import sys


def emit_json(obj) -> None:
    """Print exactly one JSON object on stdout (non-finite floats become null)."""
    sys.stdout.write(json.dumps(_finite(obj), default=_json_default, separators=(",", ":"),
                                allow_nan=False))
    sys.stdout.write("\n")


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return _finite(float(o))
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
