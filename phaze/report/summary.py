"""The summary table: per (model, seq), the best co-designed chip and plan, its baselines
(TPUv4-like chip with the optimised and the fixed Megatron plan, Spotlight-style pick)
and the speedups, with a plain-language note wherever the co-designed chip does not win
or a baseline is missing, and an explicit 'infeasible' row when nothing fits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from phaze.search.baselines import megatron_fixed, spotlight_pick, spotlight_scores, tpuv4_arch_id
from phaze.units import GiB, MiB

SUMMARY_COLUMNS = [
    "model", "seq", "status", "best_arch_id", "best_arch", "best_area_mm2", "best_plan",
    "best_samples_per_s", "best_tokens_per_s", "best_mfu",
    "tpuv4_arch_id", "tpuv4_opt_plan", "tpuv4_opt_samples_per_s",
    "tpuv4_fixed_strategy", "tpuv4_fixed_samples_per_s",
    "spotlight_arch_id", "spotlight_arch", "spotlight_samples_per_s",
    "speedup_vs_tpuv4_opt", "speedup_vs_tpuv4_fixed", "speedup_vs_spotlight",
    "n_archs", "n_feasible_archs", "evaluate_command", "notes",
]
WIN_RTOL = 1e-9


def arch_label(row) -> str:
    """Short human description of an arch row of the grid."""
    try:
        glb = row["glb_bytes"] / MiB
        return (f"{int(row['n_tc'])}x TC {int(row['tc_rows'])}x{int(row['tc_cols'])}, "
                f"{int(row['n_vc'])}x VC {int(row['vc_lanes'])}, GLB {glb:g} MiB")
    except (KeyError, TypeError, ValueError):
        return str(row.get("arch_id", ""))


def plan_label(row) -> str:
    parts = []
    for k in ("p", "d", "t"):
        if k in row and pd.notna(row[k]):
            parts.append(f"{k}={int(row[k])}")
    if "mbs" in row and pd.notna(row["mbs"]):
        parts.append(f"mbs={int(row['mbs'])}")
    if "hbm_bytes" in row and pd.notna(row["hbm_bytes"]):
        parts.append(f"HBM={row['hbm_bytes'] / GiB:g}GiB")
    if "recompute" in row and pd.notna(row["recompute"]):
        parts.append(f"recompute={row['recompute']}")
    return " ".join(parts)


def evaluate_command(row, grid_path: str, config_path: str | None) -> str:
    """The `phaze evaluate` command that recomputes a placement row (same chip, plan,
    stages and sweep settings), for the report's reader to paste."""
    import json
    import shlex

    parts = ["phaze", "evaluate", "--model", str(row["model"]), "--seq", str(int(row["seq"]))]
    if config_path:
        parts += ["--config", str(config_path)]
    parts += ["--grid", str(grid_path), "--arch", str(row["arch_id"]),
              "--tp", str(int(row["t"])), "--pp", str(int(row["p"])),
              "--dp", str(int(row["d"])), "--mbs", str(int(row["mbs"])),
              "--recompute", str(row["recompute"]),
              "--hbm-gib", f"{float(row['hbm_bytes']) / GiB:.17g}",
              "--interleave", str(int(row["interleave"]))]
    if row.get("sequence_parallel") is True or row.get("sequence_parallel") == 1:
        parts.append("--sequence-parallel")
    stages = row.get("stages")
    if isinstance(stages, str) and stages:
        parts += ["--stages", json.dumps(json.loads(stages), separators=(",", ":"))]
    return " ".join(shlex.quote(p) for p in parts)


def _best(rows: pd.DataFrame):
    ok = rows[rows["samples_per_s"].notna()]
    if ok.empty:
        return None
    ok = ok.sort_values(["samples_per_s", "area_mm2", "arch_id"],
                        ascending=[False, True, True], kind="mergesort")
    return ok.iloc[0]


def _values(rows, col):
    if col not in rows.columns:
        return "?"
    vals = sorted(v for v in rows[col].dropna().unique())
    if col == "hbm_bytes":
        return ",".join(f"{v / GiB:g}" for v in vals) + " GiB"
    return ",".join(str(v) for v in vals)


