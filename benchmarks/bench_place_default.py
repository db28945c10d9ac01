"""Benchmark: default-mode placement DP per work item, before and after the placefast rewrite.

A work item = one (arch, mbs, HBM size, recompute flag) over TP widths t in {1, 2, 4, 8},
1024 devices, global batch 1024 sequences, Adam, default links. Chains come from the model
stage's operator graphs (phaze.model.graph.build_graph) with each pass's ops summed
serially under a roofline latency (max(FLOP / 312 TFLOP/s, bytes / 2 TB/s) + 2 us per op,
TP collectives 5 us + bytes / 300 GB/s); gpt2-xl's 25 heads admit only t = 1, so its other
widths use the closed-form chain of phaze.place.synthetic with the same dimensions.
Models: bert-large (seq 512), gpt2-xl (seq 1024), mbs 1, 2, 4, 8; gpt3-175b (seq 2048, mbs 1).

"before" = the recorded figure of the DP before the placefast rewrite (OLD_MS_PER_ITEM,
docs/place.md: measured with a frozen copy of that DP, commit bb8abaf's dp.py, on these
chains at commit ac11e19; the copy is gone); "after" = phaze.place.dp.best_plan per item,
and best_plans (one call for 2 HBM sizes x 2 recompute flags, as the driver groups items)
per item, CPU time, least of 3 runs. Every item's best time per batch is checked to agree
(rel 1e-9) between best_plan and best_plans. Target: >= 20x per item.

Run: PYTHONPATH=. python benchmarks/bench_place_default.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phaze.model.graph import build_graph  # noqa: E402
from phaze.model.zoo import resolve_model  # noqa: E402
from phaze.place import dp  # noqa: E402
from phaze.place.chain import chain_from_graph  # noqa: E402
from phaze.place.synthetic import gpt_chain  # noqa: E402

from cpu_timing import timed  # noqa: E402  (benchmarks/, the script's own folder)

GiB = 1024**3
DEVICES, BATCH, PEAK = 1024, 1024, 312e12
HBMS = (40 * GiB, 80 * GiB)
RECS = ("none", "full")
TARGET = 20.0
# the old DP's CPU ms per item over mbs 1, 2, 4, 8 (gpt3-175b: mbs 1), measured once with
# the frozen copy (docs/place.md); a --quick run compares its own mbs with these averages
OLD_MS_PER_ITEM = {"bert-large": 167.3, "gpt2-xl": 404.4, "gpt3-175b": 379.8}


def roofline_s(op) -> float:
    if op.kind == "collective":
        return 5e-6 + op.comm_bytes / 300e9
    return max(op.flops / PEAK, (op.bytes_read + op.bytes_written) / 2e12) + 2e-6


def make_chain(model: str, seq: int, mbs: int, t: int):
    spec = resolve_model(model)
    if spec.heads % t == 0:
        return chain_from_graph(build_graph(spec, seq=seq, mbs=mbs, tp=t), op_latency_s=roofline_s)
    return gpt_chain(layers=spec.layers, hidden=spec.hidden, heads=spec.heads, seq=seq,
                     vocab=spec.vocab, mbs=mbs, t=t, peak_flops=PEAK, model=model)


def bench(model: str, seq: int, mbss) -> None:
    t_new = t_batch = 0.0
    n_new = 0
    for mbs in mbss:
        chains = [make_chain(model, seq, mbs, t) for t in (1, 2, 4, 8)]
        grouped, sec = timed(lambda: [dp.best_plans(ch, DEVICES, BATCH, HBMS, RECS, peak_flops=PEAK)
                                      for ch in chains])
        t_batch += sec
        for hbm in HBMS:
            for rec in RECS:
                new, sec = timed(lambda: [dp.best_plan(ch, DEVICES, BATCH, rec, hbm_bytes=hbm,
                                                       peak_flops=PEAK) for ch in chains])
                t_new += sec
                n_new += 1
                for g, pl in zip(grouped, new):
                    a = g[(hbm, rec)]
                    assert (a is None) == (pl is None) and (a is None or abs(
                        a["time_per_batch_s"] - pl["time_per_batch_s"]) <= 1e-9 * pl["time_per_batch_s"])
    old_ms = OLD_MS_PER_ITEM[model]
    new_ms = 1e3 * t_new / n_new
    batch_ms = 1e3 * t_batch / n_new
    print(f"{model:<11} seq {seq:<5} mbs {','.join(map(str, mbss)):<8} items {n_new:>3}: "
          f"before {old_ms:8.1f} ms/item (recorded)  after best_plan {new_ms:6.1f} ms/item "
          f"(x{old_ms / new_ms:5.1f})  after best_plans {batch_ms:6.1f} ms/item "
          f"(x{old_ms / batch_ms:5.1f}; target x{TARGET:.0f}: ratio to target "
          f"{old_ms / batch_ms / TARGET:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="mbs 1 and 8 only")
    args = ap.parse_args()
    mbss = (1, 8) if args.quick else (1, 2, 4, 8)
    bench("bert-large", 512, mbss)
    bench("gpt2-xl", 1024, mbss)
    bench("gpt3-175b", 2048, (1,))


if __name__ == "__main__":
    main()
