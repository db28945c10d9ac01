"""The summary table: per (model, seq), the best co-designed chip and plan, its baselines
(TPUv4-like chip with the optimised and the fixed Megatron plan, Spotlight-style pick)
and the speedups, with a plain-language note wherever the co-designed chip does not win
or a baseline is missing, and an explicit 'infeasible' row when nothing fits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from phaze.report.runnable import _is_on, chunk_blocks
from phaze.search.baselines import spotlight_pick, spotlight_scores, tpuv4_arch_id
from phaze.units import GiB, MiB

TPUV4_HBM_GIB = 32.0  # a TPUv4 chip's HBM (the tpuv4 preset); `phaze report --tpuv4-hbm-gib`

SUMMARY_COLUMNS = [
    "model", "seq", "status", "best_arch_id", "best_arch", "best_area_mm2", "best_plan",
    "best_samples_per_s", "best_tokens_per_s", "best_mfu", "best_tflops_per_device",
    "tpuv4_arch_id", "tpuv4_hbm_bytes", "tpuv4_opt_plan", "tpuv4_opt_samples_per_s",
    "tpuv4_fixed_strategy", "tpuv4_fixed_samples_per_s",
    "spotlight_arch_id", "spotlight_arch", "spotlight_samples_per_s", "spotlight_is_best",
    "speedup_vs_tpuv4_opt", "speedup_vs_tpuv4_fixed", "speedup_vs_spotlight",
    "n_archs_evaluated", "n_archs_grid", "n_feasible_archs", "evaluate_command",
    "tpuv4_opt_evaluate_command", "tpuv4_fixed_evaluate_command", "notes",
    # how the row was obtained (provenance): the phaze versions of its placement rows, the
    # placement method, the layer schedules' solvers, ILPs proven optimal of all, worst gap
    "phaze_version", "placement_method", "solvers", "ilps_optimal", "ilps", "worst_ilp_gap",
]
# the command that recomputes each design's row: (role, summary column)
COMMANDS = (("best design", "evaluate_command"),
            ("TPUv4-like, optimised plan", "tpuv4_opt_evaluate_command"),
            ("TPUv4-like, fixed plan", "tpuv4_fixed_evaluate_command"))
WIN_RTOL = 1e-9


def arch_label(row, grid: pd.DataFrame | None = None) -> str:
    """Short human description of an arch row of the grid; with the `grid`, its clock and
    HBM bandwidth too where the grid varies them (so two chips' labels differ)."""
    try:
        glb = row["glb_bytes"] / MiB
        out = (f"{int(row['n_tc'])}x TC {int(row['tc_rows'])}x{int(row['tc_cols'])}, "
               f"{int(row['n_vc'])}x VC {int(row['vc_lanes'])}, GLB {glb:g} MiB")
        if grid is not None and "clock_hz" in grid and grid["clock_hz"].nunique() > 1:
            out += f", {row['clock_hz'] / 1e9:g} GHz"
        if grid is not None and "hbm_bw_Bps" in grid and grid["hbm_bw_Bps"].nunique() > 1:
            out += f", HBM {row['hbm_bw_Bps'] / 1e12:g} TB/s"
        return out
    except (KeyError, TypeError, ValueError):
        return str(row.get("arch_id", ""))


def stage_blocks(stages) -> list[int]:
    """Transformer blocks per pipeline stage (chunk) of a row's stages column (JSON layer
    ranges over prologue, blocks, epilogue: runnable.chunk_blocks)."""
    import json

    if isinstance(stages, str):
        stages = json.loads(stages) if stages else []
    if not isinstance(stages, (list, tuple, np.ndarray)) or len(stages) == 0:
        return []
    return chunk_blocks(stages, stages[-1][1])


def plan_label(row) -> str:
    parts = []
    for k in ("p", "d", "t"):
        if k in row and pd.notna(row[k]):
            parts.append(f"{k}={int(row[k])}")
    # the other axes only where the plan uses them, so that two plans never read the same
    for k, name in (("cp", "cp"), ("ep", "ep"), ("interleave", "v")):
        if k in row and pd.notna(row[k]) and int(row[k]) > 1:
            parts.append(f"{name}={int(row[k])}")
    blocks = stage_blocks(row.get("stages"))
    if len(set(blocks)) > 1:       # the DP's uneven split, not Megatron's uniform one
        parts.append("blocks=" + ",".join(map(str, blocks)))
    if _is_on(row.get("sequence_parallel")):
        parts.append("sp")
    if "zero_stage" in row and pd.notna(row["zero_stage"]) and int(row["zero_stage"]) > 0:
        parts.append(f"zero={int(row['zero_stage'])}")
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
    for col, flag in (("ep", "--ep"), ("cp", "--cp"), ("zero_stage", "--zero-stage")):
        if pd.notna(row.get(col, None)):
            parts += [flag, str(int(row[col]))]
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


def infeasible_reason(rows: pd.DataFrame, n_grid: int | None = None,
                      config: dict | None = None) -> str:
    """Why nothing fits, from the rows (all infeasible) of one (model, seq): on how many
    archs (of the grid's `n_grid`; a pruned run evaluates some of them) at which mbs, HBM
    and recompute values, and a fix naming only what the sweep did not try (`config`,
    the sweep's, names the model's tp widths)."""
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
    where = f"on all {n_arch} archs" if not n_grid or n_grid <= n_arch else \
        (f"on the {n_arch} archs evaluated of the {n_grid} in the grid (the bound pass "
         f"pruned the other {n_grid - n_arch})")
    return (f"no feasible design: out of memory at every mbs/recompute/HBM tried (mbs "
            f"{_values(rows, 'mbs')}; HBM {_values(rows, 'hbm_bytes')}; recompute "
            f"{_values(rows, 'recompute')}) {where}{why}; fix: allow "
            + ", ".join(_untried(rows, config)) + " or more devices (placement.devices)")


def _untried(rows: pd.DataFrame, config: dict | None) -> list[str]:
    """What could make a plan fit that the rows did not try (infeasible_reason's fix)."""
    out = ["larger HBM (placement.hbm_gib)"]
    if "recompute" in rows.columns and "full" not in set(rows["recompute"].dropna()):
        out.append("full recomputation (add full to placement.recompute)")
    if "mbs" in rows.columns and rows["mbs"].notna().any() and rows["mbs"].min() > 1:
        out.append("microbatch size 1 (add 1 to microbatch_sizes)")
    model = rows["model"].iloc[0] if "model" in rows.columns else None
    models = (config or {}).get("models", [])
    i = next((k for k, m in enumerate(models) if m.get("name") == model), None)
    out.append("tensor parallelism" if i is None or not models[i].get("tp") else
               f"tensor parallelism wider than {max(models[i]['tp'])} (models[{i}].tp)")
    return out


def _speedup(best: float, base: float) -> float:
    if not (math.isfinite(best) and math.isfinite(base) and base > 0):
        return float("nan")
    return best / base


def fits(rows: pd.DataFrame, hbm_bytes: float) -> pd.DataFrame:
    """Rows whose plan fits a chip of `hbm_bytes` (whatever HBM size the sweep assumed)."""
    return rows[rows["memory_per_device_bytes"] <= hbm_bytes * (1 + 1e-12)]


def on_chip(row, hbm_bytes: float):
    """A row that fits in `hbm_bytes` (`fits`) as run on a chip of that HBM, the TPUv4-like
    chip's own: the plan, its stages and its time are the row's (the DP sweep's HBM size
    only bounds which plans it may choose); only the capacity it is shown and evaluated
    with becomes the chip's, so the plan string, the comparison, the memory section and
    the evaluate command all name the one size the baseline is compared at."""
    if row is None:
        return None
    row = row.copy()
    row["hbm_bytes"] = float(hbm_bytes)
    return row


def _gib_list(rows: pd.DataFrame) -> list[float]:
    """The HBM sizes (GiB) the rows were swept at."""
    return sorted({float(v) / GiB for v in rows["hbm_bytes"].dropna()}) \
        if "hbm_bytes" in rows.columns else []


def _unswept(gib: float, swept: list[float]) -> bool:
    return bool(swept) and all(abs(g - gib) > 1e-9 * gib for g in swept)


def fixed_plans_of(cfg: dict | None) -> dict | None:
    """{model name: 'PxDxT'} of the config's models with a fixed_plan (None: no config)."""
    if cfg is None:
        return None
    return {m["name"]: m["fixed_plan"] for m in cfg.get("models", []) if m.get("fixed_plan")}


def fixed_plan_obstacle(model: str, pdt: str, cfg: dict | None) -> str | None:
    """Why the fixed plan 'PxDxT' cannot run at all, checked explicitly (None: none of
    these holds, so only memory is left): p must divide the model's transformer blocks
    (Megatron's uniform split, place.plan.uniform_stages), t must be one of the config's tp
    widths, d x mbs must divide the global batch for some microbatch size."""
    from phaze.model.zoo import resolve_model

    p, d, t = (int(x) for x in str(pdt).split("x"))
    try:
        blocks = resolve_model(model).layers
    except Exception:           # a model the zoo cannot resolve here: skip that check
        blocks = None
    if blocks is not None and blocks % p:
        return (f"p = {p} does not divide {model}'s {blocks} transformer blocks "
                f"(Megatron's uniform split); choose a p dividing {blocks}")
    entry = next((m for m in (cfg or {}).get("models", []) if m.get("name") == model), {})
    if entry.get("tp") and t not in entry["tp"]:
        return f"t = {t} is not among the config's tp widths {entry['tp']} for {model}"
    batch, mbs = ((cfg or {}).get("placement") or {}).get("global_batch"), \
        (cfg or {}).get("microbatch_sizes") or []
    if batch and mbs and all(int(batch) % (d * int(b)) for b in mbs):
        return (f"d x mbs does not divide the global batch {batch} for any mbs in "
                f"{list(mbs)} (d = {d})")
    return None


def summarise(place: pd.DataFrame, grid: pd.DataFrame,
              latency: pd.DataFrame | None = None, reproduce: dict | None = None,
              tpuv4_hbm_gib: float = TPUV4_HBM_GIB, fixed_plans: dict | None = None,
              config: dict | None = None) -> pd.DataFrame:
    """One row per (model, seq); see SUMMARY_COLUMNS. `reproduce` {"grid": path,
    "config": path or None} names the files in each design's evaluate command (COMMANDS).
    The TPUv4-like chip is compared with `tpuv4_hbm_gib` of HBM (its plans are the sweep's
    rows that fit in it); its fixed plan is `fixed_plans[model]` (the config's fixed_plan;
    None: whatever fixed rows the tables hold); `config` (the sweep's config, optional)
    lets a fixed plan without rows say why (fixed_plan_obstacle)."""
    reproduce = reproduce or {"grid": "GRID.parquet", "config": None}
    grid = grid.copy()
    grid["arch_id"] = grid["arch_id"].astype(str)
    place = place.copy()
    place["arch_id"] = place["arch_id"].astype(object).where(place["arch_id"].notna(), None)
    place = place.merge(grid[["arch_id", "area_mm2"]], on="arch_id", how="left") \
        if "area_mm2" not in place.columns else place
    ctx = {"info": grid.set_index("arch_id"), "grid": grid, "tpu": tpuv4_arch_id(grid),
           "a_max": float(grid["area_mm2"].max()) if len(grid) else float("nan"),
           "tpu_hbm_gib": tpuv4_hbm_gib, "fixed_plans": fixed_plans, "latency": latency,
           "config": config,
           "reproduce": reproduce}
    out = [_summary_row(model, int(seq), rows, ctx)
           for (model, seq), rows in place.groupby(["model", "seq"], sort=True)]
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def _summary_row(model, seq, rows, ctx) -> dict:
    """The summary row of one (model, seq): winner, TPUv4 baselines, Spotlight pick."""
    opt = rows[rows["strategy"] == "optimised"]
    r = {c: np.nan for c in SUMMARY_COLUMNS}
    r.update(_provenance(model, seq, rows, ctx["latency"]))
    r.update(model=model, seq=seq, notes="",
             n_archs_evaluated=int(opt["arch_id"].dropna().nunique()),
             n_archs_grid=len(ctx["grid"]),
             n_feasible_archs=int(opt.loc[opt["samples_per_s"].notna(), "arch_id"].nunique()))
    best = _best(opt)
    if best is None:
        r["status"] = "infeasible"
        r["notes"] = infeasible_reason(opt if not opt.empty else rows, len(ctx["grid"]),
                                       ctx["config"])
        return r
    r["status"] = "ok"
    _winner(r, best, ctx)
    notes = _tpuv4_baselines(r, model, opt, rows[rows["strategy"] == "fixed"], ctx)
    notes += _spotlight(r, model, seq, opt, ctx)
    sp, tpu = r["speedup_vs_tpuv4_opt"], ctx["tpu"]
    if tpu is not None and r["best_arch_id"] != tpu and math.isfinite(sp) and sp <= 1 + WIN_RTOL:
        notes.append("the co-designed chip only ties the TPUv4-like chip")
    return {**r, "notes": "; ".join(notes)}


def _joined(values) -> str:
    """Distinct non-empty values, sorted, comma-joined ("" for none)."""
    return ",".join(sorted({str(v) for v in values if pd.notna(v) and str(v)}))


def _provenance(model, seq, rows, latency) -> dict:
    """The provenance columns of a (model, seq): from its placement rows (phaze_version,
    method) and its latency rows (solver, statuses and gaps: phaze.report.solver.status;
    NaN / "" without latency tables)."""
    from phaze.report.solver import status

    out = {"phaze_version": _joined(rows.get("phaze_version", ())),
           "placement_method": _joined(rows.get("method", ())), "solvers": ""}
    st = status(latency, {"model": model, "seq": seq})
    if st is not None:
        lat = latency[(latency["model"] == model) & (latency["seq"] == seq)]
        out.update(solvers=_joined(lat["solver"]), ilps_optimal=st["optimal"], ilps=st["ilps"],
                   worst_ilp_gap=st["worst_gap"])
    return out


def _winner(r: dict, best, ctx) -> None:
    info = ctx["info"]
    bid = str(best["arch_id"])
    peak = float(info.loc[bid, "peak_flops"]) if bid in info.index else np.nan
    mfu = float(best.get("mfu", np.nan))
    r.update(best_arch_id=bid, best_tflops_per_device=mfu * peak / 1e12,
             best_area_mm2=float(best["area_mm2"]),
             best_arch=arch_label(info.loc[bid].to_dict() | {"arch_id": bid}, ctx["grid"])
             if bid in info.index else bid,
             best_plan=plan_label(best), best_samples_per_s=float(best["samples_per_s"]),
             best_tokens_per_s=float(best.get("tokens_per_s", np.nan)), best_mfu=mfu,
             evaluate_command=_command(best, ctx))


def _command(row, ctx) -> str:
    return evaluate_command(row, ctx["reproduce"]["grid"], ctx["reproduce"]["config"])


def _tpuv4_baselines(r: dict, model, opt, fixed, ctx) -> list[str]:
    """The TPUv4-like chip at its own HBM: its optimised plan and the configured fixed
    plan, each the fastest swept row that fits in that HBM, shown at that HBM (on_chip).
    Fills r; returns the notes."""
    tpu, gib = ctx["tpu"], ctx["tpu_hbm_gib"]
    if tpu is None:
        return ["the TPUv4-like chip is outside the grid, so it was not evaluated "
                "(add it to the sweep to compare)"]
    notes = []
    tpu_hbm = gib * GiB
    bthr = r["best_samples_per_s"]
    r["tpuv4_arch_id"], r["tpuv4_hbm_bytes"] = tpu, tpu_hbm
    mine = opt[opt["arch_id"] == tpu]
    swept = _gib_list(pd.concat([mine, fixed[fixed["arch_id"] == tpu]]))
    unswept = _unswept(gib, swept)
    if unswept:
        notes.append(f"the TPUv4-like chip's {gib:g} GiB of HBM is not among the swept sizes "
                     f"({', '.join(f'{g:g}' for g in swept)} GiB): its baselines are the "
                     f"swept plans that fit in {gib:g} GiB, and a sweep at {gib:g} GiB may "
                     f"find faster ones (add {gib:g} to placement.hbm_gib)")
    t_opt = on_chip(_best(fits(mine, tpu_hbm)), tpu_hbm)
    if t_opt is None:
        notes.append(f"the TPUv4-like chip has no {'swept ' if unswept else ''}plan that "
                     f"fits in its {gib:g} GiB of HBM" if not mine.empty
                     else "the TPUv4-like chip is in the grid but not in the placement table")
    else:
        r["tpuv4_opt_plan"] = plan_label(t_opt)
        r["tpuv4_opt_evaluate_command"] = _command(t_opt, ctx)
        r["tpuv4_opt_samples_per_s"] = float(t_opt["samples_per_s"])
        r["speedup_vs_tpuv4_opt"] = _speedup(bthr, r["tpuv4_opt_samples_per_s"])
        if r["best_arch_id"] == tpu:
            notes.append(f"the TPUv4-like chip is itself the best design: the grid holds "
                         f"no faster chip within the area budget ({ctx['a_max']:.1f} mm^2)")
    t_fix = fixed[fixed["arch_id"] == tpu]
    plans = ctx["fixed_plans"]
    pdt = plans.get(model) if plans is not None else None
    if plans is None and not t_fix.empty:
        f0 = t_fix.iloc[0]
        if all(pd.notna(f0[k]) for k in "pdt"):
            pdt = "x".join(str(int(f0[k])) for k in "pdt")
    if pdt is not None:
        r["tpuv4_fixed_strategy"] = str(pdt)
    fbest = on_chip(_best(fits(t_fix, tpu_hbm)), tpu_hbm) if pdt is not None else None
    if fbest is not None:
        r["tpuv4_fixed_samples_per_s"] = float(fbest["samples_per_s"])
        r["tpuv4_fixed_evaluate_command"] = _command(fbest, ctx)
        r["speedup_vs_tpuv4_fixed"] = _speedup(bthr, r["tpuv4_fixed_samples_per_s"])
    elif pdt is None:
        notes.append("no fixed plan configured for this model (the config's fixed_plan: PxDxT)")
    elif t_fix.empty:
        notes.append("no fixed-strategy rows for the TPUv4-like chip in the placement table")
    else:
        notes.append(f"the fixed plan p x d x t = {pdt} gives no plan on the TPUv4-like "
                     f"chip: " + _fixed_cause(model, pdt, t_fix, gib, ctx["config"], swept))
    return notes


def _fixed_cause(model, pdt, t_fix, gib, cfg, swept=()) -> str:
    """Which cause holds for a fixed plan without a fitting row: an explicit obstacle
    (fixed_plan_obstacle), else memory (with the smallest need when the rows carry it):
    more than the chip's `gib`, or within it but above every swept HBM size (`swept`,
    GiB), so that no row was feasible although the chip would hold the plan."""
    why = fixed_plan_obstacle(model, pdt, cfg)
    if why is not None:
        return why
    need = t_fix["memory_per_device_bytes"].dropna() if "memory_per_device_bytes" in t_fix \
        else pd.Series(dtype=float)
    least = need.min() / GiB if not need.empty else math.nan
    if least <= gib * (1 + 1e-12) and swept and max(swept) < least:
        return (f"its smallest plan needs {least:.2f} GiB per device, more than every swept "
                f"HBM size ({', '.join(f'{g:g}' for g in swept)} GiB) but within the chip's "
                f"{gib:g} GiB, which the sweep did not try; fix: add {gib:g} to "
                f"placement.hbm_gib")
    at = f" (the smallest plan needs {least:.2f} GiB per device)" if least == least else ""
    return f"it does not fit in {gib:g} GiB at any mbs/recompute tried{at}"


def _spotlight(r: dict, model, seq, opt, ctx) -> list[str]:
    """The Spotlight-style pick: fastest single chip by layer latency (placement-blind),
    then placed by the DP. Fills r; returns the notes."""
    latency, info, bid = ctx["latency"], ctx["info"], r["best_arch_id"]
    scores = None
    if latency is not None and not latency.empty:
        lat = latency[(latency["model"] == model) & (latency["seq"] == seq)]
        scores = spotlight_scores(lat) if not lat.empty else None
    elif "single_chip_latency_s" in opt.columns:
        s = opt.dropna(subset=["single_chip_latency_s"])
        if not s.empty:
            per = s["single_chip_latency_s"] / s["mbs"]
            scores = per.groupby(s["arch_id"]).min()
    pick = spotlight_pick(scores, ctx["grid"]) if scores is not None and len(scores) else None
    if pick is None:
        if latency is not None and not latency.empty:
            # tables given, none of them a single chip's: the sweep's tp / cp lists lack 1
            return ["Spotlight-style pick unavailable: the sweep timed no layer on a single "
                    "chip for this model (tp 1, cp 1); add 1 to its models[].tp (and cp)"]
        return ["Spotlight-style pick unavailable: no single-chip latencies (pass --latency)"]
    r["spotlight_arch_id"], r["spotlight_is_best"] = pick, pick == bid
    r["spotlight_arch"] = arch_label(info.loc[pick].to_dict(), ctx["grid"]) \
        if pick in info.index else pick
    s_best = _best(opt[opt["arch_id"] == pick])
    if s_best is None:
        return ["the Spotlight-style pick has no plan that fits in HBM (the operator-only "
                "search ignores memory)"]
    r["spotlight_samples_per_s"] = float(s_best["samples_per_s"])
    r["speedup_vs_spotlight"] = _speedup(r["best_samples_per_s"], r["spotlight_samples_per_s"])
    if pick == bid:   # the same chip: a 1x speedup, and the note says why
        return ["the Spotlight-style pick (fastest single chip, placement-blind) is the "
                "co-designed chip itself: here placement does not change which chip wins"]
    return []


def role_rows(place: pd.DataFrame, s) -> list[tuple[str, pd.Series]]:
    """(role, placement row) of the co-designed chip and each baseline of one summary row,
    selected exactly as summarise does (TPUv4-like rows fit its HBM and are shown at it,
    on_chip; the Spotlight-style pick left out when it is the co-designed chip)."""
    if s["status"] != "ok":
        return []
    rows = place[(place["model"] == s["model"]) & (place["seq"] == s["seq"])
                 & place["samples_per_s"].notna()]
    if "area_mm2" not in rows.columns:
        rows = rows.assign(area_mm2=0.0)
    opt, fixed = rows[rows["strategy"] == "optimised"], rows[rows["strategy"] == "fixed"]
    tpu, hbm = s.get("tpuv4_arch_id"), s.get("tpuv4_hbm_bytes")
    out = [("co-design", _best(opt[opt["arch_id"] == s["best_arch_id"]]))]
    if isinstance(tpu, str):
        out.append(("TPUv4-like", on_chip(_best(fits(opt[opt["arch_id"] == tpu], hbm)), hbm)))
        if isinstance(s.get("tpuv4_fixed_strategy"), str):
            out.append(("TPUv4-like fixed",
                        on_chip(_best(fits(fixed[fixed["arch_id"] == tpu], hbm)), hbm)))
    spot = s.get("spotlight_arch_id")
    if isinstance(spot, str) and spot != s["best_arch_id"]:
        out.append(("Spotlight-style", _best(opt[opt["arch_id"] == spot])))
    return [(k, r) for k, r in out if r is not None]


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _x(v):
    return "-" if not (isinstance(v, float) and math.isfinite(v)) else f"{v:.2f}x"


def format_terminal(summary: pd.DataFrame, width: int = 100) -> str:
    """The summary as an aligned terminal table; plan and notes under each row."""
    import textwrap

    head = ["model", "seq", "best chip", "mm^2", "samples/s", "tokens/s", "MFU",
            "vs TPUv4", "vs TPUv4 fixed", "vs Spotlight"]
    right = {1, 3, 4, 5, 6, 7, 8, 9}
    body, extra = [], []
    for _, r in summary.iterrows():
        if r["status"] != "ok":
            body.append([str(r["model"]), str(r["seq"]), "INFEASIBLE"] + [""] * 7)
            extra.append([])
        else:
            body.append([str(r["model"]), str(r["seq"]), str(r["best_arch"]),
                         _fmt(r["best_area_mm2"], ".1f"), _fmt(r["best_samples_per_s"], ",.0f"),
                         _fmt(r["best_tokens_per_s"], ",.0f"), _fmt(r["best_mfu"], ".3f"),
                         _x(r["speedup_vs_tpuv4_opt"]), _x(r["speedup_vs_tpuv4_fixed"]),
                         "same chip" if r.get("spotlight_is_best") is True
                         else _x(r["speedup_vs_spotlight"])])
            extra.append([f"arch {r['best_arch_id']}; plan {r['best_plan']}"])
        if r["notes"]:
            extra[-1] += textwrap.wrap("note: " + r["notes"], width=width - 4)
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i])
                         for i, c in enumerate(cells)).rstrip()

    out = [line(head), "-" * len(line(head))]
    for cells, more in zip(body, extra):
        out.append(line(cells))
        out += ["    " + m for m in more]
    return "\n".join(out)
