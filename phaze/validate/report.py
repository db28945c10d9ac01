"""Tables, JSON and a predicted-vs-measured plot for `phaze validate`."""

from __future__ import annotations

from phaze.units import GiB
from phaze.validate.data import (TABLE_BRIDGE, TABLE_DGXC, TABLE_H100, TABLE_KORTHIKANTI,
                                 TABLE_NARAYANAN, TABLE_NEMO, calculon_mae_percent)
from phaze.validate.evaluate import Prediction, max_abs_error_pct, mean_abs_error_pct

UNITS = {"tflops_per_gpu": "TFLOP/s/GPU", "seconds_per_iteration": "s/iter", "mfu_pct": "MFU %",
         "tokens_per_s_per_gpu": "tokens/s/GPU"}


def row_dict(p: Prediction) -> dict:
    c = p.case
    return {
        "table": c.table, "name": c.name, "arch": c.arch, "framework": c.framework, "fp8": c.fp8,
        "tp": c.tp, "pp": c.pp, "dp": c.dp, "cp": c.cp, "gpus": c.gpus,
        "plan_options": dict(c.plan_options), "model": c.zoo or None, "ep": c.ep,
        "moe_expert_capacity_factor": c.moe_expert_capacity_factor,
        "moe_pad_expert_input_to_capacity": c.moe_pad_expert_input_to_capacity,
        "moe_router_fusion": c.moe_router_fusion,
        "moe_router_load_balancing_type": c.moe_router_load_balancing_type,
        "moe_router_force_load_balancing": c.moe_router_force_load_balancing,
        "caveat": c.caveat, "source": c.source or None,
        "batch": c.batch, "recompute": c.recompute, "sequence_parallel": c.sequence_parallel,
        "mbs": p.mbs, "interleave": p.interleave, "searched": p.searched,
        "recompute_searched": p.recompute_searched,
        "metric": c.metric, "measured": c.measured, "predicted": p.predicted,
        "error_pct": p.error_pct, "time_per_batch_s": p.time_per_batch_s,
        "tflops_per_gpu": p.tflops_per_gpu,
        "memory_per_device_bytes": p.memory_per_device_bytes, "breakdown": p.breakdown,
        # the rest of how the row was evaluated (the `phaze evaluate --arch PRESET` flags of
        # the same name): without them a row could not be recomputed from its JSON
        "seq": c.seq, "fp8_recipe": c.fp8_recipe if c.fp8 else None, "ddp_impl": c.ddp_impl,
        "tp_comm_overlap": c.tp_overlap, "cross_entropy_fusion": c.ce_fusion,
        "expert_tp": c.expert_tp, "recompute_modules": list(c.recompute_modules) or None,
        "account_embedding": c.account_embedding, "account_loss": c.account_loss,
        "pipeline_layout": c.pipeline_layout or None, "mtp_layers": c.mtp_layers,
        "model_shape": None if c.zoo else {
            "family": c.family, "hidden": c.hidden, "heads": c.heads, "layers": c.layers,
            "vocab": c.vocab, "ffn": c.ffn or 4 * c.hidden, "kv_heads": c.kv_heads or c.heads,
            "tied_embeddings": c.tied_embeddings, "dropout": c.dropout},
    }


def by_precision(preds: list[Prediction]) -> dict[str, list[Prediction]]:
    """{"bf16": rows, "fp8": rows} of a table that mixes both; {} otherwise."""
    split = {"bf16": [p for p in preds if not p.case.fp8], "fp8": [p for p in preds if p.case.fp8]}
    return split if all(split.values()) else {}


# what makes two rows of a table the same run but for the precision (Case fields)
_PLAN_FIELDS = ("zoo", "family", "hidden", "heads", "layers", "seq", "vocab", "ffn",
                "kv_heads", "tp", "pp", "cp", "ep", "gpus", "batch", "microbatch", "interleave",
                "recompute", "sequence_parallel", "framework", "plan_options")


def _seconds(metric: str, value: float) -> float:
    """A figure in a table's metric turned into something proportional to time per
    iteration (throughputs invert)."""
    return value if metric == "seconds_per_iteration" else 1.0 / value


