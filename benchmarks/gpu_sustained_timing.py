"""How much of a kernel's isolated (boost-clock) rate a power-capped Hopper GPU keeps under
unbroken load, and the GPU-only time of per-expert GEMM loops (run where CUDA torch is).

    python benchmarks/gpu_sustained_timing.py OUTDIR

Writes OUTDIR/sustained_mix.csv: one row per timed batch (workload, elapsed s, achieved
rate, SM clock, power) for
- bf16 and FP8 (torch._scaled_mm, per-tensor scales) GEMMs of a Llama-3-8B MLP shape
  (4096 x 28672 x 4096), back to back for about 20 s each;
- a Llama-3-8B-like transformer layer, forward and backward through autograd (bf16,
  cuDNN fused attention, causal, 4096 tokens), back to back for about 25 s: a training mix
  of GEMMs, attention and memory-bound kernels;
and OUTDIR/expert_loops.csv: per-expert GEMM loops (one cuBLAS GEMM per local expert, bf16
and FP8) captured in a CUDA graph and replayed, so host launch gaps do not count, beside the
same loop launched eagerly. gpu_kernel_timing_extra.py's loops are eager; this file says
how much of their time was the host's.
"""

import csv
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import gpu_kernel_timing as base  # noqa: E402


def nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: (pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                        pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
    except Exception as e:
        print("no NVML:", e, flush=True)
        return lambda: ("", "")


def sustain(w, name, fn, work, seconds, batch, read):
    """Run fn back to back in batches for `seconds`; one row per batch: work / time."""
    fn()
    torch.cuda.synchronize()
    time.sleep(2.0)   # let the clock recover between workloads
    t0 = time.time()
    while time.time() - t0 < seconds:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(batch):
            fn()
        e.record()
        clk, pw = read()
        e.synchronize()
        dt = s.elapsed_time(e) / 1e3
        w.writerow([name, round(time.time() - t0, 3), work * batch / dt, dt / batch, clk, pw])
    print(name, "done", flush=True)


def layer(h=4096, ffn=14336, heads=32, kv=8, s=4096):
    dev, dt = "cuda", torch.bfloat16
    lin = lambda i, o: torch.nn.Linear(i, o, bias=False, device=dev, dtype=dt)  # noqa: E731
    qkv, proj = lin(h, h + 2 * h * kv // heads), lin(h, h)
    fc1, fc2 = lin(h, 2 * ffn), lin(ffn, h)
    n1 = torch.nn.RMSNorm(h, device=dev, dtype=dt)
    n2 = torch.nn.RMSNorm(h, device=dev, dtype=dt)
    x = torch.randn(1, s, h, device=dev, dtype=dt, requires_grad=True)
    d = h // heads
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def step():
        y = qkv(n1(x))
        q, k, v = y.split([h, h * kv // heads, h * kv // heads], -1)
        q = q.view(1, s, heads, d).transpose(1, 2)
        k = k.view(1, s, kv, d).transpose(1, 2).repeat_interleave(heads // kv, 1)
        v = v.view(1, s, kv, d).transpose(1, 2).repeat_interleave(heads // kv, 1)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x2 = x + proj(a.transpose(1, 2).reshape(1, s, h))
        g, u = fc1(n2(x2)).chunk(2, -1)
        out = x2 + fc2(F.silu(g) * u)
        out.backward(torch.ones_like(out))
    # model FLOPs of one step: 3 x forward GEMMs + attention (causal: half) fwd 4 s^2 d, bwd 10
    gemm = 2 * s * (h * (h + 2 * h * kv // heads) + h * h + h * 2 * ffn + ffn * h)
    attn = 0.5 * heads * s * s * d * (4 + 10)
    return step, 3 * gemm + attn


def expert_loops(outdir):
    one = torch.ones((), device="cuda", dtype=torch.float32)
    shapes = [("qwen3-30b-a3b", 4096, 8, 2048, 768), ("gpt-oss-120b", 1024, 16, 2880, 2880),
              ("deepseek-v3", 4096, 4, 7168, 2048), ("qwen3-235b-a22b", 4096, 4, 4096, 1536),
              ("qwen3-30b-a3b-small", 512, 8, 2048, 768)]
    with open(f"{outdir}/expert_loops.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "gemm", "groups", "tokens", "n", "k", "dtype", "eager_s", "graph_s", "tflops_graph"])
        for name, tok, g, h, ffn in shapes:
            for lab, (n, k) in (("fc1", (2 * ffn, h)), ("fc2", (h, ffn))):
                x = torch.randn(g, tok, k, device="cuda", dtype=torch.bfloat16)
                wt = torch.randn(g, n, k, device="cuda", dtype=torch.bfloat16)
                x8, w8 = x.to(torch.float8_e4m3fn), wt.to(torch.float8_e4m3fn)
                fns = {"bf16": lambda x=x, wt=wt: [torch.mm(x[i], wt[i].t()) for i in range(g)],
                       "fp8": lambda x8=x8, w8=w8: [torch._scaled_mm(x8[i], w8[i].t(), scale_a=one, scale_b=one,
                                                                     out_dtype=torch.bfloat16) for i in range(g)]}
                for dt, fn in fns.items():
                    try:
                        for _ in range(3):
                            fn()
                        torch.cuda.synchronize()
                        eager = base.time_cuda(fn, warmup=0)
                        s = torch.cuda.Stream()
                        s.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(s):
                            fn()
                        torch.cuda.current_stream().wait_stream(s)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            fn()
                        replay = base.time_cuda(graph.replay, warmup=0)
                    except Exception as e:
                        print(name, lab, dt, type(e).__name__, str(e)[:200], flush=True)
                        continue
                    fl = 2.0 * g * tok * n * k
                    w.writerow([name, lab, g, tok, n, k, dt, eager, replay, fl / replay / 1e12])
                    print(name, lab, dt, eager, replay, flush=True)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    read = nvml()
    t0 = time.time()
    try:
        expert_loops(outdir)
    except Exception as e:
        print("expert_loops failed:", type(e).__name__, e, flush=True)
    print(f"expert loops {time.time() - t0:.1f} s", flush=True)
    with open(f"{outdir}/sustained_mix.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "elapsed_s", "rate_per_s", "seconds_each", "sm_clock_mhz", "power_w"])
        m, n, k = 4096, 28672, 4096
        one = torch.ones((), device="cuda", dtype=torch.float32)
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        fl = 2.0 * m * n * k
        try:
            sustain(w, "gemm_fp8_4096x28672x4096",
                    lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                    fl, 20.0, 40, read)
            f.flush()
            sustain(w, "gemm_bf16_4096x28672x4096", lambda: torch.mm(a, b.t()), fl, 20.0, 25, read)
            f.flush()
        except Exception as e:
            print("gemm sustain failed:", type(e).__name__, e, flush=True)
        try:
            step, flops = layer()
            sustain(w, "layer_bf16_llama8b_s4096_fwd_bwd", step, flops, 25.0, 3, read)
        except Exception as e:
            print("layer sustain failed:", type(e).__name__, e, flush=True)
    print(f"total {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
