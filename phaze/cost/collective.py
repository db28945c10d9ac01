"""Collectives and point-to-point transfers: alpha-beta ring models on the right link.

A group of g devices, `stride` apart in device order, uses the intra-node link when it
fits in one node (Network.fits_in_node) and otherwise the inter-node link (the slowest
link of a ring bounds it). With alpha = link latency, beta = 1 / (link bandwidth *
CostParams.link_bw_efficiency) and S = the full tensor bytes per device:
  all-reduce      2 (g-1) alpha + 2 (g-1)/g S beta   (ring reduce-scatter + all-gather)
  reduce-scatter    (g-1) alpha +   (g-1)/g S beta
  all-gather        (g-1) alpha +   (g-1)/g S beta
  send/recv               alpha +           S beta   (pipeline-stage boundary)
A group of 1 costs 0. Data-parallel gradient all-reduce: all_reduce over d devices with
stride t * p (replicas of one shard sit t * p devices apart).
"""

from __future__ import annotations

from phaze.cost.params import CostParams
from phaze.errors import UserError
from phaze.hw.arch import Network

_STEPS = {"all_reduce": 2.0, "reduce_scatter": 1.0, "all_gather": 1.0}


def collective_s(kind: str, nbytes: float, group_size: int, network: Network,
                 params: CostParams | None = None, stride: int = 1) -> float:
    params = params or CostParams()
    if kind not in _STEPS:
        raise UserError(f"unknown collective {kind!r}", field="collective",
                        fix=f"use one of {sorted(_STEPS)}")
    if group_size < 1 or nbytes < 0:
        raise UserError(f"needs group_size >= 1 and bytes >= 0, got {group_size}, {nbytes}",
                        field="collective")
    if group_size == 1:
        return 0.0
    bw, alpha, _ = network.link(group_size, stride)
    g = float(group_size)
    steps = _STEPS[kind]
    return steps * (g - 1) * alpha + steps * (g - 1) / g * nbytes / (bw * params.link_bw_efficiency)


def send_recv_s(nbytes: float, network: Network, params: CostParams | None = None,
                same_node: bool = False) -> float:
    params = params or CostParams()
    if nbytes < 0:
        raise UserError(f"bytes must be >= 0, got {nbytes}", field="send_recv")
    if nbytes == 0:
        return 0.0
    bw, alpha = ((network.intra_bw_Bps, network.intra_latency_s) if same_node
                 else (network.inter_bw_Bps, network.inter_latency_s))
    return alpha + nbytes / (bw * params.link_bw_efficiency)


def dp_allreduce_s(grad_bytes: float, d: int, network: Network, tp: int = 1, pp: int = 1,
                   params: CostParams | None = None) -> float:
    """Gradient all-reduce across d data-parallel replicas (each holding grad_bytes)."""
    return collective_s("all_reduce", grad_bytes, d, network, params, stride=tp * pp)