def fp8_pairs(preds: list[Prediction]) -> list[dict]:
    """The rows of one table that ran the same plan (_PLAN_FIELDS) in BF16 and in FP8:
    per pair the FP8 speedup (BF16 time / FP8 time) measured and predicted. It checks the
    model's FP8 rate against the runs themselves, whatever else the model gets wrong: the
    rest of a pair's error cancels in the ratio."""
    bf16 = {tuple(getattr(p.case, f) for f in _PLAN_FIELDS): p for p in preds if not p.case.fp8}
    out = []
    for p in preds:
        q = bf16.get(tuple(getattr(p.case, f) for f in _PLAN_FIELDS)) if p.case.fp8 else None
        if q is None:
            continue
        m = p.case.metric
        out.append({"bf16": q.case.name, "fp8": p.case.name,
                    "measured": _seconds(m, q.case.measured) / _seconds(m, p.case.measured),
                    "predicted": _seconds(m, q.predicted) / _seconds(m, p.predicted)})
    return out


def fp8_pair_summary(pairs: list[dict]) -> dict | None:
    """Mean measured and predicted FP8 speedups of the pairs, the mean and mean |.| of
    predicted / measured - 1 (percent); None without pairs."""
    if not pairs:
        return None
    err = [100.0 * (x["predicted"] / x["measured"] - 1.0) for x in pairs]
    n = len(pairs)
    return {"pairs": n, "measured_mean": sum(x["measured"] for x in pairs) / n,
            "predicted_mean": sum(x["predicted"] for x in pairs) / n,
            "mean_error_pct": sum(err) / n, "mae_pct": sum(abs(e) for e in err) / n}


def summary(preds_by_table: dict[str, list[Prediction]]) -> dict:
    out = {}
    for t, ps in preds_by_table.items():
        out[t] = {"mae_pct": mean_abs_error_pct(ps), "max_abs_error_pct": max_abs_error_pct(ps),
                  "calculon_mae_pct": calculon_mae_percent(t), "rows": len(ps)}
        split = by_precision(ps)
        if split:
            out[t]["by_precision"] = {k: {"mae_pct": mean_abs_error_pct(v),
                                          "max_abs_error_pct": max_abs_error_pct(v),
                                          "rows": len(v)} for k, v in split.items()}
        pairs = fp8_pair_summary(fp8_pairs(ps))
        if pairs:
            out[t]["fp8_speedup"] = pairs
    return out


# issue 16's goal for the measured runs never fitted on: mean |error| per GPU type
HELD_OUT_GOAL_PCT = 10.0


def held_out_summary(preds_by_table: dict[str, list[Prediction]], fit_tables) -> dict:
    """Mean |error| per preset (GPU type) over every row of the tables not in `fit_tables`
    (the held-out rows), and without the rows with a transcription caveat: {arch: {tables,
    rows, mae_pct, caveat_rows, mae_pct_without_caveats, goal_pct}}; only the archs with
    held-out rows."""
    by_arch: dict[str, list[Prediction]] = {}
    tables: dict[str, list[str]] = {}
    for t, ps in preds_by_table.items():
        if t in fit_tables:
            continue
        for p in ps:
            by_arch.setdefault(p.case.arch, []).append(p)
            if t not in tables.setdefault(p.case.arch, []):
                tables[p.case.arch].append(t)
    out = {}
    for arch, ps in sorted(by_arch.items()):
        clean = [p for p in ps if not p.case.caveat]
        out[arch] = {"tables": tables[arch], "rows": len(ps), "mae_pct": mean_abs_error_pct(ps),
                     "caveat_rows": len(ps) - len(clean),
                     "mae_pct_without_caveats": mean_abs_error_pct(clean) if clean else None,
                     "goal_pct": HELD_OUT_GOAL_PCT}
    return out


def held_out_text(summary_by_arch: dict) -> str:
    """One line per GPU type: the held-out rows' mean |error| against the goal."""
    lines = [f"held out (never fitted), per GPU type; goal: mean |error| <= {HELD_OUT_GOAL_PCT:g}%"]
    for arch, s in summary_by_arch.items():
        clean = s["mae_pct_without_caveats"]
        met = "met" if s["mae_pct"] <= s["goal_pct"] else "not met"
        lines.append(f"  {arch}: {s['rows']} rows of {', '.join(s['tables'])}: mean |error| "
                     f"{s['mae_pct']:.2f}% ({met})"
                     + (f"; without the {s['caveat_rows']} caveat rows {clean:.2f}%"
                        if s["caveat_rows"] and clean is not None else ""))
    return "\n".join(lines)


