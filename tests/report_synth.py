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
                        split = {"weights": 0.2, "grads": 0.2, "optimizer": 0.0,
                                 "activations": 0.5, "buffers": 0.1}
                        rows.append(dict(
                            arch_id=a["arch_id"], mbs=mbs, hbm_bytes=hbm * GiB, recompute=rec,
                            strategy=strat, p=p, d=d, t=t, stages="[]",
                            time_per_batch_s=tpb, samples_per_s=thr if ok else np.nan,
                            tokens_per_s=thr * seq if ok else np.nan, mfu=0.4 if ok else np.nan,
                            memory_per_device_bytes=max(stages) if ok else np.nan,
                            stage_memory_bytes=json.dumps(stages if ok else []),
                            stage_memory=json.dumps([{k: f * m for k, f in split.items()}
                                                     for m in stages]) if ok else None,
                            **{f"memory_{k}_bytes": f * max(stages) if ok else np.nan
                               for k, f in split.items()},
                            breakdown_compute_s=0.7 * tpb, breakdown_bubble_s=0.2 * tpb,
                            breakdown_dp_allreduce_s=0.1 * tpb,
                            single_chip_latency_s=mbs * 1e3 / (a["peak_flops"] * (0.5 + rng.random()) / 1e12),
                            reason="" if ok else "out of memory: stage 1 needs 91.2 GiB > HBM",
                        ))
    df = pd.DataFrame(rows)
    df.insert(0, "seq", seq)
    df.insert(0, "model", model)
    # the placement table's schema (phaze.place.table.PLACE_SCHEMA)
    df["row_kind"] = df.pop("strategy").map({"optimised": "best", "fixed": "fixed"})
    df["item"] = np.arange(len(df)) // 2
    df["feasible"] = df["samples_per_s"].notna()
    df["sequence_parallel"], df["fused"], df["interleave"] = False, True, 1.0
    for part, col in (("compute_s", "breakdown_compute_s"), ("bubble_s", "breakdown_bubble_s"),
                      ("dp_sync_s", "breakdown_dp_allreduce_s")):
        df[part] = df[col]
    df["p2p_s"], df["tp_s"], df["optimizer_s"] = 0.0, 0.0, 0.0
    df["ep"], df["cp"], df["zero_stage"] = 1.0, 1.0, 1.0
    df["method"], df["solve_seconds"], df["phaze_version"] = "synthetic", 0.0, "test"
    for c in ("p", "d", "t"):
        df[c] = df[c].astype(float)
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


def latency_frame(rows, model, seq, mbs, tp=1):
    """Latency-table rows (arch_id, layer_index, layer_repeat, fwd_s, bwd_s) completed to
    phaze.sched.table.LATENCY_SCHEMA (proven optimal, no recompute pass)."""
    from phaze.sched.table import LATENCY_SCHEMA

    df = pd.DataFrame(rows)
    df["model"], df["seq"], df["mbs"], df["tp"] = model, seq, mbs, tp
    df["sequence_parallel"], df["fused"] = False, True
    df["attention"], df["vocab_pad_multiple"], df["cp"], df["ep"] = "eager", 1, 1, 0
    df["layer_kind"] = np.where(df["layer_index"] == 0, "prologue", "block")
    df["recompute_s"] = 0.0
    for p in ("fwd", "bwd", "recompute"):
        df[f"{p}_lower_bound_s"] = df[f"{p}_s"]
        df[f"{p}_core_s"] = 0.0
        df[f"{p}_status"], df[f"{p}_gap"] = "optimal", 0.0
    df["solver"], df["seconds"], df["phaze_version"] = "synthetic", 0.0, "test"
    return df[list(LATENCY_SCHEMA)]
