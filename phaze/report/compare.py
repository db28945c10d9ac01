"""The co-designed chip next to each baseline: every arch parameter, the area split, peak
FLOP/s, HBM, the plan, MFU, the time breakdown, and the speedup decomposed.

Decomposition (exact): samples/s = batch / T and MFU = F / (T * N * peak), F the plan's
model FLOPs per batch and N its devices, so
    speedup = (peak_w / peak_b) * (MFU_w / MFU_b) * (N_w / N_b) * (F_b / F_w),
the last two 1 when both plans use the same devices and count the same FLOPs."""

from __future__ import annotations

import json
import math

import pandas as pd

from phaze.hw.area import area_breakdown_mm2
from phaze.report.runnable import _is_on
from phaze.units import GiB, MiB

PARTS = ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "optimizer_s", "tp_s")


def _devices(r) -> float:
    """Devices of a placement row's plan: t p d cp (context parallelism multiplies the
    devices of every pipeline stage; evaluate_plan's `devices`). A row without a cp
    column (an older table) has cp 1."""
    cp = r.get("cp") if hasattr(r, "get") else None
    cp = float(cp) if cp is not None and pd.notna(cp) else 1.0
    return float(r["p"] * r["d"] * r["t"]) * cp


def _flops(r, peak) -> float:
    return float(r["mfu"]) * float(r["time_per_batch_s"]) * _devices(r) * peak


def chip_rows(arch: dict) -> list[tuple[str, str]]:
    a = area_breakdown_mm2(int(arch["n_tc"]), int(arch["tc_rows"]), int(arch["tc_cols"]),
                           int(arch["n_vc"]), int(arch["vc_lanes"]), float(arch["glb_bytes"]))
    return [("arch_id", str(arch["arch_id"])),
            ("tensor cores", f"{int(arch['n_tc'])} x {int(arch['tc_rows'])}x{int(arch['tc_cols'])}"),
            ("vector cores", f"{int(arch['n_vc'])} x {int(arch['vc_lanes'])} lanes"),
            ("global buffer", f"{arch['glb_bytes'] / MiB:g} MiB"),
            ("clock", f"{arch['clock_hz'] / 1e9:g} GHz"),
            ("area TC / VC / GLB", f"{a['tc_mm2']:.1f} / {a['vc_mm2']:.2f} / {a['glb_mm2']:.1f} mm^2"),
            ("area total", f"{a['area_mm2']:.1f} mm^2"),
            ("peak (tensor cores)", f"{arch['peak_flops'] / 1e12:.1f} TFLOP/s per device"),
            ("HBM bandwidth", f"{arch['hbm_bw_Bps'] / 1e12:g} TB/s")]


def plan_rows(r, peak: float) -> list[tuple[str, str]]:
    # a table's boolean column holds numpy bools (`is True` is False for np.True_)
    sp = "yes" if _is_on(r.get("sequence_parallel")) else "no"
    out = [("HBM capacity", f"{r['hbm_bytes'] / GiB:g} GiB"),
           ("plan p x d x t", f"{int(r['p'])} x {int(r['d'])} x {int(r['t'])}"
                              + "".join(f" x {k} {int(r[k])}" for k in ("cp", "ep")
                                        if pd.notna(r.get(k)) and r.get(k) > 1)
                              + f" ({int(_devices(r))} devices)"),
           ("microbatch, recompute", f"{int(r['mbs'])}, {r['recompute']}"),
           ("interleave, sequence parallel, ZeRO stage",
            f"{int(r['interleave'])}, {sp}, {int(r['zero_stage']) if pd.notna(r.get('zero_stage')) else 0}"),
           ("stages (layer ranges)", str(r.get("stages", ""))),
           ("samples/s", f"{r['samples_per_s']:,.1f}"),
           ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
           ("MFU", f"{r['mfu']:.3f}"),
           ("achieved", f"{r['mfu'] * peak / 1e12:.1f} TFLOP/s per device"),
           ("time per batch", f"{r['time_per_batch_s'] * 1e3:.2f} ms")]
    for k in PARTS:
        if k in r.index and pd.notna(r[k]):
            share = r[k] / r["time_per_batch_s"]
            out.append((f"  {k[:-2].replace('_', ' ')}", f"{r[k] * 1e3:.2f} ms ({share:.0%})"))
    out.append(("memory per device", f"{r['memory_per_device_bytes'] / GiB:.2f} GiB of "
                f"{r['hbm_bytes'] / GiB:g} GiB"))
    return out


def decompose(w, b, peak_w: float, peak_b: float) -> dict:
    """Factors of the speedup of row w over row b (their product is the speedup)."""
    return {"speedup": w["samples_per_s"] / b["samples_per_s"],
            "peak": peak_w / peak_b, "mfu": w["mfu"] / b["mfu"],
            "devices": _devices(w) / _devices(b),
            "flops": _flops(b, peak_b) / _flops(w, peak_w)}


# throughputs closer than this are "the same" in the report's prose (a ratio printed to two
# decimals would read 1.00x)
SAME_RATE = 0.005


def memory_effect(place: pd.DataFrame, w, b) -> str:
    """What memory allowed: the co-designed chip's best plan within the baseline's HBM."""
    rows = place[(place["model"] == w["model"]) & (place["seq"] == w["seq"])
                 & (place["arch_id"] == w["arch_id"]) & (place["strategy"] == "optimised")
                 & place["samples_per_s"].notna()]
    cap = float(b["hbm_bytes"])
    fit = rows[rows["memory_per_device_bytes"] <= cap * (1 + 1e-12)]
    used = f"its plan uses {w['memory_per_device_bytes'] / GiB:.2f} GiB per device"
    if fit.empty:
        return f"{used}; no plan of the co-designed chip fits in the baseline's {cap / GiB:g} GiB"
    best = fit["samples_per_s"].max()
    if best >= w["samples_per_s"] * (1 - 1e-12):
        return (f"{used}, which also fits in the baseline's {cap / GiB:g} GiB: memory "
                f"capacity is not what makes the difference")
    if best >= w["samples_per_s"] * (1 - SAME_RATE):
        return (f"{used}; limited to the baseline's {cap / GiB:g} GiB its best plan gives "
                f"{best:,.1f} samples/s, within {SAME_RATE:.1%}: the larger HBM makes almost "
                f"none of the difference")
    return (f"{used}; limited to the baseline's {cap / GiB:g} GiB its best plan gives "
            f"{best:,.1f} samples/s ({w['samples_per_s'] / best:.2f}x less): that much of the "
            f"speedup comes from the larger HBM")


def stage_memory(r) -> list[dict]:
    v = r.get("stage_memory")
    if isinstance(v, str) and v:
        return json.loads(v)
    return []


def fmt_factor(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.3f}x"