def text_table(preds: list[Prediction]) -> str:
    c0 = preds[0].case
    unit = UNITS[c0.metric]
    w = max(16, 1 + max(len(p.case.name) for p in preds))
    moe = any(p.case.ep > 1 for p in preds)     # expert-parallel column only where used
    lines = [f"{c0.table}  ({unit}; * = microbatch/interleave/recompute searched, not published)",
             f"{'row':<{w}}{'t':>3}{'p':>4}{'d':>5}{'cp':>3}" + (f"{'ep':>4}" if moe else "")
             + f"{'mbs':>5}{'v':>3} {'rc':<5}{'measured':>10}"
             f"{'predicted':>11}{'error':>9}{'mem GiB':>9}"]
    for p in preds:
        c = p.case
        star = "*" if p.searched else " "
        rc = {"selective": "sel"}.get(c.recompute, c.recompute) + ("*" if p.recompute_searched else "")
        lines.append(f"{c.name:<{w}}{c.tp:>3}{c.pp:>4}{c.dp:>5}{c.cp:>3}"
                     + (f"{c.ep:>4}" if moe else "")
                     + f"{p.mbs:>4}{star}{p.interleave:>3} {rc:<5}"
                     f"{c.measured:>10.2f}{p.predicted:>11.2f}{p.error_pct:>+8.1f}%"
                     f"{p.memory_per_device_bytes / GiB:>9.1f}")
    cal = calculon_mae_percent(c0.table)
    lines.append(f"mean |error| {mean_abs_error_pct(preds):.2f}%  max {max_abs_error_pct(preds):.2f}%"
                 + (f"  (Calculon: {cal:.2f}%)" if cal is not None else ""))
    for k, ps in by_precision(preds).items():
        lines.append(f"  {k.upper():<4} ({len(ps)} rows): mean |error| {mean_abs_error_pct(ps):.2f}%  "
                     f"max {max_abs_error_pct(ps):.2f}%")
    pairs = fp8_pair_summary(fp8_pairs(preds))
    if pairs:
        lines.append(f"  FP8 speedup over BF16 on the {pairs['pairs']} same-plan pairs: measured "
                     f"{pairs['measured_mean']:.3f}x, predicted {pairs['predicted_mean']:.3f}x "
                     f"(per pair {pairs['mean_error_pct']:+.1f}% on average, mean |error| "
                     f"{pairs['mae_pct']:.1f}%)")
    models = list(dict.fromkeys(p.case.zoo for p in preds if p.case.zoo))
    if len(models) > 1:          # a table of zoo models: the error per model too
        for m in models:
            ps = [p for p in preds if p.case.zoo == m]
            lines.append(f"  {m:<16} ({len(ps)} rows): mean |error| {mean_abs_error_pct(ps):.2f}%  "
                         f"max {max_abs_error_pct(ps):.2f}%")
    rec = [p.case.name for p in preds if p.case.caveat]
    if rec:
        clean = [p for p in preds if not p.case.caveat]
        lines.append(f"rows with a transcription caveat (ground_truth.yaml; never fitted): {', '.join(rec)}; "
                     f"without them: mean |error| {mean_abs_error_pct(clean):.2f}%")
    return "\n".join(lines)


def plot(preds_by_table: dict[str, list[Prediction]], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phaze.atomic import atomic_path

    tables = [t for t in (TABLE_KORTHIKANTI, TABLE_NARAYANAN, TABLE_H100, TABLE_NEMO, TABLE_DGXC,
                          TABLE_BRIDGE) if t in preds_by_table]
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 5), squeeze=False)
    for ax, t in zip(axes[0], tables):
        ps = preds_by_table[t]
        meas = [p.case.measured for p in ps]
        pred = [p.predicted for p in ps]
        ax.scatter(meas, pred, zorder=3)
        for p in ps:
            ax.annotate(f"{p.case.name} ({p.error_pct:+.1f}%)", (p.case.measured, p.predicted),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo, hi = min(meas + pred) * 0.9, max(meas + pred) * 1.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="predicted = measured")
        if ps[0].case.metric in ("seconds_per_iteration", "tokens_per_s_per_gpu"):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        unit = UNITS[ps[0].case.metric]
        ax.set_xlabel(f"measured ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title(f"{t}: MAE {mean_abs_error_pct(ps):.2f}%")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1] if "." in str(path) else "png", dpi=120)
    plt.close(fig)
