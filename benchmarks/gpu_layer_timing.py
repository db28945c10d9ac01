"""Time whole transformer layers, forward + backward, on a GPU (run where CUDA torch is).

    python benchmarks/gpu_layer_timing.py OUTDIR

Writes OUTDIR/layers.csv: one row per layer variant, the median seconds of one forward +
backward step (autograd, bf16, cuDNN fused attention, causal) timed in short bursts at boost
clock, so they compare with phaze's kernel-parameter sums (benchmarks/bench_h200_kernels.py).
The layers are those of the Megatron-LM README's GPT runs (LayerNorm with bias, biased
linears, tanh-GELU MLP of 4h, hidden and attention dropout 0.1, seq 4096) as one
tensor-parallel rank holds them (heads, MLP width and QKV / fc1 outputs divided by t; no
sequence parallelism, no collectives), each also without dropout, and a Llama-3-8B layer.
Eager PyTorch runs dropout and the residual add as two kernels where Megatron's jit fuses
bias-dropout-add into one; the rest matches Megatron-Core's TE layer kernel for kernel.
"""

import csv
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import gpu_kernel_timing as base  # noqa: E402

# name, hidden, heads (all), ffn, tp, mbs, kind
LAYERS = [("gpt-1.7b", 2048, 16, 8192, 1, 4, "gpt"), ("gpt-7.1b", 4096, 32, 16384, 2, 4, "gpt"),
          ("gpt-16b", 6144, 48, 24576, 4, 4, "gpt"), ("gpt-177b", 12288, 96, 49152, 8, 1, "gpt"),
          ("gpt-177b-mbs2", 12288, 96, 49152, 8, 2, "gpt"), ("llama3-8b", 4096, 32, 14336, 1, 1, "llama")]
SEQ = 4096


def gpt_layer(h, heads, ffn, tp, mbs, dropout):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dev, dt = "cuda", torch.bfloat16
    hp, fp, d = heads // tp, ffn // tp, h // heads

    def w(o, i):
        return (torch.randn(o, i, device=dev, dtype=dt) * 0.02).requires_grad_()

    def b(o):
        return torch.zeros(o, device=dev, dtype=dt, requires_grad=True)
    wqkv, bqkv, wo, bo = w(3 * hp * d, h), b(3 * hp * d), w(h, hp * d), b(h)
    w1, b1, w2, b2 = w(fp, h), b(fp), w(h, fp), b(h)
    g1, be1, g2, be2 = (torch.ones(h, device=dev, dtype=dt, requires_grad=True) if i % 2 == 0 else b(h)
                        for i in range(4))
    x = torch.randn(mbs, SEQ, h, device=dev, dtype=dt, requires_grad=True)
    p = 0.1 if dropout else 0.0

    def step():
        y = F.linear(F.layer_norm(x, (h,), g1, be1), wqkv, bqkv)
        q, k, v = y.view(mbs, SEQ, 3, hp, d).permute(2, 0, 3, 1, 4)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x2 = x + F.dropout(F.linear(a.transpose(1, 2).reshape(mbs, SEQ, hp * d), wo, bo), p)
        m = F.gelu(F.linear(F.layer_norm(x2, (h,), g2, be2), w1, b1), approximate="tanh")
        out = x2 + F.dropout(F.linear(m, w2, b2), p)
        out.backward(torch.ones_like(out))
    return step


def llama_layer(h=4096, heads=32, kv=8, ffn=14336):
    dev, dt = "cuda", torch.bfloat16
    d = h // heads

    def w(o, i):
        return (torch.randn(o, i, device=dev, dtype=dt) * 0.02).requires_grad_()
    wqkv, wo, w1, w2 = w(h + 2 * kv * d, h), w(h, h), w(2 * ffn, h), w(h, ffn)
    g1 = torch.ones(h, device=dev, dtype=dt, requires_grad=True)
    g2 = torch.ones(h, device=dev, dtype=dt, requires_grad=True)
    x = torch.randn(1, SEQ, h, device=dev, dtype=dt, requires_grad=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def step():
        y = F.linear(F.rms_norm(x, (h,), g1), wqkv)
        q, k, v = y.split([h, kv * d, kv * d], -1)
        q = q.view(1, SEQ, heads, d).transpose(1, 2)
        k = k.view(1, SEQ, kv, d).transpose(1, 2).repeat_interleave(heads // kv, 1)
        v = v.view(1, SEQ, kv, d).transpose(1, 2).repeat_interleave(heads // kv, 1)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x2 = x + F.linear(a.transpose(1, 2).reshape(1, SEQ, h), wo)
        g, u = F.linear(F.rms_norm(x2, (h,), g2), w1).chunk(2, -1)
        out = x2 + F.linear(F.silu(g) * u, w2)
        out.backward(torch.ones_like(out))
    return step


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    with open(f"{outdir}/layers.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["layer", "hidden", "heads", "ffn", "tp", "mbs", "seq", "dropout", "seconds", "device"])
        for name, h, heads, ffn, tp, mbs, kind in LAYERS:
            for dropout in ((True, False) if kind == "gpt" else (False,)):
                try:
                    step = gpt_layer(h, heads, ffn, tp, mbs, dropout) if kind == "gpt" else llama_layer()
                    t = base.time_cuda(step, warmup=3, reps=10, pause_s=0.02)
                except Exception as e:
                    print(name, dropout, type(e).__name__, str(e)[:300], flush=True)
                    continue
                wr.writerow([name, h, heads, ffn, tp, mbs, SEQ, dropout, t, torch.cuda.get_device_name(0)])
                f.flush()
                print(name, "dropout" if dropout else "no dropout", f"{t * 1e3:.3f} ms", flush=True)
                del step
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
