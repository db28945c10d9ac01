"""Benchmark: the default-mode placement DP on a 3-level network vs the flat (two-level)
network, 1024 devices.

Item: a GPT-3-175B-like closed-form chain (phaze.place.synthetic.gpt_chain: 96 blocks,
hidden 12288, seq 2048, mbs 1) for t in {1, 2, 4, 8}, global batch 1024, mixed-precision
Adam with ZeRO-1, 2 HBM sizes x 2 recompute modes per call (best_plans, as the driver
groups items). Flat: Network() (8 per node + cluster); levels: dgx-h100-superpod (node,
256-GPU scalable unit, spine). CPU time, least of 3 runs. Prints the ratio levels / flat
(target: <= 10).

Pipeline hops cost the level they cross (docs/place.md#levels). Expert / context
parallelism and ZeRO-2/3 as searched axes: benchmarks/bench_place_axes.py.

Run: PYTHONPATH=. python benchmarks/bench_place_levels.py
"""

from __future__ import annotations

from phaze.hw.arch import Network
from phaze.hw.presets import NETWORKS
from phaze.place.dp import best_plans
from phaze.place.plan import Links, PlanOptions
from phaze.place.synthetic import gpt_chain

from cpu_timing import timed  # benchmarks/ (the script's own folder)

GiB = 1024**3


def run(network: Network):
    links = Links.of(network)
    opt = PlanOptions(optimizer="adam", zero1=True)
    out = {}
    for t in (1, 2, 4, 8):
        ch = gpt_chain(layers=96, hidden=12288, heads=96, seq=2048, mbs=1, t=t)
        out[t] = best_plans(ch, 1024, 1024, [80 * GiB, 141 * GiB], ["none", "full"],
                            links=links, options=opt)
    return out


def main() -> None:
    flat, t_flat = timed(lambda: run(Network()))
    lev, t_lev = timed(lambda: run(NETWORKS["dgx-h100-superpod"]))
    best = lambda res: min((p["time_per_batch_s"] for r in res.values() for p in r.values()  # noqa: E731
                            if p), default=float("nan"))
    print(f"flat network : {t_flat * 1e3:8.1f} ms CPU  best time/batch {best(flat):.3f} s")
    print(f"3-level      : {t_lev * 1e3:8.1f} ms CPU  best time/batch {best(lev):.3f} s")
    print(f"ratio levels / flat = {t_lev / t_flat:.2f} (target <= 10)")


if __name__ == "__main__":
    main()
