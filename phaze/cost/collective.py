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

import math

from phaze.cost.params import CostParams
from phaze.errors import UserError
from phaze.hw.arch import Network

_STEPS = {"all_reduce": 2.0, "reduce_scatter": 1.0, "all_gather": 1.0, "all_to_all": 1.0}


def collective_s(kind: str, nbytes: float, group_size: int, network: Network,
                 params: CostParams | None = None, stride: int = 1) -> float:
    params = params or CostParams()
    if kind not in _STEPS:
        raise UserError(f"unknown collective {kind!r}", field="collective",
                        fix=f"use one of {sorted(_STEPS)}")
    if group_size < 1 or nbytes < 0:
        raise UserError(f"needs group_size >= 1 and bytes >= 0, got {group_size}, {nbytes}",
                        field="collective", fix="give group_size >= 1 and bytes >= 0")
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
        raise UserError(f"bytes must be >= 0, got {nbytes}", field="send_recv",
                        fix="give bytes >= 0")
    if nbytes == 0:
        return 0.0
    bw, alpha = ((network.intra_bw_Bps, network.intra_latency_s) if same_node
                 else (network.inter_bw_Bps, network.inter_latency_s))
    return alpha + nbytes / (bw * params.link_bw_efficiency)


def dp_allreduce_s(grad_bytes: float, d: int, network: Network, tp: int = 1, pp: int = 1,
                   params: CostParams | None = None) -> float:
    """Gradient all-reduce across d data-parallel replicas (each holding grad_bytes)."""
    return collective_s("all_reduce", grad_bytes, d, network, params, stride=tp * pp)


# ---------------------------------------------------------------------------------------
# Collectives on real GPU clusters (NCCL on NVLink/NVSwitch nodes with one NIC per GPU).
#
# One module for every caller (the GPU-preset Megatron model, placement, later a multi-level
# network DP): `collective_time(kind, nbytes, group_size, stride, network, ...)` and the
# wrappers allreduce_time / reduce_scatter_time / all_gather_time.
#
# Definitions (NCCL, nccl-tests doc/PERFORMANCE.md): algbw = S / t; busbw = algbw x factor,
# factor = 2 (n-1)/n for all-reduce and (n-1)/n for all-gather / reduce-scatter (S = the
# full tensor; for all-gather the gathered result), 1 for send/recv and broadcast. busbw is
# the per-device link rate a bandwidth-optimal algorithm needs, hence
#     t = factor x S / busbw + latency.
# Placement: a group of g devices `stride` apart in rank order (Megatron: tp innermost, then
# cp, dp, pp: a TP group has stride 1, CP stride t, DP stride t c, PP stride t c d) has
#     n_local = min(g, devices_per_node // stride) members per node (1 when stride >= node)
#     n_nodes = ceil(g / n_local) nodes.
# Bus bandwidth: inside one node the NVLink/NVSwitch rate; across nodes NCCL spreads its
# rings/trees over the NICs of the n_local members (rail-optimised fabric: one NIC per GPU,
# per-device `inter_bw_Bps`), so busbw = min(NVLink, n_local x NIC) (the node's NICs are
# shared by the other groups of the same kind running at the same time, so a group never
# gets more than its members' own NICs). Both times Links/CostParams efficiency.
# All-to-all across nodes is no ring: the (g - n_local) / g of a device's buffer bound for
# other nodes leaves through its own NIC (n_local x NIC is a ring's busbw, not this one's),
# the rest over NVLink, summed as on a levelled network (hierarchical_coeffs).
# Latency (alpha per step): ring 2(g-1) steps for all-reduce (g-1 for AG/RS), each at the
# inter-node latency when the ring leaves the node; NCCL's tree (all-reduce only, inter-node
# double binary tree + intra-node chain): 2 (log2(n_nodes) alpha_inter + (n_local-1)
# alpha_intra), bandwidth term 2 S / busbw (no (n-1)/n saving). algo="auto" takes the faster
# of the two, as NCCL's tuner does by message size (tree for small messages on many nodes,
# ring for large ones).
# Precision: `nbytes` counts elements of `src_dtype_bytes`; `dtype_bytes` (e.g. 4 for fp32
# gradient reduction, 2 for bf16) rescales the payload.
# topology="flat" is the older model above (one ring on the slowest link, one NIC).
# ---------------------------------------------------------------------------------------

