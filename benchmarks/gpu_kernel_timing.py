"""Time bf16 GEMMs, attention and element-wise kernels with torch on a real GPU.

Run on the device machine (needs CUDA torch): python benchmarks/gpu_kernel_timing.py OUTDIR
Writes OUTDIR/gpu_kernels.csv with one row per kernel: kind, shape, median seconds,
achieved TFLOP/s or GB/s. The h100 preset's error is computed from this file by
benchmarks/bench_h100_preset.py (no GPU needed there). Each time is the median of CUDA
event timings after warm-up; inputs are random normal bf16.
"""

import csv
import sys

import torch
import torch.nn.functional as F


def time_cuda(fn, warmup=5, reps=20, pause_s=0.0):
    """Median seconds of fn over `reps` CUDA-event timings after `warmup` calls; `pause_s`
    between timings keeps a long kernel in short bursts (near boost clock)."""
    import time

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
        if pause_s:
            time.sleep(pause_s)
    times.sort()
    return times[len(times) // 2]


# (batch, M, N, K): C[b,M,N] = A[b,M,K] B[b,K,N]; transformer-layer shapes plus squares and GEMVs
GEMMS = [
    (1, 1024, 1024, 1024), (1, 2048, 2048, 2048), (1, 4096, 4096, 4096), (1, 8192, 8192, 8192),
    (1, 16384, 16384, 16384), (1, 1, 8192, 8192), (1, 8, 8192, 8192), (1, 64, 8192, 8192),
    (1, 2048, 4608, 12288), (1, 2048, 12288, 1536), (1, 2048, 6144, 12288), (1, 2048, 12288, 6144),
    (1, 4096, 3072, 1024), (1, 4096, 1024, 1024), (1, 4096, 4096, 1024), (1, 4096, 1024, 4096),
    (1, 8192, 4800, 1600), (1, 8192, 1600, 6400), (1, 8192, 6400, 1600),
    (1, 4096, 12288, 4096), (1, 4096, 4096, 11008), (1, 4096, 11008, 4096),
    (1, 2048, 51200, 1536), (1, 2048, 6400, 51200),
    (96, 2048, 2048, 128), (96, 2048, 128, 2048), (32, 4096, 4096, 128), (32, 4096, 128, 4096),
    (400, 1024, 1024, 64), (12, 2048, 2048, 128), (16, 512, 512, 64), (1, 512, 1024, 1024),
]

# (batch, heads, seq, head_dim, causal) for fused attention (fwd) via SDPA
ATTN = [(1, 96, 2048, 128, True), (4, 16, 512, 64, False), (1, 32, 4096, 128, True),
        (8, 25, 1024, 64, True), (1, 12, 2048, 128, True)]

# element-wise: (op, elements)
VECTOR = [("copy", 1 << 28), ("gelu", 1 << 26), ("layernorm", 1 << 26), ("softmax", 1 << 26),
          ("add", 1 << 26)]


def main(outdir):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    rows = []
    props = torch.cuda.get_device_properties(0)
    print("device:", props.name, props.multi_processor_count, "SMs", flush=True)
    for b, m, n, k in GEMMS:
        a = torch.randn(b, m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(b, k, n, device=dev, dtype=torch.bfloat16)
        if b == 1:
            a2, w2 = a[0], w[0]
            t = time_cuda(lambda: torch.mm(a2, w2))
        else:
            t = time_cuda(lambda a=a, w=w: torch.bmm(a, w))
        flops = 2.0 * b * m * n * k
        rows.append(dict(kind="gemm", b=b, m=m, n=n, k=k, extra="", seconds=t,
                         tflops=flops / t / 1e12, gbps=2 * (b * m * k + b * k * n + b * m * n) / t / 1e9))
        print(rows[-1], flush=True)
        del a, w
    for b, h, s, d, causal in ATTN:
        q, kk, v = (torch.randn(b, h, s, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        t = time_cuda(lambda: F.scaled_dot_product_attention(q, kk, v, is_causal=causal))
        flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
        rows.append(dict(kind="attention", b=b, m=s, n=s, k=d, extra=f"heads={h},causal={causal}",
                         seconds=t, tflops=flops / t / 1e12, gbps=4 * b * h * s * d * 2 / t / 1e9))
        print(rows[-1], flush=True)
    for op, n in VECTOR:
        x = torch.randn(n // 4096, 4096, device=dev, dtype=torch.bfloat16)
        y = torch.randn_like(x)
        fn = {"copy": lambda: x.clone(), "gelu": lambda: F.gelu(x),
              "layernorm": lambda: F.layer_norm(x, (4096,)), "softmax": lambda: torch.softmax(x, -1),
              "add": lambda: x + y}[op]
        t = time_cuda(fn)
        moved = (3 if op == "add" else 2) * n * 2
        rows.append(dict(kind="vector", b=1, m=n, n=0, k=0, extra=op, seconds=t, tflops=0.0,
                         gbps=moved / t / 1e9))
        print(rows[-1], flush=True)
    with open(f"{outdir}/gpu_kernels.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]) + ["device"])
        wr.writeheader()
        for r in rows:
            wr.writerow({**r, "device": props.name})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
