"""Issue 16 terms, each against a closed form or a published figure."""

import math

import pytest

from phaze.cost.collective import (all_gather_time, allreduce_time, bus_bandwidth, bus_factor,
                                   collective_s, collective_time, group_layout,
                                   reduce_scatter_time)
from phaze.cost.params import CostParams
from phaze.hw.arch import Network
from phaze.hw.presets import NETWORKS

A100 = NETWORKS["dgx-a100"]
H100 = NETWORKS["dgx-h100"]


def test_nccl_bus_factors():
    # nccl-tests doc/PERFORMANCE.md: busbw = algbw * 2(n-1)/n (all-reduce), (n-1)/n (AG/RS)
    for n in (2, 8, 64):
        assert bus_factor("all_reduce", n) == pytest.approx(2 * (n - 1) / n)
        assert bus_factor("all_gather", n) == pytest.approx((n - 1) / n)
        assert bus_factor("reduce_scatter", n) == pytest.approx((n - 1) / n)
    assert bus_factor("all_reduce", 1) == 0.0


def test_group_layout_megatron_rank_order():
    assert group_layout(8, 1, 8) == (8, 1)      # TP 8 in a node
    assert group_layout(16, 1, 8) == (8, 2)     # TP 16 spans two nodes
    assert group_layout(32, 8, 8) == (1, 32)    # DP with t = 8: one member per node
    assert group_layout(32, 2, 8) == (4, 8)     # DP with t = 2
    assert group_layout(4, 2, 8) == (4, 1)


def test_intra_node_equals_the_flat_ring():
    S = 256e6
    for g in (2, 4, 8):
        assert collective_time("all_reduce", S, g, 1, A100, bw_efficiency=0.8) == \
            pytest.approx(collective_s("all_reduce", S, g, A100, CostParams(link_bw_efficiency=0.8)))


def test_closed_forms_across_nodes():
    S, g = 1e9, 16
    bw = min(A100.intra_bw_Bps, 8 * A100.inter_bw_Bps)
    ring = 2 * (g - 1) * A100.inter_latency_s + 2 * (g - 1) / g * S / bw
    tree = 2 * (math.log2(2) * A100.inter_latency_s + 7 * A100.intra_latency_s) + 2 * S / bw
    assert allreduce_time(S, g, 1, A100, algo="ring", src_dtype_bytes=1) == pytest.approx(ring)
    assert allreduce_time(S, g, 1, A100, algo="tree", src_dtype_bytes=1) == pytest.approx(tree)
    assert allreduce_time(S, g, 1, A100, src_dtype_bytes=1) == pytest.approx(min(ring, tree))
    rs = reduce_scatter_time(S, g, 1, A100)
    assert rs == pytest.approx((g - 1) * A100.inter_latency_s + (g - 1) / g * S / bw)
    assert all_gather_time(S, g, 1, A100) == pytest.approx(rs)
    # precision: fp32 reduction of a bf16-counted payload doubles the bytes term
    x2 = allreduce_time(S, 8, 1, A100, dtype_bytes=4, src_dtype_bytes=2, bw_efficiency=1.0)
    x1 = allreduce_time(S, 8, 1, A100, bw_efficiency=1.0)
    lat = 14 * A100.intra_latency_s
    assert (x2 - lat) == pytest.approx(2 * (x1 - lat))


def test_tree_wins_small_messages_ring_large_ones():
    g = 16    # 2 nodes x 8
    small, large = 64e3, 4e9
    assert allreduce_time(small, g, 1, A100, algo="tree") < allreduce_time(small, g, 1, A100, algo="ring")
    assert allreduce_time(large, g, 1, A100, algo="ring") < allreduce_time(large, g, 1, A100, algo="tree")


def test_tp16_across_nodes_uses_every_nic_not_one():
    # the flat model charged TP 16 one NIC (25 GB/s): ~8x the time of 8 NICs (200 GB/s)
    S = 4e9
    flat = collective_time("all_reduce", S, 16, 1, A100, topology="flat", bw_efficiency=0.8)
    nccl = collective_time("all_reduce", S, 16, 1, A100, algo="ring", bw_efficiency=0.8)
    assert flat / nccl == pytest.approx(8.0, rel=0.05)


def test_published_nccl_tests_busbw_orders():
    # nccl-tests all_reduce_perf, large messages: DGX A100 (8 GPUs, NVLink3) ~230 GB/s busbw;
    # DGX H100 (NVLink4) ~ 450-480 GB/s; multi-node DGX A100 with 8 x HDR ~ 180-190 GB/s
    # (NVIDIA DGX SuperPOD reference figures). The model at link efficiency 0.8:
    assert bus_bandwidth(8, 1, A100, 0.8) / 1e9 == pytest.approx(230, rel=0.10)
    assert bus_bandwidth(8, 1, H100, 0.8) / 1e9 == pytest.approx(450, rel=0.25)
    assert bus_bandwidth(64, 1, A100, 0.8) / 1e9 == pytest.approx(185, rel=0.20)


def test_all_to_all_across_nodes_goes_through_each_senders_nic():
    """All-to-all of S bytes per device over g devices on n_nodes nodes: each device sends
    S / g to every member, the (g - n_local) / g bound for other nodes through its own
    NIC, the rest over NVLink; the node's n_local NICs are not pooled as a ring's busbw
    would pool them. Equals the levelled network's formula (hierarchical_coeffs) on the
    same two levels, latencies included."""
    net = NETWORKS["dgx-h100"]
    lev = Network(devices_per_node=8, intra_bw_Bps=net.intra_bw_Bps, inter_bw_Bps=net.inter_bw_Bps,
                  intra_latency_s=net.intra_latency_s, inter_latency_s=net.inter_latency_s,
                  levels=((8, net.intra_bw_Bps, net.intra_latency_s),
                          (0, net.inter_bw_Bps, net.inter_latency_s)))
    S = 134e6
    for g, stride, n_local in ((16, 1, 8), (32, 1, 8), (8, 2, 4), (8, 8, 1)):
        n_nodes = g // n_local
        want = (S * (n_local - 1) / g / net.intra_bw_Bps + S * (g - n_local) / g / net.inter_bw_Bps
                + (n_local - 1) * net.intra_latency_s + (n_nodes - 1) * net.inter_latency_s)
        got = collective_time("all_to_all", S, g, stride, net, bw_efficiency=1.0)
        assert got == pytest.approx(want, rel=1e-12), (g, stride)
        assert got == pytest.approx(collective_time("all_to_all", S, g, stride, lev,
                                                    bw_efficiency=1.0), rel=1e-12)
    # 2 nodes: half of S crosses at one NIC's 50 GB/s: about 4x the ring-busbw figure
    two = collective_time("all_to_all", S, 16, 1, net, bw_efficiency=1.0)
    assert two > 0.5 * S / net.inter_bw_Bps