BUS_FACTOR = {"all_reduce": lambda n: 2.0 * (n - 1) / n,
              "all_to_all": lambda n: (n - 1) / n,
              "reduce_scatter": lambda n: (n - 1) / n,
              "all_gather": lambda n: (n - 1) / n,
              "send_recv": lambda n: 1.0, "broadcast": lambda n: 1.0}
TOPOLOGIES = ("flat", "nccl")
ALGOS = ("auto", "ring", "tree")


def bus_factor(kind: str, n: int) -> float:
    """NCCL's busbw / algbw factor of a collective over n devices."""
    if kind not in BUS_FACTOR:
        raise UserError(f"unknown collective {kind!r}", field="collective",
                        fix=f"use one of {sorted(BUS_FACTOR)}")
    return BUS_FACTOR[kind](float(n)) if n > 1 else 0.0


def group_layout(group_size: int, stride: int, devices_per_node: int) -> tuple[int, int]:
    """(members per node, nodes) of a group of `group_size` devices `stride` apart."""
    if group_size < 1 or stride < 1:
        raise UserError(f"needs group_size, stride >= 1, got {group_size}, {stride}",
                        field="collective", fix="give group_size >= 1 and stride >= 1")
    n_local = 1 if stride >= devices_per_node else max(1, min(group_size, devices_per_node // stride))
    return n_local, -(-group_size // n_local)


def bus_bandwidth(group_size: int, stride: int, network, bw_efficiency: float = 1.0) -> float:
    """Achieved bus bandwidth (B/s) of a group on `network` (see above)."""
    n_local, n_nodes = group_layout(group_size, stride, network.devices_per_node)
    if n_nodes == 1:
        return network.intra_bw_Bps * bw_efficiency
    return min(network.intra_bw_Bps, n_local * network.inter_bw_Bps) * bw_efficiency


def collective_time(kind: str, nbytes: float, group_size: int, stride: int = 1, network=None, *,
                    dtype_bytes: float | None = None, src_dtype_bytes: float = 2.0,
                    bw_efficiency: float | None = None, params: CostParams | None = None,
                    algo: str = "auto", topology: str = "nccl") -> float:
    """Seconds of one collective of `nbytes` (full tensor per device) over a group. `network`:
    anything with devices_per_node, intra/inter_bw_Bps and intra/inter_latency_s (Network,
    phaze.place.plan.Links). Efficiency: `bw_efficiency`, else params.link_bw_efficiency,
    else network.bw_efficiency when it has one, else 1."""
    if network is None:
        network = Network()
    if topology not in TOPOLOGIES:
        raise UserError(f"unknown topology {topology!r}", field="topology", fix=f"use one of {TOPOLOGIES}")
    if algo not in ALGOS:
        raise UserError(f"unknown algorithm {algo!r}", field="algo", fix=f"use one of {ALGOS}")
    if nbytes < 0:
        raise UserError(f"bytes must be >= 0, got {nbytes}", field="collective",
                        fix="give bytes >= 0")
    factor = bus_factor(kind, group_size)
    if group_size == 1 or nbytes == 0:
        return 0.0
    if bw_efficiency is None:
        bw_efficiency = (params.link_bw_efficiency if params is not None
                         else getattr(network, "bw_efficiency", 1.0))
    S = float(nbytes) * ((dtype_bytes / src_dtype_bytes) if dtype_bytes else 1.0)
    if topology == "nccl" and getattr(network, "levels", ()):
        a, b = hierarchical_coeffs(kind, group_size, stride, network, bw_efficiency)
        return a * S + b
    dpn = network.devices_per_node
    n_local, n_nodes = group_layout(group_size, stride, dpn)
    if topology == "flat":
        inter = n_nodes > 1
        bw = (network.inter_bw_Bps if inter else network.intra_bw_Bps) * bw_efficiency
        alpha = network.inter_latency_s if inter else network.intra_latency_s
        steps = 2.0 if kind == "all_reduce" else 1.0
        if kind in ("send_recv", "broadcast"):
            return alpha + S / bw
        return steps * (group_size - 1) * alpha + factor * S / bw
    if kind == "all_to_all" and n_nodes > 1:
        # not a ring: every member sends S / g to each other member at once, so what leaves
        # the node goes through the sender's own NIC (rail-optimised, one NIC per GPU) and
        # what stays goes over NVLink: the levelled formula of hierarchical_coeffs on the
        # two levels node / network (nccl-tests alltoall: busbw = algbw (g-1)/g)
        intra = S * (n_local - 1) / group_size / (network.intra_bw_Bps * bw_efficiency)
        inter = S * (group_size - n_local) / group_size / (network.inter_bw_Bps * bw_efficiency)
        return (intra + inter + (n_local - 1) * network.intra_latency_s
                + (n_nodes - 1) * network.inter_latency_s)
    busbw = bus_bandwidth(group_size, stride, network, bw_efficiency)
    a_ring = network.inter_latency_s if n_nodes > 1 else network.intra_latency_s
    if kind in ("send_recv", "broadcast"):
        return a_ring + S / busbw
    steps = 2.0 if kind == "all_reduce" else 1.0
    ring = steps * (group_size - 1) * a_ring + factor * S / busbw
    if kind != "all_reduce" or n_nodes == 1 or algo == "ring":
        return ring
    tree = (2.0 * (math.log2(n_nodes) * network.inter_latency_s
                   + (n_local - 1) * network.intra_latency_s) + 2.0 * S / busbw)
    return tree if algo == "tree" else min(ring, tree)


# ---------------------------------------------------------------------------------------
# Multi-level networks (Network.levels: node, leaf/pod, spine, ...). A group of g devices
# `stride` apart fans out k_i ways at level i (Network.group_levels); hierarchical
# collectives (the 2D/hierarchical ring of Jia et al. 2018, "Highly scalable deep learning
# training system with mixed-precision", and NCCL's intra-node-then-inter-node rings): an
# all-reduce reduce-scatters inside the innermost groups, all-reduces the 1/n-th shards one
# level up, and so on, then all-gathers back down. With D_i = S / (k_0 ... k_{i-1}) the data
# a device still carries at level i:
#   all-reduce      sum_i 2 (k_i-1)/k_i D_i / bw_i + 2 (k_i-1) lat_i
#   reduce-scatter / all-gather: half of it
#   all-to-all (S = a device's whole send buffer, S/g to each member): the share that
#     leaves a level-(i-1) group but stays in the level-i group crosses level i:
#                   sum_i S (n_i - n_{i-1}) / g / bw_i + (k_i - 1) lat_i,  n_i = k_0 ... k_i
#   send/recv: latency + S / bw of the level holding both ends.
# Every term is linear in S: hierarchical_coeffs returns (seconds per byte, seconds).
# ---------------------------------------------------------------------------------------

def hierarchical_coeffs(kind: str, group_size: int, stride: int, network,
                        bw_efficiency: float = 1.0) -> tuple[float, float]:
    """(seconds per byte of S, constant seconds) of a collective on a levelled network."""
    if group_size <= 1:
        return 0.0, 0.0
    fan = network.group_levels(group_size, stride)
    per_byte, const, below = 0.0, 0.0, 1
    for k, bw, lat in fan:
        bw = bw * bw_efficiency
        if kind == "all_reduce":
            per_byte += 2.0 * (k - 1) / k / below / bw
            const += 2.0 * (k - 1) * lat
        elif kind in ("reduce_scatter", "all_gather"):
            per_byte += (k - 1) / k / below / bw
            const += (k - 1) * lat
        elif kind == "all_to_all":
            per_byte += (below * k - below) / group_size / bw
            const += (k - 1) * lat
        elif kind in ("send_recv", "broadcast"):
            per_byte, const = 1.0 / bw, lat        # the outermost level crossed
        else:
            raise UserError(f"unknown collective {kind!r}", field="collective",
                            fix=f"use one of {sorted(BUS_FACTOR)}")
        below *= k
    return per_byte, const


def allreduce_time(nbytes: float, group_size: int, stride: int = 1, network=None, **kw) -> float:
    """All-reduce of `nbytes` per device over `group_size` devices `stride` apart."""
    return collective_time("all_reduce", nbytes, group_size, stride, network, **kw)


def reduce_scatter_time(nbytes: float, group_size: int, stride: int = 1, network=None, **kw) -> float:
    return collective_time("reduce_scatter", nbytes, group_size, stride, network, **kw)


def all_gather_time(nbytes: float, group_size: int, stride: int = 1, network=None, **kw) -> float:
    return collective_time("all_gather", nbytes, group_size, stride, network, **kw)


def expected_nodes_hit(experts: int, top_k: int, nodes: int) -> float:
    """Expected number of the `nodes` nodes of an EP group holding at least one of a token's
    top_k experts, the experts spread evenly (experts / nodes per node) and routing uniform
    (what the balanced benchmarks force): nodes x (1 - C(E - E/N, k) / C(E, k))."""
    if nodes <= 1:
        return 1.0
    per = experts / nodes
    if top_k > experts - per:
        return float(nodes)
    miss = 1.0
    for i in range(top_k):               # C(E - E/N, k) / C(E, k) as a product
        miss *= (experts - per - i) / (experts - i)
    return nodes * (1.0 - miss)


def dedup_dispatch_time(slot_bytes: float, ep: int, stride: int, network, experts: int,
                        top_k: int, bw_efficiency: float = 1.0) -> float:
    """Seconds of one token dispatch (or combine) of Megatron-Core's flex dispatcher (DeepEP /
    HybridEP backends; DeepSeek-AI 2025, DeepEP README "internode" kernels): a token goes
    once over the network to each remote node holding some of its experts (to the GPU of
    the same local rank there) and is forwarded over NVLink to the experts' GPUs, where
    the plain all-to-all sends one copy per routed slot. `slot_bytes`: the device's routed
    slots (T_s top_k h bytes, what the all-to-all sends); the EP group of `ep` devices
    `stride` apart spans N nodes of n_local members. Network bytes per device:
    slot_bytes / top_k x the remote nodes hit, (N - 1) / N x `expected_nodes_hit`; NVLink:
    the slots for the own node's other members plus the forwarding of what arrives,
    slot_bytes (n_local - 1) / ep + slot_bytes (ep - n_local) / ep (n_local - 1) / n_local,
    pipelined with the network sends (the slower of the two counts). Inside one node it is
    the all-to-all."""
    if ep <= 1 or slot_bytes <= 0:
        return 0.0
    if getattr(network, "levels", ()):
        dpn, (_g, intra, a_in), (_g2, inter, a_out) = (network.levels[0][0], network.levels[0],
                                                        network.levels[1])
    else:
        dpn, intra, a_in, inter, a_out = (network.devices_per_node, network.intra_bw_Bps,
                                          network.intra_latency_s, network.inter_bw_Bps,
                                          network.inter_latency_s)
    n_local, n_nodes = group_layout(ep, stride, dpn)
    if n_nodes == 1:
        return collective_time("all_to_all", slot_bytes, ep, stride, network,
                               src_dtype_bytes=1.0, bw_efficiency=bw_efficiency)
    # of the nodes hit, the token's own is one of N alike: the N - 1 others cross the network
    remote = (n_nodes - 1) / n_nodes * expected_nodes_hit(experts, top_k, n_nodes)
    net_bytes = slot_bytes / top_k * remote
    nvl_bytes = slot_bytes * ((n_local - 1) / ep + (ep - n_local) / ep * (n_local - 1) / n_local)
    # the network sends and the NVLink forwarding are pipelined (DeepEP's dispatch kernels
    # forward one chunk while the next arrives): the slower of the two
    return (max(net_bytes / (inter * bw_efficiency), nvl_bytes / (intra * bw_efficiency))
            + (n_local - 1) * a_in + (n_nodes - 1) * a_out)
