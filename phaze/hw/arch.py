"""Accelerator architecture (`Arch`), its network (`Network`) and the arch table.

An `Arch` is one chip: `n_tc` tensor cores (TC), each a `tc_rows x tc_cols` systolic MAC
array (rows = reduction depth K, columns = output width N), `n_vc` vector cores (VC) of
`vc_lanes` lanes, one global buffer (GLB) shared by all cores, HBM, and one clock.
All values are SI (bytes, bytes/s, Hz).

The arch table (what the grid, the scheduler and the cost model exchange) is a pandas
DataFrame with one row per arch and the columns of `TABLE_COLUMNS`; `arch_id` is a hex
hash of the cost-relevant parameters (`ID_FIELDS`), so an id never changes when the grid
around it changes. HBM capacity is NOT part of the id: it only enters the placement
DP's memory limit, never an operator latency or a schedule.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, asdict, field, replace

import numpy as np
import pandas as pd

from phaze.errors import UserError, unknown_field_fix
from phaze.hw.area import area_mm2
from phaze.units import BF16_BYTES

# Fields that determine every latency (and so the arch id), in hashing order.
ID_FIELDS = ("n_tc", "tc_rows", "tc_cols", "n_vc", "vc_lanes", "glb_bytes", "glb_bw_Bps",
             "hbm_bw_Bps", "clock_hz")
INT_FIELDS = ("n_tc", "tc_rows", "tc_cols", "n_vc", "vc_lanes", "glb_bytes")
TABLE_COLUMNS = ("arch_id",) + ID_FIELDS + ("area_mm2", "peak_flops")


def auto_glb_bw_Bps(n_tc, tc_rows, tc_cols, n_vc, vc_lanes, clock_hz, dtype_bytes=BF16_BYTES):
    """GLB bandwidth when not given: enough to feed every core at full rate each cycle.

    Per TC and cycle: a row of inputs (tc_rows) and a row of weights (tc_rows) in, a row
    of outputs (tc_cols) out; per VC lane and cycle: two operands in, one result out.
    Works on scalars and numpy arrays."""
    words = (np.asarray(n_tc) * (2 * np.asarray(tc_rows) + np.asarray(tc_cols))
             + 3 * np.asarray(n_vc) * np.asarray(vc_lanes))
    out = words * float(dtype_bytes) * np.asarray(clock_hz, dtype=float)
    return float(out) if np.ndim(out) == 0 else out


def arch_id_of(values: dict) -> str:
    """Stable 16-hex-digit id from the ID_FIELDS values (ints printed exactly, floats in
    repr with 12 significant digits so that 1.05e9 and 1050000000.0 hash the same)."""
    parts = []
    for f in ID_FIELDS:
        v = values[f]
        parts.append(f"{f}={int(v)}" if f in INT_FIELDS else f"{f}={float(v):.12g}")
    return hashlib.sha1(";".join(parts).encode()).hexdigest()[:16]


# An arch's "family": its ID_FIELDS without the on-chip buffer size. Archs of one family
# differ only in GLB size and often have identical layer ILPs (the cache key ignores arch
# ids), so the workflow puts a whole family into one scheduling chunk.
FAMILY_FIELDS = tuple(f for f in ID_FIELDS if f != "glb_bytes")


def family_id_of(values) -> str:
    """Stable 16-hex-digit id of an arch's family (FAMILY_FIELDS, hashed as arch_id_of)."""
    parts = []
    for f in FAMILY_FIELDS:
        v = values[f]
        parts.append(f"{f}={int(v)}" if f in INT_FIELDS else f"{f}={float(v):.12g}")
    return hashlib.sha1(";".join(parts).encode()).hexdigest()[:16]


