"""Enumerate the architecture grid from config ranges and filter it by area.

Spec (the config's `arch:` mapping; every key optional, defaults = the reference grid of
docs/reference.md#arch-space). An axis is a list of values, {"pow2": [lo, hi]} (powers of two
from lo to hi) or {"range": [lo, hi, step]} (inclusive):

    n_tc:       {pow2: [1, 4096]}
    n_vc:       {pow2: [1, 4096]}
    tc_rows:    {pow2: [2, 256]}      # array depth (reduction dim)
    tc_cols:    {pow2: [2, 256]}      # array width w
    vc_lanes:   tc_cols               # "tc_cols" ties VC lanes to the TC width; or an axis
    square:     false                 # true: only tc_rows == tc_cols
    glb_mib:    {pow2: [2, 128]}
    clock_hz:   [1.05e9]
    hbm_bw_Bps: [1.2e12]
    glb_bw_Bps: auto                  # "auto" (feed every core each cycle) or an axis
    area:
      a_max_mm2:        tpuv4         # "tpuv4" = this model's area of the TPUv4-like chip
      min_frac:         0.3           # keep min_frac*A_max <= area <= A_max ...
      keep_single_core: under_max     # ... plus n_tc == 1 or n_vc == 1 configs:
                                      # under_max (area <= A_max), all, or none
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

from phaze.errors import UserError, unknown_field_fix
from phaze.hw.arch import ID_FIELDS, INT_FIELDS, TABLE_COLUMNS, auto_glb_bw_Bps
from phaze.hw.area import area_mm2
from phaze.hw.presets import PRESETS
from phaze.units import MiB

REFERENCE_SPEC = {
    "n_tc": {"pow2": [1, 4096]},
    "n_vc": {"pow2": [1, 4096]},
    "tc_rows": {"pow2": [2, 256]},
    "tc_cols": {"pow2": [2, 256]},
    "vc_lanes": "tc_cols",
    "square": False,
    "glb_mib": {"pow2": [2, 128]},
    "clock_hz": [1.05e9],
    "hbm_bw_Bps": [1.2e12],
    "glb_bw_Bps": "auto",
    "area": {"a_max_mm2": "tpuv4", "min_frac": 0.3, "keep_single_core": "under_max"},
}
PUBLISHED_KEPT = 29_360  # configs the published PHAZE run kept from the reference grid
_AXES_INT = ("n_tc", "n_vc", "tc_rows", "tc_cols", "vc_lanes")
_AXES_FLOAT = ("glb_mib", "clock_hz", "hbm_bw_Bps", "glb_bw_Bps")
_KEEP_MODES = ("under_max", "all", "none")


# Bounds that keep a grid in memory and its integers far from int64 overflow.
MAX_AXIS_VALUES = 4096
MAX_INT_AXIS = 2**20
MAX_CANDIDATES = 10_000_000


def axis_values(spec, name: str, integer: bool) -> np.ndarray:
    """Values of one axis spec; raises UserError on non-positive or non-integer values."""
    if isinstance(spec, dict):
        if set(spec) == {"pow2"}:
            lo, hi = _pair(spec["pow2"], name)
            if lo <= 0 or hi < lo or not _is_pow2(lo):
                raise UserError(f"pow2 range needs 0 < lo <= hi with lo a power of two, got {spec['pow2']}",
                                field=f"arch.{name}",
                                fix="give [lo, hi] with 0 < lo <= hi and lo a power of two, e.g. {pow2: [1, 64]}")
            vals = []
            v = lo
            while v <= hi:
                vals.append(v)
                v *= 2
        elif set(spec) == {"range"}:
            r = spec["range"]
            if not isinstance(r, (list, tuple)) or len(r) != 3:
                raise UserError("range needs [lo, hi, step]", field=f"arch.{name}",
                                fix="give {range: [lo, hi, step]}")
            lo, hi, step = r
            if not all(_is_num(x) for x in r) or step <= 0 or hi < lo:
                raise UserError(f"range needs numbers lo <= hi and step > 0, got {r}", field=f"arch.{name}",
                                fix="give numbers with lo <= hi and step > 0")
            n = int(math.floor((hi - lo) / step + 1e-9)) + 1
            if n > MAX_AXIS_VALUES:
                raise UserError(f"range gives {n} values, more than {MAX_AXIS_VALUES}",
                                field=f"arch.{name}", fix="use a coarser step or a list")
            vals = [lo + i * step for i in range(n)]
        else:
            raise UserError(f"unknown axis form {sorted(spec)}", field=f"arch.{name}",
                            fix="use a list, {pow2: [lo, hi]} or {range: [lo, hi, step]}")
    elif isinstance(spec, (list, tuple)):
        vals = list(spec)
    elif _is_num(spec):
        vals = [spec]
    else:
        raise UserError(f"cannot read axis {spec!r}", field=f"arch.{name}",
                        fix="use a list, {pow2: [lo, hi]} or {range: [lo, hi, step]}")
    if not vals:
        raise UserError("axis is empty", field=f"arch.{name}", fix="give at least one value")
    for v in vals:
        if not _is_num(v) or not math.isfinite(v) or v <= 0:
            raise UserError(f"values must be positive numbers, got {v!r}", field=f"arch.{name}",
                            fix="give positive finite numbers")
        if integer and v > MAX_INT_AXIS:
            raise UserError(f"values must be <= {MAX_INT_AXIS}, got {v!r}", field=f"arch.{name}",
                            fix=f"give values <= {MAX_INT_AXIS}")
        if integer and float(v) != int(v):
            raise UserError(f"values must be positive integers, got {v!r}", field=f"arch.{name}",
                            fix="give whole numbers")
    arr = np.array(sorted(set(float(v) for v in vals)))
    return arr.astype(np.int64) if integer else arr


def full_spec(spec: dict | None) -> dict:
    """The spec with defaults filled in; rejects unknown keys."""
    spec = dict(spec or {})
    unknown = set(spec) - set(REFERENCE_SPEC)
    if unknown:
        bad = sorted(unknown)[0]
        raise UserError("unknown key", field=f"arch.{bad}",
                        fix=unknown_field_fix(bad, REFERENCE_SPEC, "arch"))
    out = {k: spec.get(k, v) for k, v in REFERENCE_SPEC.items()}
    area = dict(REFERENCE_SPEC["area"])
    user_area = spec.get("area") or {}
    if not isinstance(user_area, dict) or set(user_area) - set(area):
        raise UserError(f"bad area spec {user_area!r}", field="arch.area",
                        fix=f"a mapping with keys among {sorted(area)}")
    area.update(user_area)
    out["area"] = area
    return out


def a_max_of(area_spec: dict) -> float:
    a = area_spec["a_max_mm2"]
    if a == "tpuv4":
        return PRESETS["tpuv4"].area_mm2
    if not _is_num(a) or a <= 0:
        raise UserError(f"must be 'tpuv4' or a positive number, got {a!r}", field="arch.area.a_max_mm2",
                        fix="give 'tpuv4' or a positive area in mm^2")
    return float(a)


def enumerate_grid(spec: dict | None = None, filter_area: bool = True) -> pd.DataFrame:
    """All candidate archs of the spec (one row each, TABLE_COLUMNS), area-filtered."""
    s = full_spec(spec)
    axes = {n: axis_values(s[n], n, integer=True) for n in ("n_tc", "n_vc", "tc_rows", "tc_cols")}
    axes["glb_mib"] = axis_values(s["glb_mib"], "glb_mib", integer=False)
    axes["clock_hz"] = axis_values(s["clock_hz"], "clock_hz", integer=False)
    axes["hbm_bw_Bps"] = axis_values(s["hbm_bw_Bps"], "hbm_bw_Bps", integer=False)
    tie_lanes = s["vc_lanes"] == "tc_cols"
    if not tie_lanes:
        axes["vc_lanes"] = axis_values(s["vc_lanes"], "vc_lanes", integer=True)
    auto_glb = s["glb_bw_Bps"] == "auto"
    if not auto_glb:
        axes["glb_bw_Bps"] = axis_values(s["glb_bw_Bps"], "glb_bw_Bps", integer=False)
    names = list(axes)
    n_cand = math.prod(len(axes[n]) for n in names)
    if n_cand > MAX_CANDIDATES:
        raise UserError(f"the axes give {n_cand:,} candidate archs, more than "
                        f"{MAX_CANDIDATES:,}", field="arch", fix="use fewer axis values")
    mesh = np.meshgrid(*[axes[n] for n in names], indexing="ij")
    cols = {n: m.ravel() for n, m in zip(names, mesh)}
    if s["square"]:
        keep = cols["tc_rows"] == cols["tc_cols"]
        cols = {n: v[keep] for n, v in cols.items()}
    if tie_lanes:
        cols["vc_lanes"] = cols["tc_cols"].copy()
    glb_bytes = np.round(cols.pop("glb_mib") * MiB)
    if np.any(glb_bytes < 1):
        raise UserError("GLB must be at least 1 byte", field="arch.glb_mib",
                        fix="give glb_mib values of at least 1 byte (1 / 1048576 MiB)")
    cols["glb_bytes"] = glb_bytes.astype(np.int64)
    if auto_glb:
        cols["glb_bw_Bps"] = auto_glb_bw_Bps(cols["n_tc"], cols["tc_rows"], cols["tc_cols"],
                                             cols["n_vc"], cols["vc_lanes"], cols["clock_hz"])
    df = pd.DataFrame({f: cols[f] for f in ID_FIELDS})
    for f in INT_FIELDS:
        df[f] = df[f].astype(np.int64)
    df["area_mm2"] = area_mm2(df.n_tc, df.tc_rows, df.tc_cols, df.n_vc, df.vc_lanes, df.glb_bytes)
    df["peak_flops"] = 2.0 * df.n_tc * df.tc_rows * df.tc_cols * df.clock_hz
    if filter_area:
        df = df[area_mask(df, s["area"])]
        if df.empty:
            raise UserError("no architecture left after the area filter", field="arch.area",
                            fix="widen the axes or lower arch.area.min_frac / raise a_max_mm2")
    df = df.reset_index(drop=True)
    df.insert(0, "arch_id", ids_of(df))
    return df[list(TABLE_COLUMNS)]


def area_mask(df: pd.DataFrame, area_spec: dict) -> np.ndarray:
    a_max = a_max_of(area_spec)
    frac = area_spec["min_frac"]
    if not _is_num(frac) or not 0 <= frac <= 1:
        raise UserError(f"must be in [0, 1], got {frac!r}", field="arch.area.min_frac",
                        fix="give a fraction between 0 and 1")
    mode = area_spec["keep_single_core"]
    if mode not in _KEEP_MODES:
        raise UserError(f"must be one of {_KEEP_MODES}, got {mode!r}", field="arch.area.keep_single_core",
                        fix=f"use one of {', '.join(_KEEP_MODES)}")
    a = df["area_mm2"].to_numpy()
    tol = 1e-9 * a_max
    under = a <= a_max + tol
    band = (a >= frac * a_max - tol) & under
    single = (df["n_tc"].to_numpy() == 1) | (df["n_vc"].to_numpy() == 1)
    if mode == "under_max":
        return band | (single & under)
    if mode == "all":
        return band | single
    return band


def ids_of(df: pd.DataFrame) -> list[str]:
    """arch_id of every row (same hash as phaze.hw.arch.arch_id_of, written for speed)."""
    cols = []
    for f in ID_FIELDS:
        v = df[f].to_numpy()
        cols.append([f"{f}={int(x)}" for x in v] if f in INT_FIELDS else [f"{f}={float(x):.12g}" for x in v])
    return [hashlib.sha1(";".join(p).encode()).hexdigest()[:16] for p in zip(*cols)]


def _pair(v, name):
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_num(x) for x in v):
        raise UserError(f"needs [lo, hi], got {v!r}", field=f"arch.{name}",
                        fix="give two numbers [lo, hi]")
    return v


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_pow2(v) -> bool:
    return float(v) == int(v) and int(v) > 0 and (int(v) & (int(v) - 1)) == 0


def read_grid(path) -> "pd.DataFrame":
    """An arch grid parquet (`phaze arch grid -o`), arch_id as str; UserError naming --grid
    when it is missing, unreadable or lacks the arch table's columns."""

    from phaze.hw.arch import TABLE_COLUMNS

    from phaze.files import read_parquet

    grid = read_parquet(path, "--grid", fix="run `phaze arch grid` first or check the path")
    missing = [c for c in TABLE_COLUMNS if c not in grid.columns]
    if missing:
        raise UserError(f"{path} lacks columns {missing}", field="--grid",
                        fix="regenerate it with `phaze arch grid`")
    grid["arch_id"] = grid["arch_id"].astype(str)
    return grid
