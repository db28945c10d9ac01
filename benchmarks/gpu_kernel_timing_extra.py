"""Time the kernels the h100 preset is least sure of, on a Hopper GPU (run where CUDA torch is).

    python benchmarks/gpu_kernel_timing_extra.py OUTDIR

Writes OUTDIR/gpu_kernels_extra.csv (same columns as gpu_kernel_timing.py's file, one row per
kernel, written as it is measured) and OUTDIR/sustained.csv, after running
gpu_kernel_timing.py's own set (OUTDIR/gpu_kernels.csv) for a same-shape comparison with the
H100 file. What it adds:
- fused attention forward AND backward (cuDNN and FlashAttention-2 backends of torch SDPA)
  at Llama/GPT/GPT-OSS/MLA shapes; the backward time is (forward + backward) - forward;
- FP8 GEMMs (torch._scaled_mm, e4m3, per-tensor scales; block-scaled 1x128/128x128 where
  this torch has it) beside bf16 at the same transformer shapes;
- MoE expert GEMMs: one cuBLAS GEMM per local expert (TE's non-grouped path), torch's
  grouped GEMM, and one dense GEMM of the same FLOPs, at the expert shapes of the held-out
  MoE runs;
- the sustained rate of back-to-back 8192^3 bf16 GEMMs for about 40 s, with the SM clock
  and power read through NVML: the fraction of the boost-clock rate a power-capped chip
  keeps under unbroken matrix load.
Each time is the median of CUDA-event timings after warm-up; inputs are random normal.
"""

import csv
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import gpu_kernel_timing as base  # noqa: E402

FIELDS = ["kind", "b", "m", "n", "k", "extra", "seconds", "tflops", "gbps", "device"]


class Writer:
    def __init__(self, path, device):
        self.f = open(path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=FIELDS)
        self.w.writeheader()
        self.device = device

    def row(self, **r):
        r["device"] = self.device
        self.w.writerow(r)
        self.f.flush()
        print(r, flush=True)


def guarded(name, fn):
    t0 = time.time()
    try:
        fn()
    except Exception:
        print(f"SECTION {name} FAILED", flush=True)
        traceback.print_exc()
    print(f"SECTION {name} took {time.time() - t0:.1f} s", flush=True)


# (batch, q heads, kv heads, seq, qk head dim, v head dim): attention of the held-out runs
ATTN = [(1, 32, 8, 2048, 128, 128), (1, 32, 8, 4096, 128, 128), (1, 32, 8, 8192, 128, 128),
        (1, 16, 2, 4096, 128, 128), (1, 16, 2, 8192, 128, 128), (1, 8, 1, 8192, 128, 128),
        (4, 12, 12, 2048, 128, 128), (1, 64, 8, 4096, 64, 64), (1, 32, 4, 4096, 128, 128),
        (1, 64, 64, 4096, 192, 128), (1, 96, 96, 2048, 128, 128)]


