"""Benchmark: the default-mode placement DP with every axis on (a 3-level network with
per-hop pipeline costs, expert parallelism, context parallelism, ZeRO-0..3, sequence
parallelism as a chain variant, three recompute modes, interleaving) vs the DP on the
flat (two-level) network with the axes of before (d, p, t, mbs, recompute, interleave,
ZeRO-1), on the same MoE chains, 1024 devices (issue 19's speed point; target: <= 10x).

Chain: a Mixtral-8x7B-like closed-form chain (phaze.place.synthetic.gpt_chain: 32 blocks,
hidden 4096, 32 heads, vocab 32000, seq 4096, mbs 1) made MoE: the block's MLP is 8
experts of 8 h^2 parameters each (top-2: the expert GEMMs run twice the dense FLOPs), an
all-to-all payload of seq x 2 x h x 2 B per MoE layer. Global batch 1024, mixed-precision
Adam, 2 HBM sizes x 3 recompute modes per call (best_plans), interleave 1 and 2,
t in {1, 2, 4, 8}.
Flat ("today"): Network() (8 per node + cluster), ZeRO-1, no EP, no CP.
Every axis: dgx-h100-superpod levels, ep in {1, 2, 4, 8}, ZeRO stages {0, 1, 2, 3},
cp in {1, 2} (the chain at seq / cp; a dense-attention time model, no ring-attention
exchange: the benchmark times the DP, not the CP cost model).
CPU time, least of 3. Prints both times and the ratio. Both runs use this tree's DP, so
the flat figure already has its speed-ups (lazy bands, incumbent pruning of the first
window); the DP of before (commit 6f94d9b) took 181.5 ms on the flat item (measured once
on the 2-core machine, `TODAY_FLAT_MS`), and the ratio to it is printed too.

Run: PYTHONPATH=. python benchmarks/bench_place_axes.py
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from phaze.hw.arch import Network
from phaze.hw.presets import NETWORKS
from phaze.place.dp import best_plans
from phaze.place.plan import Links, PlanOptions
from phaze.place.synthetic import gpt_chain

from cpu_timing import timed  # benchmarks/ (the script's own folder)

GiB = 1024**3
TODAY_FLAT_MS = 181.5      # the flat item with the DP before issue 19's axes (6f94d9b)
H, E, TOPK = 4096, 8, 2


def moe_chain(t: int, seq: int):
    ch = gpt_chain(layers=32, hidden=H, heads=32, seq=seq, vocab=32000, mbs=1, t=t,
                   model="mixtral-like")
    blocks = np.array([k == "block" for k in ch.kinds])
    expert = np.where(blocks, E * 8 * H * H / t, 0.0)
    dense_mlp = np.where(blocks, 8 * H * H / t, 0.0)
    mlp_s = (2 / 3) * ch.fwd_s         # the MLP's share of a GPT block's forward
    fwd = np.where(blocks, ch.fwd_s + (TOPK - 1) * mlp_s, ch.fwd_s)
    return replace(ch, param_count=ch.param_count - dense_mlp + expert, expert_param_count=expert,
                   a2a_bytes=np.where(blocks, seq * TOPK * H * 2.0, 0.0), fwd_s=fwd,
                   bwd_s=2 * fwd)


HBMS, RECS, SEQ = [80 * GiB, 141 * GiB], ["none", "selective", "full"], 4096


def flat():
    links, opt = Links.of(Network()), PlanOptions(optimizer="adam", zero1=True)
    return {t: best_plans(moe_chain(t, SEQ), 1024, 1024, HBMS, RECS, links=links, options=opt,
                          interleaves=(1, 2)) for t in (1, 2, 4, 8)}


def every_axis():
    net = NETWORKS["dgx-h100-superpod"]
    links = Links.of(net)
    out, bound = {}, {}
    for t in (1, 2, 4, 8):
        for cp in (1, 2):
            opt = PlanOptions(optimizer="adam", collectives="nccl", cp=cp)
            out[(t, cp)] = got = best_plans(moe_chain(t, SEQ // cp), 1024, 1024, HBMS, RECS,
                                            links=links, options=opt, interleaves=(1, 2),
                                            eps=(1, 2, 4, 8), zero_stages=(0, 1, 2, 3),
                                            bound=bound)
            for k, p in got.items():     # as the driver does over chain variants
                if p and p["time_per_batch_s"] < bound.get(k, float("inf")):
                    bound[k] = p["time_per_batch_s"]
    return out


def main() -> None:
    f, t_f = timed(flat)
    a, t_a = timed(every_axis)

    def best(res):
        plans = [p for r in res.values() for p in r.values() if p]
        return min(plans, key=lambda p: p["time_per_batch_s"]) if plans else None
    bf, ba = best(f), best(a)
    print(f"flat, before's axes : {t_f * 1e3:8.1f} ms CPU  best {bf['time_per_batch_s']:.3f} s/batch "
          f"(t {bf['t']} p {bf['p']} d {bf['d']})")
    print(f"3 levels, every axis: {t_a * 1e3:8.1f} ms CPU  best {ba['time_per_batch_s']:.3f} s/batch "
          f"(t {ba['t']} p {ba['p']} d {ba['d']} ep {ba['ep']} cp {ba['cp']} ZeRO-{ba['zero_stage']})")
    print(f"ratio every axis / flat = {t_a / t_f:.1f}; / the flat DP of before "
          f"({TODAY_FLAT_MS} ms) = {t_a * 1e3 / TODAY_FLAT_MS:.1f} (target <= 10)")


if __name__ == "__main__":
    main()
