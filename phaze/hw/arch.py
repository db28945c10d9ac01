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

from phaze.errors import UserError
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


def chunk_of(arch_id: str, n_chunks: int) -> int:
    """Chunk of an arch: int(arch_id, 16) % n_chunks (adding archs never moves others)."""
    if n_chunks < 1:
        raise UserError(f"must be >= 1, got {n_chunks}", field="n_chunks")
    return int(arch_id, 16) % n_chunks


@dataclass(frozen=True)
class Network:
    """Devices grouped in nodes: a fast intra-node fabric (NVLink, ICI within a cube) and
    a slower inter-node one (InfiniBand, ...). Bandwidths are per device, per direction."""

    devices_per_node: int = 8
    intra_bw_Bps: float = 300e9
    intra_latency_s: float = 2e-6
    inter_bw_Bps: float = 25e9
    inter_latency_s: float = 5e-6
    name: str = ""

    def __post_init__(self):
        _check_pos_int(self.devices_per_node, "network.devices_per_node")
        for f in ("intra_bw_Bps", "inter_bw_Bps"):
            _check_pos(getattr(self, f), f"network.{f}")
        for f in ("intra_latency_s", "inter_latency_s"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise UserError(f"must be a number >= 0, got {v!r}", field=f"network.{f}")

    def fits_in_node(self, group_size: int, stride: int = 1) -> bool:
        """True if a group of `group_size` devices, `stride` apart in device order, lies
        inside one node (e.g. a TP group of t consecutive devices: stride 1)."""
        return group_size * stride <= self.devices_per_node

    def link(self, group_size: int, stride: int = 1) -> tuple[float, float, str]:
        """(bandwidth B/s, latency s, 'intra'|'inter') of the slowest link the group uses."""
        if self.fits_in_node(group_size, stride):
            return self.intra_bw_Bps, self.intra_latency_s, "intra"
        return self.inter_bw_Bps, self.inter_latency_s, "inter"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Network":
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise UserError(f"unknown keys {sorted(extra)}", field="network",
                            fix=f"use only {sorted(known)}")
        return cls(**d)


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
            raise UserError(f"arch table lacks columns {missing}", field="grid")
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


def _check_pos_int(v, field_name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise UserError(f"must be a positive integer, got {v!r}", field=field_name)


def _check_pos(v, field_name):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or v <= 0:
        raise UserError(f"must be a positive number, got {v!r}", field=field_name)