def infeasible_reason(rows: pd.DataFrame) -> str:
    """Why nothing fits, from the rows (all infeasible) of one (model, seq)."""
    n_arch = rows["arch_id"].dropna().nunique()
    if n_arch == 0:
        return "the placement table has no rows: no (arch, mbs, HBM, recompute) fits"
    why = ""
    if "reason" in rows.columns:
        reasons = rows["reason"].dropna().astype(str)
        reasons = reasons[reasons != ""]
        if not reasons.empty:
            top = reasons.value_counts().index[0]
            why = f"; most common reason: {top}"
    return (f"no feasible design: out of memory at every mbs/recompute/HBM tried on all "
            f"{n_arch} archs (mbs {_values(rows, 'mbs')}; HBM {_values(rows, 'hbm_bytes')}; "
            f"recompute {_values(rows, 'recompute')}){why}; fix: allow larger HBM, "
            f"recomputation, tensor parallelism or more devices")


def _speedup(best: float, base: float) -> float:
    if not (math.isfinite(best) and math.isfinite(base) and base > 0):
        return float("nan")
    return best / base


def summarise(place: pd.DataFrame, grid: pd.DataFrame,
              latency: pd.DataFrame | None = None, reproduce: dict | None = None) -> pd.DataFrame:
    """One row per (model, seq); see SUMMARY_COLUMNS. `reproduce` {"grid": path,
    "config": path or None} names the files in each best design's evaluate_command."""
    reproduce = reproduce or {"grid": "GRID.parquet", "config": None}
    grid = grid.copy()
    grid["arch_id"] = grid["arch_id"].astype(str)
    info = grid.set_index("arch_id")
    place = place.copy()
    place["arch_id"] = place["arch_id"].astype(object).where(place["arch_id"].notna(), None)
    place = place.merge(grid[["arch_id", "area_mm2"]], on="arch_id", how="left") \
        if "area_mm2" not in place.columns else place
    tpu = tpuv4_arch_id(grid)
    a_max = float(grid["area_mm2"].max()) if len(grid) else float("nan")
    out = []
    for (model, seq), rows in place.groupby(["model", "seq"], sort=True):
        opt = rows[rows["strategy"] == "optimised"]
        fixed = rows[rows["strategy"] == "fixed"]
        r = {c: np.nan for c in SUMMARY_COLUMNS}
        r.update(model=model, seq=int(seq), notes="",
                 n_archs=int(opt["arch_id"].dropna().nunique()),
                 n_feasible_archs=int(opt.loc[opt["samples_per_s"].notna(), "arch_id"].nunique()))
        notes = []
        best = _best(opt)
        if best is None:
            r["status"] = "infeasible"
            r["notes"] = infeasible_reason(opt if not opt.empty else rows)
            out.append(r)
            continue
        r["status"] = "ok"
        bid = str(best["arch_id"])
        r.update(best_arch_id=bid, best_area_mm2=float(best["area_mm2"]),
                 best_arch=arch_label(info.loc[bid].to_dict() | {"arch_id": bid})
                 if bid in info.index else bid,
                 best_plan=plan_label(best), best_samples_per_s=float(best["samples_per_s"]),
                 best_tokens_per_s=float(best.get("tokens_per_s", np.nan)),
                 best_mfu=float(best.get("mfu", np.nan)),
                 evaluate_command=evaluate_command(best, reproduce["grid"], reproduce["config"]))
        bthr = r["best_samples_per_s"]

        # TPUv4-like chip, optimised plan and fixed Megatron plan
        if tpu is None:
            notes.append("the TPUv4-like chip is outside the grid, so it was not evaluated "
                         "(add it to the sweep to compare)")
        else:
            r["tpuv4_arch_id"] = tpu
            t_opt = _best(opt[opt["arch_id"] == tpu])
            if t_opt is None:
                notes.append("the TPUv4-like chip has no plan that fits in HBM"
                             if (opt["arch_id"] == tpu).any()
                             else "the TPUv4-like chip is in the grid but not in the placement table")
            else:
                r["tpuv4_opt_plan"] = plan_label(t_opt)
                r["tpuv4_opt_samples_per_s"] = float(t_opt["samples_per_s"])
                r["speedup_vs_tpuv4_opt"] = _speedup(bthr, r["tpuv4_opt_samples_per_s"])
                if bid == tpu:
                    notes.append(f"the TPUv4-like chip is itself the best design: the grid holds "
                                 f"no faster chip within the area budget ({a_max:.1f} mm^2)")
            pdt = megatron_fixed(model)
            t_fix = fixed[fixed["arch_id"] == tpu]
            if not t_fix.empty and {"p", "d", "t"} <= set(t_fix.columns):
                f0 = t_fix.iloc[0]
                if all(pd.notna(f0[k]) for k in "pdt"):
                    pdt = (int(f0["p"]), int(f0["d"]), int(f0["t"]))
            if pdt is not None:
                r["tpuv4_fixed_strategy"] = "x".join(str(v) for v in pdt)
            fbest = _best(t_fix)
            if fbest is not None:
                r["tpuv4_fixed_samples_per_s"] = float(fbest["samples_per_s"])
                r["speedup_vs_tpuv4_fixed"] = _speedup(bthr, r["tpuv4_fixed_samples_per_s"])
            elif pdt is None:
                notes.append("no published fixed Megatron strategy for this model")
            elif t_fix.empty:
                notes.append("no fixed-strategy rows for the TPUv4-like chip in the placement table")
            else:
                notes.append(f"the fixed Megatron strategy p x d x t = {r['tpuv4_fixed_strategy']} "
                             "does not fit on the TPUv4-like chip at any mbs/HBM/recompute")

        # Spotlight-style pick: single-chip latency only, then placed by the DP
        scores = None
        if latency is not None and not latency.empty:
            lat = latency
            if "model" in lat.columns:
                lat = lat[(lat["model"] == model) & (lat.get("seq", seq) == seq)]
            scores = spotlight_scores(lat) if not lat.empty else None
        elif "single_chip_latency_s" in opt.columns:
            s = opt.dropna(subset=["single_chip_latency_s"])
            if not s.empty:
                per = s["single_chip_latency_s"] / (s["mbs"] if "mbs" in s.columns else 1)
                scores = per.groupby(s["arch_id"]).min()
        pick = spotlight_pick(scores, grid) if scores is not None else None
        if pick is None:
            notes.append("Spotlight-style pick unavailable: no single-chip latencies "
                         "(pass --latency)")
        else:
            r["spotlight_arch_id"] = pick
            r["spotlight_arch"] = arch_label(info.loc[pick].to_dict()) if pick in info.index else pick
            s_best = _best(opt[opt["arch_id"] == pick])
            if s_best is None:
                notes.append("the Spotlight-style pick has no plan that fits in HBM "
                             "(the operator-only search ignores memory)")
            else:
                r["spotlight_samples_per_s"] = float(s_best["samples_per_s"])
                r["speedup_vs_spotlight"] = _speedup(bthr, r["spotlight_samples_per_s"])
                if pick == bid:
                    notes.append("the Spotlight-style pick is the co-designed chip: placement "
                                 "does not change the choice here")

        sp = r["speedup_vs_tpuv4_opt"]
        if tpu is not None and bid != tpu and math.isfinite(sp) and sp <= 1 + WIN_RTOL:
            notes.append("the co-designed chip only ties the TPUv4-like chip")
        out.append({**r, "notes": "; ".join(notes)})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_terminal(summary: pd.DataFrame, width: int = 100) -> str:
    """The summary as a terminal table, notes under each row."""
    head = (f"{'model':<18} {'seq':>5}  {'best chip (area mm^2)':<30} {'samples/s':>10} "
            f"{'xTPUv4':>7} {'xTPUfix':>7} {'xSpot':>7}")
    lines = [head, "-" * len(head)]
    for _, r in summary.iterrows():
        if r["status"] != "ok":
            lines.append(f"{r['model']:<18} {r['seq']:>5}  INFEASIBLE")
        else:
            chip = f"{str(r['best_arch_id'])[:12]} ({r['best_area_mm2']:.1f})"
            lines.append(f"{r['model']:<18} {r['seq']:>5}  {chip:<30} "
                         f"{_fmt(r['best_samples_per_s'], '10.1f')} "
                         f"{_fmt(r['speedup_vs_tpuv4_opt'], '7.2f')} "
                         f"{_fmt(r['speedup_vs_tpuv4_fixed'], '7.2f')} "
                         f"{_fmt(r['speedup_vs_spotlight'], '7.2f')}")
            lines.append(f"{'':<25}{r['best_arch']}; {r['best_plan']}")
        if r["notes"]:
            import textwrap
            for ln in textwrap.wrap("note: " + r["notes"], width=width - 25):
                lines.append(" " * 25 + ln)
    return "\n".join(lines)
