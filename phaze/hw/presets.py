"""Named chips, expressed in this model's own terms (TC arrays, VCs, GLB, HBM, clock,
network). Figures from docs/validate.md#hardware-figures / vendor data sheets; where a real chip is not a
systolic-array machine (GPUs) the array shape is chosen so that peak FLOP/s and clock
match the published numbers.

tpuv4  The reference's A_max chip (8 TCs of 128x128, 2 VCs x 128 lanes, 128 MiB GLB,
       1.05 GHz -> 275 TFLOP/s bf16) with TPUv4's real HBM (32 GiB at 1200 GB/s).
       Network: ICI 3D torus; a "node" is a 4x4x4 cube (64 chips); a ring along one
       torus dimension uses two ~50 GB/s links (100 GB/s per direction); between cubes
       (optical switches) we assume one 50 GB/s link. Approximate.
a100   A100-80GB SXM: 108 SMs; each SM's 4 tensor cores = one 32x32 TC (1024 bf16
       MAC/cycle) -> 108*1024*2*1.41 GHz = 312 TFLOP/s; 64 FP32 lanes per SM as a VC;
       40 MiB L2 as GLB; 80 GiB HBM2e at 2.039 TB/s; DGX node of 8 GPUs on NVLink3
       (300 GB/s per direction), 8 x 200 Gb/s HDR IB per node (25 GB/s per GPU).
h100   H100 SXM5: 132 SMs; one 64x32 TC per SM (2048 bf16 MAC/cycle) at 1.83 GHz
       -> 989 TFLOP/s dense bf16; 128 FP32 lanes per SM; 50 MiB L2; 80 GiB HBM3 at
       3.35 TB/s; 8 GPUs per node on NVLink4 (450 GB/s per direction), 400 Gb/s NDR IB
       per GPU (50 GB/s).
GLB bandwidth is left to the model's auto rule (enough to feed every core each cycle),
since in this model the GLB stands for the whole on-chip SRAM hierarchy.
"""

from __future__ import annotations

import os

from phaze.errors import UserError
from phaze.hw.arch import Arch, Network
from phaze.units import GB, GiB, MiB

NETWORKS = {
    "tpuv4-ici": Network(devices_per_node=64, intra_bw_Bps=100e9, intra_latency_s=1e-6,
                         inter_bw_Bps=50e9, inter_latency_s=3e-6, name="tpuv4-ici"),
    "dgx-a100": Network(devices_per_node=8, intra_bw_Bps=300e9, intra_latency_s=3e-6,
                        inter_bw_Bps=25e9, inter_latency_s=6e-6, name="dgx-a100"),
    "dgx-h100": Network(devices_per_node=8, intra_bw_Bps=450e9, intra_latency_s=3e-6,
                        inter_bw_Bps=50e9, inter_latency_s=6e-6, name="dgx-h100"),
    # DGX H100 SuperPOD (NVIDIA reference architecture): 8 GPUs per node on NVLink4
    # (450 GB/s per direction), rail-optimised fat tree: one 400 Gb/s (50 GB/s) NIC per GPU,
    # leaf switches join the same rail of the 32 nodes of a scalable unit (256 GPUs), spine
    # switches join the units; full bisection, so the spine adds latency, not less bandwidth.
    "dgx-h100-superpod": Network(levels=((8, 450e9, 3e-6), (256, 50e9, 6e-6), (0, 50e9, 9e-6)),
                                 name="dgx-h100-superpod"),
    # TPU v4 pod (Jouppi et al., ISCA 2023): 4x4x4 cubes of 64 chips on ICI (6 links of
    # 50 GB/s per direction; a ring on one axis gets ~100 GB/s), cubes joined by optical
    # circuit switches into a 4096-chip 3D torus; the OCS hop adds latency. Modelled as
    # levels: a 4-chip board, the 64-chip cube, the pod.
    "tpuv4-pod": Network(levels=((4, 100e9, 1e-6), (64, 100e9, 2e-6), (0, 50e9, 5e-6)),
                         name="tpuv4-pod"),
    # A generic 2-tier spine-leaf Ethernet cluster of 8-GPU servers: NVLink in a server,
    # 16 servers (128 GPUs) per leaf at 400 Gb/s per GPU, 2:1 oversubscribed spine.
    "spine-leaf": Network(levels=((8, 300e9, 3e-6), (128, 50e9, 5e-6), (0, 25e9, 1e-5)),
                          name="spine-leaf"),
}

PRESETS = {
    "tpuv4": Arch(n_tc=8, tc_rows=128, tc_cols=128, n_vc=2, vc_lanes=128,
                  glb_bytes=128 * MiB, clock_hz=1.05e9, hbm_bw_Bps=1200 * GB,
                  hbm_bytes=32 * GiB, network=NETWORKS["tpuv4-ici"], name="tpuv4"),
    "a100": Arch(n_tc=108, tc_rows=32, tc_cols=32, n_vc=108, vc_lanes=64,
                 glb_bytes=40 * MiB, clock_hz=1.41e9, hbm_bw_Bps=2039 * GB,
                 hbm_bytes=80 * GiB, network=NETWORKS["dgx-a100"], name="a100"),
    "h100": Arch(n_tc=132, tc_rows=64, tc_cols=32, n_vc=132, vc_lanes=128,
                 glb_bytes=50 * MiB, clock_hz=1.83e9, hbm_bw_Bps=3350 * GB,
                 hbm_bytes=80 * GiB, network=NETWORKS["dgx-h100"], name="h100"),
}


# Presets whose tensor cores run FP8 GEMMs (Hopper's; A100 and TPUv4 have none): the only
# archs `phaze evaluate --fp8` accepts.
FP8_PRESETS = frozenset({"h100"})
# presets that are NVIDIA GPUs: the framework profiles' CUDA-kernel terms (eager bias and
# LayerNorm kernels, NCCL-overlapped TP backward) apply to them only
GPU_PRESETS = frozenset({"a100", "h100"})


def get_preset(name: str) -> Arch:
    try:
        return PRESETS[name]
    except KeyError:
        what = ("a directory, not a chip file" if os.path.isdir(name)
                else "a file, but a chip file is JSON (*.json)" if os.path.exists(name)
                else "an unknown arch preset")
        raise UserError(f"{name!r} is {what}", field="arch",
                        fix=f"use a preset ({', '.join(sorted(PRESETS))}), a chip JSON file "
                            "(phaze report's chip_*.json) or --grid G --arch ID (`phaze arch "
                            "grid` writes G)") from None


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise UserError(f"unknown network {name!r}", field="network",
                        fix=f"use one of {sorted(NETWORKS)} or a JSON object") from None