def attention(out):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for b, hq, hkv, s, dqk, dv in ATTN:
        q = torch.randn(b, hq, s, dqk, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        # GQA as Megatron-Core runs it through TE: K and V expanded per query head
        k = torch.randn(b, hkv, s, dqk, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hkv, s, dv, device="cuda", dtype=torch.bfloat16)
        k = k.repeat_interleave(hq // hkv, 1).requires_grad_()
        v = v.repeat_interleave(hq // hkv, 1).requires_grad_()
        g = torch.randn(b, hq, s, dv, device="cuda", dtype=torch.bfloat16)
        flops_fwd = 2.0 * b * hq * s * s * (dqk + dv) * 0.5  # causal: half the scores
        flops_bwd = 2.0 * b * hq * s * s * (3 * dqk + 2 * dv) * 0.5  # S recomputed, dV, dP, dQ, dK
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash2", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel([be]):
                    def fwd():
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v, is_causal=True)

                    def fwdbwd():
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        torch.autograd.grad(o, (q, k, v), g)
                    tf = base.time_cuda(fwd, warmup=3, reps=10)
                    tfb = base.time_cuda(fwdbwd, warmup=3, reps=10)
            except Exception as e:
                print(f"attention {name} {b, hq, hkv, s, dqk, dv}: {type(e).__name__}: {str(e)[:200]}",
                      flush=True)
                continue
            extra = f"backend={name},heads={hq},kv_heads={hkv},v_dim={dv},causal=True"
            out.row(kind="attention", b=b, m=s, n=s, k=dqk, extra=extra, seconds=tf,
                    tflops=flops_fwd / tf / 1e12, gbps=0.0)
            out.row(kind="attention_bwd", b=b, m=s, n=s, k=dqk, extra=extra, seconds=tfb - tf,
                    tflops=flops_bwd / (tfb - tf) / 1e12, gbps=0.0)


# (M tokens, N, K) dense transformer GEMMs of the held-out runs (Llama 3 8B/70B tp 1/4,
# GPT-3 175B tp 8, Nemotron-4 15B), bf16 and FP8 side by side
DENSE = [(4096, 6144, 4096), (4096, 28672, 4096), (4096, 4096, 14336), (8192, 4096, 4096),
         (8192, 2560, 8192), (8192, 7168, 8192), (8192, 8192, 3584), (2048, 4608, 12288),
         (2048, 12288, 6144), (4096, 12288, 6144), (16384, 8192, 8192), (8192, 8192, 8192)]


def _fp8(x):
    return x.to(torch.float8_e4m3fn)


def fp8_gemms(out):
    one = torch.ones((), device="cuda", dtype=torch.float32)
    blockwise_ok = None
    for m, n, k in DENSE:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)  # weight (out, in), as nn.Linear
        t = base.time_cuda(lambda: torch.mm(a, w.t()), warmup=3, reps=10)
        fl = 2.0 * m * n * k
        out.row(kind="gemm", b=1, m=m, n=n, k=k, extra="dtype=bf16,nt", seconds=t, tflops=fl / t / 1e12,
                gbps=2 * (m * k + k * n + m * n) / t / 1e9)
        a8, w8 = _fp8(a), _fp8(w)
        t = base.time_cuda(lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one,
                                                    out_dtype=torch.bfloat16), warmup=3, reps=10)
        out.row(kind="gemm", b=1, m=m, n=n, k=k, extra="dtype=fp8_e4m3,scaling=tensorwise", seconds=t,
                tflops=fl / t / 1e12, gbps=(m * k + k * n + 2 * m * n) / t / 1e9)
        if blockwise_ok is not False:
            # 1x128 activation scales, 128x128 weight scales (DeepSeek-V3's recipe); layouts
            # as torch asks for them (scale of A outer-dim-major)
            sa = torch.rand(k // 128, m, device="cuda", dtype=torch.float32).t()
            sb = torch.rand(n // 128, k // 128, device="cuda", dtype=torch.float32).t()
            try:
                t = base.time_cuda(lambda: torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sb,
                                                            out_dtype=torch.bfloat16), warmup=3, reps=10)
                blockwise_ok = True
                out.row(kind="gemm", b=1, m=m, n=n, k=k, extra="dtype=fp8_e4m3,scaling=blockwise",
                        seconds=t, tflops=fl / t / 1e12, gbps=(m * k + k * n + 2 * m * n) / t / 1e9)
            except Exception as e:
                blockwise_ok = False
                print(f"blockwise _scaled_mm unavailable: {type(e).__name__}: {str(e)[:300]}", flush=True)


# MoE expert GEMMs (tokens per local expert, local experts, hidden, expert ffn, gated):
# Qwen3-30B-A3B EP 16, Qwen3-235B-A22B EP 32, GPT-OSS-120B EP 8, DeepSeek-V3 EP 64, at
# 4096-token microbatches, dropless with balanced routing
MOE = [("qwen3-30b-a3b", 4096, 8, 2048, 768), ("qwen3-235b-a22b", 4096, 4, 4096, 1536),
       ("gpt-oss-120b", 1024, 16, 2880, 2880), ("deepseek-v3", 4096, 4, 7168, 2048),
       ("qwen3-30b-a3b-small", 512, 8, 2048, 768)]


def moe_gemms(out):
    one = torch.ones((), device="cuda", dtype=torch.float32)
    for name, tok, g, h, f in MOE:
        for label, (n, k) in (("fc1", (2 * f, h)), ("fc2", (h, f))):
            x = torch.randn(g * tok, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(g, n, k, device="cuda", dtype=torch.bfloat16)
            xs = list(x.split(tok))
            fl = 2.0 * g * tok * n * k
            variants = {"loop_bf16": lambda: [torch.mm(xi, w[i].t()) for i, xi in enumerate(xs)]}
            wd = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            variants["dense_bf16"] = lambda: torch.mm(x, wd.t())
            offs = torch.arange(1, g + 1, device="cuda", dtype=torch.int32) * tok
            if hasattr(torch, "_grouped_mm"):
                variants["grouped_bf16"] = lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
            x8, w8 = _fp8(x), _fp8(w)
            x8s = list(x8.split(tok))
            variants["loop_fp8"] = lambda: [torch._scaled_mm(xi, w8[i].t(), scale_a=one, scale_b=one,
                                                             out_dtype=torch.bfloat16)
                                            for i, xi in enumerate(x8s)]
            wd8 = _fp8(wd)
            variants["dense_fp8"] = lambda: torch._scaled_mm(x8, wd8.t(), scale_a=one, scale_b=one,
                                                             out_dtype=torch.bfloat16)
            for vname, fn in variants.items():
                try:
                    t = base.time_cuda(fn, warmup=3, reps=10)
                except Exception as e:
                    print(f"moe {name} {label} {vname}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                out.row(kind="moe_gemm", b=g, m=tok, n=n, k=k, extra=f"model={name},{label},{vname}",
                        seconds=t, tflops=fl / t / 1e12, gbps=0.0)


def sustained(outdir, seconds=40.0):
    try:
        import pynvml
        pynvml.nvmlInit()
        hnd = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception as e:
        print("no NVML:", e, flush=True)
        pynvml = None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    fl = 2.0 * n ** 3
    batch = 40
    with open(f"{outdir}/sustained.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["elapsed_s", "tflops", "sm_clock_mhz", "power_w", "temp_c", "clock_event_reasons"])
        t0 = time.time()
        while time.time() - t0 < seconds:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(batch):
                torch.mm(a, b, out=c)
            e.record()
            # read the clock while the batch runs
            clk = pw = tmp = rsn = ""
            if pynvml:
                clk = pynvml.nvmlDeviceGetClockInfo(hnd, pynvml.NVML_CLOCK_SM)
                pw = pynvml.nvmlDeviceGetPowerUsage(hnd) / 1000.0
                tmp = pynvml.nvmlDeviceGetTemperature(hnd, pynvml.NVML_TEMPERATURE_GPU)
                try:
                    rsn = hex(pynvml.nvmlDeviceGetCurrentClocksEventReasons(hnd))
                except Exception:
                    rsn = ""
            e.synchronize()
            tf = fl * batch / (s.elapsed_time(e) / 1e3) / 1e12
            w.writerow([round(time.time() - t0, 2), round(tf, 1), clk, pw, tmp, rsn])
            f.flush()
    print("sustained done", flush=True)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print("device:", props.name, props.multi_processor_count, "SMs; torch", torch.__version__,
          "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), flush=True)
    out = Writer(f"{outdir}/gpu_kernels_extra.csv", props.name)
    guarded("attention", lambda: attention(out))
    guarded("fp8_gemms", lambda: fp8_gemms(out))
    guarded("moe_gemms", lambda: moe_gemms(out))
    guarded("base", lambda: base.main(outdir))
    guarded("sustained", lambda: sustained(outdir))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
