"""Benchmark: cost every op of a GPT-3 175B block (forward and backward, t in 1,2,4,8) on
the whole reference grid with phaze.cost.op_latencies. Target: under 5 s on one core.

Uses the graph builder (phaze.model.graph) when it is available, else builds the block's
GEMM / vector / collective ops here (Megatron TP sharding, s=2048, mbs=1, bf16).
Run: PYTHONPATH=. python benchmarks/bench_cost.py
"""

from __future__ import annotations

import time

from phaze.cost.api import op_latencies
from phaze.hw.grid import enumerate_grid
from phaze.hw.presets import PRESETS
from phaze.model.ops import GemmDims, Op

TARGET_S = 5.0
H, HEADS, SEQ, MBS, FFN = 12288, 96, 2048, 1, 4 * 12288
DT = 2


def gpt3_block_ops(t: int):
    """(forward ops, backward ops) of one GPT-3 175B block on one device of TP width t."""
    s, h, hd, a = SEQ * MBS, H, H // HEADS, HEADS // t

    def g(name, b, m, n, k):
        return Op(name, "gemm", gemm=GemmDims(b, m, n, k), flops=2.0 * b * m * n * k,
                  bytes_read=DT * b * (m * k + k * n), bytes_written=DT * b * m * n)

    def v(name, cls, e):
        return Op(name, "vector", vclass=cls, elements=e, bytes_read=DT * e, bytes_written=DT * e)

    def ar(name):
        return Op(name, "collective", collective="all_reduce", group="tp", comm_bytes=DT * s * h)

    gemms = [("qkv", 1, s, 3 * h // t, h), ("scores", a, SEQ, SEQ, hd), ("context", a, SEQ, hd, SEQ),
             ("proj", 1, s, h, h // t), ("fc1", 1, s, FFN // t, h), ("fc2", 1, s, h, FFN // t)]
    vecs = [("ln1", "layernorm", s * h), ("softmax", "softmax", a * SEQ * SEQ), ("add1", "add", s * h),
            ("ln2", "layernorm", s * h), ("gelu", "gelu", s * FFN // t), ("add2", "add", s * h)]
    fwd = [g(n, b, m, nn, k) for n, b, m, nn, k in gemms] + [v(*x) for x in vecs] + [ar("ar1"), ar("ar2")]
    bwd = []
    for n, b, m, nn, k in gemms:
        bwd.append(g(n + ".dX", b, m, k, nn))   # dX = dY W^T
        bwd.append(g(n + ".dW", b, k, nn, m))   # dW = X^T dY
    bwd += [v(n + ".bwd", c, e) for n, c, e in vecs] + [ar("ar1.bwd"), ar("ar2.bwd")]
    return fwd, bwd


def main() -> None:
    t0 = time.perf_counter()
    grid = enumerate_grid()
    t_grid = time.perf_counter() - t0
    net = PRESETS["tpuv4"].network
    n_ops = 0
    t0 = time.perf_counter()
    for t in (1, 2, 4, 8):
        for ops in gpt3_block_ops(t):
            op_latencies(ops, grid, net, tp=t)
            n_ops += len(ops)
    dt = time.perf_counter() - t0
    print(f"grid: {len(grid)} archs enumerated in {t_grid:.2f} s")
    print(f"costed {n_ops} ops x {len(grid)} archs = {n_ops * len(grid):,} (op, arch) pairs "
          f"in {dt:.2f} s ({n_ops * len(grid) / dt / 1e6:.1f} M pairs/s)")
    print(f"ratio to the {TARGET_S:.0f} s target: {dt / TARGET_S:.2f} (below 1 meets it)")


if __name__ == "__main__":
    main()
