"""Vector-op latency on VC lanes (vectorised with numpy).

compute = ceil(elements / (lanes * cores)) * cycles_per_element(class) / clock, against a
memory roofline: the op's bytes read + written (default: one input and one output
element each) through the GLB and from HBM. One VC gets 1/n_vc of the chip's GLB and HBM
bandwidth under CostParams.one_core_bw_share == "fair"; all VCs get all of it.
"""

from __future__ import annotations

import numpy as np

from phaze.cost.gemm import roofline
from phaze.cost.params import CostParams


def vector_cycles(elements, lanes, n_cores, cpe):
    elements, lanes, n_cores, cpe = (np.asarray(x, dtype=float) for x in (elements, lanes, n_cores, cpe))
    return np.ceil(elements / (lanes * n_cores)) * cpe


def vector_latency(a: dict, elements, cpe, bytes_moved, params: CostParams):
    """`a`: arch arrays (n_arch, 1); elements, cpe, bytes_moved: (1, n_op).
    Returns (lat_one_s, lat_all_s, bound_one, bound_all)."""
    hz = a["clock_hz"] * params.compute_efficiency * params.sustained_clock_fraction
    glb_bw = a["glb_bw_Bps"] * params.glb_bw_efficiency
    hbm_bw = a["hbm_bw_Bps"] * params.hbm_bw_efficiency
    share = 1.0 / a["n_vc"] if params.one_core_bw_share == "fair" else 1.0
    one = roofline(vector_cycles(elements, a["vc_lanes"], 1, cpe) / hz,
                   bytes_moved / (glb_bw * share), bytes_moved / (hbm_bw * share))
    alls = roofline(vector_cycles(elements, a["vc_lanes"], a["n_vc"], cpe) / hz,
                    bytes_moved / glb_bw, bytes_moved / hbm_bw)
    return one[0], alls[0], one[1], alls[1]
