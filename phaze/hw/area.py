"""Chip area model (the one place where area coefficients live).

Coefficients are the ones recovered from PHAZE's published config list (22 nm
Accelergy/CACTI tables; see docs/reference.md#arch-space):

- tensor core (TC): 0.79 mm^2 per 1000 MACs (register file and local buffer included,
  one 128x128 core ~12.9 mm^2);
- vector core (VC): a 128-lane VC ~0.106 mm^2 and a 16-lane VC ~0.018 mm^2; we fit the
  affine law  area = VC_FIXED_MM2 + VC_LANE_MM2 * lanes  through those two points;
- global buffer (GLB) SRAM: 1.365 mm^2 per MiB.

chip area = TC area + VC area + GLB area (HBM PHYs, NoC and I/O are not counted, as in
the reference). The TPUv4-like chip (8 x 128x128 TCs, 2 x 128-lane VCs, 128 MiB GLB)
comes out at 278.5 mm^2 against the published 278.8 mm^2 (-0.13 %).
"""

from __future__ import annotations

import numpy as np

from phaze.units import MiB

TC_MM2_PER_MAC = 0.79e-3
VC_LANE_MM2 = (0.106 - 0.018) / (128 - 16)
VC_FIXED_MM2 = 0.018 - 16 * VC_LANE_MM2
GLB_MM2_PER_MIB = 1.365

# Published A_max (area of the TPUv4-like chip), used as the default area budget.
TPUV4_LIKE_AREA_MM2 = 278.8


def area_mm2(n_tc, tc_rows, tc_cols, n_vc, vc_lanes, glb_bytes):
    """Chip area in mm^2; every argument may be a scalar or a numpy array (broadcast)."""
    n_tc = np.asarray(n_tc, dtype=float)
    macs = n_tc * np.asarray(tc_rows, dtype=float) * np.asarray(tc_cols, dtype=float)
    tc = macs * TC_MM2_PER_MAC
    vc = np.asarray(n_vc, dtype=float) * (VC_FIXED_MM2 + VC_LANE_MM2 * np.asarray(vc_lanes, dtype=float))
    glb = np.asarray(glb_bytes, dtype=float) / MiB * GLB_MM2_PER_MIB
    out = tc + vc + glb
    return float(out) if out.ndim == 0 else out


def area_breakdown_mm2(n_tc, tc_rows, tc_cols, n_vc, vc_lanes, glb_bytes) -> dict:
    """Scalar breakdown (tc, vc, glb, total) for one chip, for `phaze arch show`."""
    tc = n_tc * tc_rows * tc_cols * TC_MM2_PER_MAC
    vc = n_vc * (VC_FIXED_MM2 + VC_LANE_MM2 * vc_lanes)
    glb = glb_bytes / MiB * GLB_MM2_PER_MIB
    return {"tc_mm2": tc, "vc_mm2": vc, "glb_mm2": glb, "area_mm2": tc + vc + glb}
