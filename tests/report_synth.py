"""Small synthetic grid and placement tables that follow docs/cli-contract.md, for the
report tests. The grid's rows (arch id, area, peak FLOP/s) come from the library's arch
table (phaze.hw.arch, area from phaze.hw.area)."""

import json

import numpy as np
import pandas as pd

from phaze.hw.arch import Arch, arch_table
from phaze.units import GiB, MiB


def make_grid(extra=()):
    specs = [(8, 128, 128, 2, 128, 128)] + [  # the TPUv4-like chip first
        (n, r, r, v, r, g) for n, r, v, g in
        [(4, 128, 2, 64), (16, 64, 4, 64), (2, 256, 2, 32), (8, 64, 8, 32), (1, 128, 1, 16),
         (32, 32, 16, 64), (4, 256, 4, 32), (16, 128, 2, 16), (2, 64, 2, 8), (64, 16, 8, 32)]
    ] + list(extra)
    return arch_table([Arch(n_tc=n_tc, tc_rows=r, tc_cols=c, n_vc=n_vc, vc_lanes=lanes,
                            glb_bytes=glb * MiB, clock_hz=1.05e9, hbm_bw_Bps=1.2e12,
                            glb_bw_Bps=1e12)
                       for n_tc, r, c, n_vc, lanes, glb in specs])


def make_place(grid, model="bert-large", seq=512, seed=0, feasible=True, tpu_fixed=(8, 128, 1)):
    """Rows per (arch, mbs, hbm, recompute) for the optimised plan, plus fixed rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for _, a in grid.iterrows():
        base = a["peak_flops"] * (0.3 + 0.4 * rng.random()) / 1e12
        for mbs in (1, 2):
            for hbm in (32, 64):
                for rec in ("none", "full"):
                    for strat in ("optimised", "fixed"):
                        p, d, t = (4, 256, 1) if strat == "optimised" else tpu_fixed
                        thr = base * (1 + 0.05 * mbs) * (0.9 if rec == "full" else 1.0)
                        if strat == "fixed":
                            thr *= 0.7
                        ok = feasible and not (rec == "none" and hbm == 32 and mbs == 2)
                        stages = [hbm * GiB * f for f in (0.8, 0.7, 0.6, 0.5)][:p]
                        tpb = 4096 / thr if ok else np.nan
                        rows.append(dict(
                            arch_id=a["arch_id"], mbs=mbs, hbm_bytes=hbm * GiB, recompute=rec,
                            strategy=strat, p=p, d=d, t=t, stages="[]",
                            time_per_batch_s=tpb, samples_per_s=thr if ok else np.nan,
                            tokens_per_s=thr * seq if ok else np.nan, mfu=0.4 if ok else np.nan,
                            memory_per_device_bytes=max(stages) if ok else np.nan,
                            stage_memory_bytes=json.dumps(stages if ok else []),
                            breakdown_compute_s=0.7 * tpb, breakdown_bubble_s=0.2 * tpb,
                            breakdown_dp_allreduce_s=0.1 * tpb,
                            single_chip_latency_s=mbs * 1e3 / (a["peak_flops"] * (0.5 + rng.random()) / 1e12),
                            reason="" if ok else "out of memory: stage 1 needs 91.2 GiB > HBM",
                        ))
    df = pd.DataFrame(rows)
    df.insert(0, "seq", seq)
    df.insert(0, "model", model)
    return df


def place_work_items(grid, model="bert-large", seq=512, hbm_gib=(32, 80),
                     recompute=("none", "full"), layers=24, hidden=1024, heads=16, seed=0):
    """Work items for the real `phaze place --work-items` (closed-form GPT-like chains,
    phaze.place.synthetic) on every arch of the grid: each arch's peak FLOP/s, with an
    efficiency that varies by arch so that the ranking is not just peak FLOP/s."""
    rng = np.random.default_rng(seed)
    items = []
    for _, a in grid.iterrows():
        eff = float(0.3 + 0.5 * rng.random())
        for hbm in hbm_gib:
            for rec in recompute:
                items.append({"model": model, "seq": seq, "arch_id": a["arch_id"], "mbs": 1,
                              "hbm_bytes": hbm * GiB, "recompute": rec,
                              "synthetic": {"layers": layers, "hidden": hidden, "heads": heads,
                                            "vocab": 30522, "tps": [1],
                                            "peak_flops": float(a["peak_flops"]),
                                            "efficiency": eff}})
    return items
