"""Report figures (matplotlib, Agg backend): Pareto front of throughput vs chip area with
the TPUv4-like chip marked, throughput per mm^2, time breakdown of the best plans, and
per-stage memory of the best plans. Each function writes one PNG and returns a Plot (its
path and the summary's role rows it drew: phaze.report.summary.role_rows, the same rows
the summary, compare and memory sections name), or None when there is nothing to draw."""

from __future__ import annotations

import math
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from phaze.report.summary import role_rows  # noqa: E402
from phaze.search.pareto import pareto_mask  # noqa: E402
from phaze.units import GiB  # noqa: E402

DPI = 110


class Plot(NamedTuple):
    """A written figure: its path and the rows it drew, as (model, seq, role, placement
    row) with role one of summary.role_rows' names."""
    path: str
    rows: list


def nothing_to_plot(path, caption: str) -> str:
    """A figure that says why it is empty (every declared output of the report exists, even
    when no design is feasible)."""
    fig, ax = plt.subplots(figsize=(6, 2), dpi=DPI)
    ax.axis("off")
    ax.text(0.5, 0.5, f"{caption}:\nnothing to plot (no feasible design)", ha="center",
            va="center", fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def per_arch_best(place: pd.DataFrame) -> pd.DataFrame:
    """Best optimised throughput per (model, seq, arch) over the DP-only axes."""
    opt = place[(place["strategy"] == "optimised") & place["samples_per_s"].notna()]
    if opt.empty:
        return opt
    idx = opt.groupby(["model", "seq", "arch_id"])["samples_per_s"].idxmax()
    return opt.loc[idx.to_numpy()]


def _grid_axes(n: int, w: float = 5.0, h: float = 3.8):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def pareto_plot(place, summary, path, per_area: bool = False):
    best = per_arch_best(place)
    groups = [(k, g) for k, g in best.groupby(["model", "seq"], sort=True)]
    if not groups:
        return None
    fig, axes = _grid_axes(len(groups))
    srow = {(s["model"], s["seq"]): s for _, s in summary.iterrows()}
    drawn = []
    for ax, ((model, seq), g) in zip(axes, groups):
        area = g["area_mm2"].to_numpy(float)
        thr = g["samples_per_s"].to_numpy(float)
        y = thr / area if per_area else thr
        front = pareto_mask(area, thr)
        ax.scatter(area[~front], y[~front], s=12, c="#9aa7b8", label="designs")
        order = np.argsort(area[front])
        if per_area:  # the front is of throughput vs area; here only mark its members
            ax.scatter(area[front], y[front], s=22, c="#1f77b4", label="on the Pareto front")
        else:
            ax.plot(area[front][order], y[front][order], "-o", c="#1f77b4", ms=4,
                    label="Pareto front")
        style = {"TPUv4-like": dict(marker="*", s=180, c="#d62728", zorder=5),
                 "co-design": dict(marker="D", s=60, facecolors="none", edgecolors="#2ca02c",
                                   linewidths=2, zorder=6)}
        label = {"TPUv4-like": "TPUv4-like", "co-design": "best co-design"}
        info = srow.get((model, seq))
        for role, r in (role_rows(place, info) if info is not None else []):
            if role not in style:
                continue
            a = float(r["area_mm2"])
            y1 = float(r["samples_per_s"]) / (a if per_area else 1.0)
            ax.scatter([a], [y1], label=label[role], **style[role])
            drawn.append((model, seq, role, r))
        ax.set_title(f"{model}, seq {seq}", fontsize=10)
        ax.set_xlabel("chip area (mm$^2$)")
        ax.set_ylabel("samples/s per mm$^2$" if per_area else "training throughput (samples/s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return Plot(_save(fig, path), drawn)


BREAKDOWN_PREFIX = "breakdown_"
PLACE_BREAKDOWN = ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "optimizer_s", "tp_s")  # phaze place


def _breakdown_cols(place):
    cols = [c for c in place.columns if c.startswith(BREAKDOWN_PREFIX)]
    return cols or [c for c in PLACE_BREAKDOWN if c in place.columns]


def _part_label(col: str) -> str:
    return col.removeprefix(BREAKDOWN_PREFIX).removesuffix("_s").replace("_", " ")


def _pick_rows(place, summary):
    """(model, seq, role, row) of the best plan and the baselines for every feasible
    (model, seq): summary.role_rows, the rows the summary table names."""
    return [(s["model"], s["seq"], role, r)
            for _, s in summary[summary["status"] == "ok"].iterrows()
            for role, r in role_rows(place, s)]


def breakdown_plot(place, summary, path):
    cols = _breakdown_cols(place)
    picks = _pick_rows(place, summary)
    if not picks:
        return None
    keys = sorted({(m, q) for m, q, _, _ in picks})
    fig, axes = _grid_axes(len(keys), w=5.2, h=3.6)
    colors = plt.get_cmap("tab10")
    for ax, key in zip(axes, keys):
        items = [(lab, r) for m, q, lab, r in picks if (m, q) == key]
        labels = [lab for lab, _ in items]
        x = np.arange(len(items))
        if cols:
            bottom = np.zeros(len(items))
            for i, c in enumerate(cols):
                vals = np.array([float(r.get(c, 0.0) or 0.0) for _, r in items])
                ax.bar(x, vals, bottom=bottom, color=colors(i % 10),
                       label=_part_label(c))
                bottom += vals
            ax.set_ylim(0, float(bottom.max()) * 1.35 if bottom.max() > 0 else 1.0)
        else:
            ax.bar(x, [float(r["time_per_batch_s"]) for _, r in items], color=colors(0),
                   label="time per batch")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("time per batch (s)")
        ax.set_title(f"{key[0]}, seq {key[1]}", fontsize=10)
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    return Plot(_save(fig, path), picks)


def memory_plot(place, summary, path):
    """Memory per device: per pipeline stage of the best plan when the table has
    `stage_memory_bytes`, else the peak device of the best plan and of each baseline."""
    picks = _pick_rows(place, summary)
    if not picks:
        return None
    keys = sorted({(m, q) for m, q, _, _ in picks})
    fig, axes = _grid_axes(len(keys), w=5.0, h=3.4)
    for ax, key in zip(axes, keys):
        items = [(lab, r) for m, q, lab, r in picks if (m, q) == key]
        best = items[0][1]
        stages = best.get("stage_memory_bytes") if "stage_memory_bytes" in best.index else None
        if isinstance(stages, (list, tuple, np.ndarray)) and len(stages):
            vals = np.asarray(stages, dtype=float) / GiB
            x = np.arange(1, len(vals) + 1)
            ax.bar(x, vals, color="#1f77b4", label="memory per device")
            ax.set_xticks(x)
            ax.set_xlabel("pipeline stage of the best plan")
            hbms = [float(best["hbm_bytes"]) / GiB] if pd.notna(best.get("hbm_bytes")) else []
            hbm_x = hbms * len(vals)
        else:
            vals = np.array([float(r.get("memory_per_device_bytes", np.nan) or np.nan)
                             for _, r in items]) / GiB
            x = np.arange(len(items))
            ax.bar(x, vals, color=["#2ca02c", "#d62728", "#ff7f0e", "#9467bd"][:len(items)])
            ax.set_xticks(x, [f"{lab}\n(p={int(r['p'])})" if pd.notna(r.get("p")) else lab
                              for lab, r in items], fontsize=8)
            ax.set_xlabel("peak device of the plan")
            hbm_x = [float(r["hbm_bytes"]) / GiB if pd.notna(r.get("hbm_bytes")) else None
                     for _, r in items]
            hbms = [h for h in hbm_x if h is not None]
            for xi, (_, r) in zip(x, items):
                if pd.notna(r.get("hbm_bytes")):
                    h = float(r["hbm_bytes"]) / GiB
                    ax.plot([xi - 0.4, xi + 0.4], [h, h], color="#d62728", ls="--")
        vmax = float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0
        # draw the HBM line only when it is on a comparable scale; always label the bars
        on_scale = [h for h in hbms if h <= 5 * vmax]
        top = max([vmax] + on_scale)
        for xi, v, h in zip(x, vals, hbm_x or [None] * len(vals)):
            if np.isfinite(v):
                frac = f" ({v / h:.0%} of {h:g} GiB)" if h else ""
                ax.annotate(f"{v:.2f}{frac}", (xi, v), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        for line in list(ax.lines):
            if line.get_ydata()[0] > 5 * vmax:
                line.remove()
        if on_scale and isinstance(stages, (list, tuple, np.ndarray)) and len(stages):
            ax.axhline(on_scale[0], color="#d62728", ls="--")
        label = "HBM of the plan" if on_scale else \
            f"HBM {hbms[0]:g} GiB (off scale)" if hbms else "HBM"
        ax.plot([], [], color="#d62728", ls="--", label=label)
        ax.set_ylim(0, top * 1.3)
        ax.set_ylabel("GiB per device")
        ax.set_title(f"{key[0]}, seq {key[1]}", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    return Plot(_save(fig, path), picks)
