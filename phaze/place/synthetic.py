"""Closed-form GPT-like chains, for tests, benchmarks and the MPI driver's synthetic items
while no operator graphs / latency tables are at hand.

Per block (Megatron, h hidden, a heads, s seq, b microbatch, t TP width, V vocab):
  params 12 h^2 + 13 h (/ t), forward FLOP 24 b s h^2 (1 + s / (6 h)) (Narayanan et al. 2021),
  backward 2x forward; activations without recomputation s b h (10 + 24/t + 5 a s/(h t))
  bytes (t = 1: s b h (34 + 5 a s / h)), with full recomputation 2 s b h (Korthikanti
  et al. 2023); boundary activation 2 s b h bytes. Latency = FLOP / (peak * efficiency);
  TP all-reduces (2 forward, 2 backward per block, of 2 s b h bytes) on the intra-node link
  are added to the latency and reported as TP time.
"""

from __future__ import annotations

import numpy as np

from phaze.place.chain import Chain


def gpt_chain(layers=24, hidden=2048, heads=16, seq=2048, vocab=51200, mbs=1, t=1,
              peak_flops=312e12, efficiency=0.5, tp_bw_Bps=300e9, tp_latency_s=5e-6,
              model="synthetic-gpt") -> Chain:
    h, a, s, b, V = hidden, heads, seq, mbs, vocab
    sbh = s * b * h
    blk_f = 24 * b * s * h * h * (1 + s / (6 * h)) / t
    if t > 1:
        ar = 2 * (t - 1) / t * 2 * sbh / tp_bw_Bps + 2 * (t - 1) * tp_latency_s
        act_none = sbh * (10 + 24 / t + 5 * a * s / (h * t))
    else:
        ar = 0.0
        act_none = sbh * (34 + 5 * a * s / h)
    tp_f = 2 * ar
    fwd = blk_f / (peak_flops * efficiency) + tp_f
    head_f = 2 * b * s * h * V / t
    rows = [("prologue", V * h / t, 1e-5, 2e-5, 0.0, 0.0, 2 * sbh, 2 * sbh, 2 * sbh, 0.0)]
    rows += [("block", (12 * h * h + 13 * h) / t, fwd, 2 * fwd, tp_f, tp_f, act_none, 2 * sbh,
              2 * sbh, blk_f)] * layers
    rows += [("epilogue", V * h / t, head_f / (peak_flops * efficiency),
              2 * head_f / (peak_flops * efficiency), 0.0, 0.0, 4 * s * b * V / t, 2 * sbh, 0.0,
              head_f)]
    k, P, F, B, TF, TB, AN, AF, OB, FL = zip(*rows)
    return Chain(t=t, mbs=mbs, seq=seq, fwd_s=np.array(F), bwd_s=np.array(B),
                 tp_fwd_s=np.array(TF), tp_bwd_s=np.array(TB), param_count=np.array(P),
                 act_none_bytes=np.array(AN), act_full_bytes=np.array(AF),
                 out_bytes=np.array(OB), flops_fwd=np.array(FL), flops_bwd=2 * np.array(FL),
                 kinds=tuple(k), model=model)