def chunk_of(values, n_chunks: int) -> int:
    """Scheduling chunk of an arch (a mapping with the FAMILY_FIELDS, e.g. a grid row):
    int(family_id_of(values), 16) % n_chunks. Archs that differ only in GLB size share a
    chunk, so each job solves the ILPs they have in common once; adding archs never moves
    others."""
    if n_chunks < 1:
        raise UserError(f"must be >= 1, got {n_chunks}", field="n_chunks",
                        fix="give how many chunks the grid is split into, >= 1")
    return int(family_id_of(values), 16) % n_chunks


def grid_chunks(grid: pd.DataFrame, n_chunks: int) -> dict[str, int]:
    """{arch_id: chunk_of(row)} of every arch of an arch table."""
    cols = list(FAMILY_FIELDS)
    return {str(a): chunk_of(dict(zip(cols, vals)), n_chunks)
            for a, vals in zip(grid["arch_id"], grid[cols].itertuples(index=False))}


@dataclass(frozen=True)
class Network:
    """Devices grouped in nodes: a fast intra-node fabric (NVLink, ICI within a cube) and
    a slower inter-node one (InfiniBand, ...). Bandwidths are per device, per direction.

    Optional `levels`: the network as a hierarchy, innermost first, each level a tuple
    (devices, bw_Bps, latency_s): `devices` = devices in one group of that level (node,
    leaf/pod, spine: e.g. 8, 256, 0 where 0 = the whole cluster), bw/latency of a link
    that leaves the group below and stays in this one (per device, per direction). With
    levels, the two-level fields are level 0 (node) and level 1 (first switch level); they
    keep their meaning for every caller that only knows two levels."""

    devices_per_node: int = 8
    intra_bw_Bps: float = 300e9
    intra_latency_s: float = 2e-6
    inter_bw_Bps: float = 25e9
    inter_latency_s: float = 5e-6
    name: str = ""
    levels: tuple = ()

    def __post_init__(self):
        if self.levels:
            lv = _check_levels(self.levels)
            object.__setattr__(self, "levels", lv)
            object.__setattr__(self, "devices_per_node", lv[0][0])
            object.__setattr__(self, "intra_bw_Bps", lv[0][1])
            object.__setattr__(self, "intra_latency_s", lv[0][2])
            object.__setattr__(self, "inter_bw_Bps", lv[1][1])
            object.__setattr__(self, "inter_latency_s", lv[1][2])
        _check_pos_int(self.devices_per_node, "network.devices_per_node",
                       fix="give the accelerators per node (the fast-link group), an integer "
                           ">= 1: e.g. 8 for a DGX node, 64 for a TPUv4 cube")
        for f in ("intra_bw_Bps", "inter_bw_Bps"):
            _check_pos(getattr(self, f), f"network.{f}",
                       fix=f"give network.{f} in bytes/s per device, > 0 (e.g. 1.0e+11)")
        for f in ("intra_latency_s", "inter_latency_s"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise UserError(f"must be a number >= 0, got {v!r}", field=f"network.{f}",
                                fix=f"give network.{f} in seconds, >= 0 (e.g. 2.0e-06)")

    def level_list(self) -> tuple:
        """(devices per group, bw B/s, latency s) per level, innermost first; the last
        level's group is the whole cluster (devices 0). Two-level networks: node, cluster."""
        if self.levels:
            return self.levels
        return ((self.devices_per_node, self.intra_bw_Bps, self.intra_latency_s),
                (0, self.inter_bw_Bps, self.inter_latency_s))

    def level_of(self, span: int) -> int:
        """Index of the innermost level whose group holds `span` consecutive devices
        (aligned, as Megatron's rank blocks are)."""
        for i, (g, _bw, _lat) in enumerate(self.level_list()):
            if g == 0 or span <= g:
                return i
        return len(self.level_list()) - 1

    def group_levels(self, group_size: int, stride: int = 1) -> list[tuple[int, float, float]]:
        """Fan-out per level of a group of `group_size` devices `stride` apart in rank order:
        [(members of one level-i group / members of one level-(i-1) group, bw, lat), ...]
        for the levels the group spans (fan-out 1 levels left out)."""
        out, below = [], 1
        for g, bw, lat in self.level_list():
            inside = group_size if g == 0 else max(1, min(group_size, g // stride))
            inside = max(inside, below)
            if inside > below:
                out.append((inside // below, bw, lat))
            below = inside
            if below >= group_size:
                break
        return out

    def fits_in_node(self, group_size: int, stride: int = 1) -> bool:
        """True if a group of `group_size` devices, `stride` apart in device order, lies
        inside one node (e.g. a TP group of t consecutive devices: stride 1)."""
        return group_size * stride <= self.devices_per_node

    def link(self, group_size: int, stride: int = 1) -> tuple[float, float, str]:
        """(bandwidth B/s, latency s, 'intra'|'inter') of the slowest link the group uses."""
        if self.fits_in_node(group_size, stride):
            return self.intra_bw_Bps, self.intra_latency_s, "intra"
        if self.levels:
            _g, bw, lat = self.level_list()[self.level_of(group_size * stride)]
            return bw, lat, "inter"
        return self.inter_bw_Bps, self.inter_latency_s, "inter"

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.levels:
            d.pop("levels")
        else:
            d["levels"] = [list(x) for x in self.levels]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Network":
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            bad = sorted(extra)[0]
            raise UserError("unknown key", field=f"network.{bad}",
                            fix=unknown_field_fix(bad, known, "network"))
        return cls(**d)


def _check_levels(levels) -> tuple:
    """Levels as ((devices, bw_Bps, latency_s), ...): at least 2, group sizes growing and
    each a multiple of the one below (0 = the whole cluster, last level only)."""
    f = "network.levels"
    if not isinstance(levels, (list, tuple)) or len(levels) < 2:
        raise UserError("must be a list of at least 2 levels", field=f,
                        fix="e.g. [[8, 450e9, 3e-6], [256, 50e9, 6e-6], [0, 25e9, 1e-5]]")
    out, prev = [], 1
    for k, lv in enumerate(levels):
        if isinstance(lv, dict):
            try:
                lv = (lv["devices"], lv["bw_Bps"], lv["latency_s"])
            except KeyError as e:
                raise UserError(f"level {k} lacks {e}", field=f,
                                fix="give devices, bw_Bps and latency_s") from None
        if not isinstance(lv, (list, tuple)) or len(lv) != 3:
            raise UserError(f"level {k} must be [devices, bw_Bps, latency_s]", field=f,
                            fix="give each level as [devices, bw_Bps, latency_s]")
        g, bw, lat = lv
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise UserError(f"level {k}: devices must be an integer >= 0, got {g!r}", field=f,
                            fix="give devices as an integer >= 0 (0: the whole cluster, last level only)")
        _check_pos(bw, f"{f}[{k}].bw_Bps")
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not (
                lat >= 0 and math.isfinite(lat)):
            raise UserError(f"level {k}: latency must be a number >= 0, got {lat!r}", field=f,
                            fix="give latency_s as a finite number >= 0")
        if g == 0 and k != len(levels) - 1:
            raise UserError(f"level {k}: devices 0 (whole cluster) only on the last level",
                            field=f, fix="give this level a device count; 0 only on the last level")
        if g != 0 and (g % prev or g <= prev and k > 0):
            raise UserError(f"level {k}: {g} devices is not a multiple > {prev} of the level "
                            "below", field=f,
                            fix=f"give level {k} a multiple of {prev} devices, more than {prev}")
        if k == 0 and g < 1:
            raise UserError("level 0 (node) needs devices >= 1", field=f,
                            fix="give level 0 at least 1 device")
        out.append((int(g), float(bw), float(lat)))
        prev = max(g, 1)
    return tuple(out)


@dataclass(frozen=True)
class Arch:
    n_tc: int
    tc_rows: int
    tc_cols: int
    n_vc: int
    vc_lanes: int
    glb_bytes: int
    clock_hz: float
    hbm_bw_Bps: float
    glb_bw_Bps: float = 0.0          # 0 -> auto_glb_bw_Bps
    hbm_bytes: float = 32 * 1024**3  # DP-only (memory limit), not part of arch_id
    network: Network = field(default_factory=Network)
    name: str = ""

    def __post_init__(self):
        for f in INT_FIELDS:
            _check_pos_int(getattr(self, f), f)
        for f in ("clock_hz", "hbm_bw_Bps", "hbm_bytes"):
            _check_pos(getattr(self, f), f)
        if self.glb_bw_Bps == 0:
            object.__setattr__(self, "glb_bw_Bps", auto_glb_bw_Bps(
                self.n_tc, self.tc_rows, self.tc_cols, self.n_vc, self.vc_lanes, self.clock_hz))
        _check_pos(self.glb_bw_Bps, "glb_bw_Bps")

    @property
    def arch_id(self) -> str:
        return arch_id_of(asdict(self))

    @property
    def macs(self) -> int:
        return self.n_tc * self.tc_rows * self.tc_cols

    @property
    def peak_flops(self) -> float:
        """Peak tensor FLOP/s: 2 FLOP per MAC per cycle on every TC."""
        return 2.0 * self.macs * self.clock_hz

    @property
    def vector_peak_ops(self) -> float:
        return float(self.n_vc * self.vc_lanes) * self.clock_hz

    @property
    def area_mm2(self) -> float:
        return area_mm2(self.n_tc, self.tc_rows, self.tc_cols, self.n_vc, self.vc_lanes, self.glb_bytes)

    def with_(self, **kw) -> "Arch":
        return replace(self, **kw)

    def row(self) -> dict:
        d = {f: getattr(self, f) for f in ID_FIELDS}
        d["arch_id"] = self.arch_id
        d["area_mm2"] = self.area_mm2
        d["peak_flops"] = self.peak_flops
        return {c: d[c] for c in TABLE_COLUMNS}

    def to_dict(self) -> dict:
        d = self.row()
        d.update(name=self.name, hbm_bytes=self.hbm_bytes, network=self.network.to_dict(),
                 vector_peak_ops=self.vector_peak_ops)
        return d


def arch_table(archs) -> pd.DataFrame:
    """DataFrame with TABLE_COLUMNS from an Arch, a list of Archs or an existing table."""
    if isinstance(archs, pd.DataFrame):
        missing = [c for c in ID_FIELDS if c not in archs.columns]
        if missing:
            raise UserError(f"arch table lacks columns {missing}", field="grid",
                            fix="give a grid written by `phaze arch grid`")
        return archs
    if isinstance(archs, Arch):
        archs = [archs]
    return pd.DataFrame([a.row() for a in archs], columns=list(TABLE_COLUMNS))


def table_arrays(archs) -> dict[str, np.ndarray]:
    """Numpy float arrays (one entry per arch) of the ID_FIELDS, for the cost model."""
    df = arch_table(archs)
    return {f: df[f].to_numpy(dtype=float) for f in ID_FIELDS}


def arch_from_row(row, network: Network | None = None, hbm_bytes: float | None = None) -> Arch:
    """An Arch from one table row (a dict or pandas Series)."""
    kw = {f: (int(row[f]) if f in INT_FIELDS else float(row[f])) for f in ID_FIELDS}
    if network is not None:
        kw["network"] = network
    if hbm_bytes is not None:
        kw["hbm_bytes"] = hbm_bytes
    return Arch(**kw)


def _check_pos_int(v, field_name, fix=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise UserError(f"must be a positive integer, got {v!r}", field=field_name,
                        fix=fix or f"give {field_name} as an integer >= 1")


def _check_pos(v, field_name, fix=None):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or v <= 0:
        raise UserError(f"must be a positive number, got {v!r}", field=field_name,
                        fix=fix or f"give {field_name} as a finite number > 0")
