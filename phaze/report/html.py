"""Self-contained report.html: the summary table, notes, and every plot embedded as a
base64 PNG (no external files, no scripts, opens from anywhere)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from phaze import __version__

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2430;max-width:1500px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde3ea}
p.meta{color:#5b6675;font-size:13px;margin:0 0 16px}
table{border-collapse:collapse;font-size:13px}
td.notes{overflow-wrap:anywhere;color:#3d4756;border-top:none}
th,td{border:1px solid #d5dbe3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.infeasible td{background:#fdecea}
td.win,td.co{color:#1a7f37;font-weight:600} td.bad,td.lose{color:#b42318;font-weight:600}
div.alert,div.warn{background:#fdecea;border:1px solid #f5c2bd;padding:8px 12px;margin:8px 0;font-size:14px}
h3{font-size:15px;margin:18px 0 6px} pre{background:#f5f7fa;padding:8px;font-size:12px}
table.compare th{background:#f7f9fb;font-weight:500;text-align:left}
div.bar{width:260px;height:12px;background:#eef2f7;display:flex;border:1px solid #c8d0da}
div.bar span{display:block;height:100%} span.sw{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
figure{margin:12px 0} figcaption{font-size:13px;color:#5b6675}
img{max-width:100%;height:auto;border:1px solid #e3e8ee}
"""


def _num(v, spec):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    return format(v, spec)


def _speed(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '<td class="num">&ndash;</td>'
    cls = "bad" if v < 1 - 1e-9 else ""   # red = a problem only; the chip is green
    return f'<td class="num {cls}">{v:.2f}&times;</td>'


def summary_table(summary: pd.DataFrame) -> str:
    head = ["model", "seq", "co-designed chip", "plan", "area (mm&sup2;)", "samples/s",
            "tokens/s", "MFU", "TFLOP/s per device", "TPUv4-like opt. plan (samples/s)", "TPUv4-like fixed Megatron (samples/s)",
            "Spotlight-style pick (samples/s)", "vs TPUv4 opt.", "vs TPUv4 fixed",
            "vs Spotlight"]
    out = ['<table id="summary"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for _, r in summary.iterrows():
        e = html.escape
        if r["status"] != "ok":
            out.append(f'<tr class="infeasible"><td>{e(str(r["model"]))}</td>'
                       f'<td class="num">{int(r["seq"])}</td>'
                       f'<td colspan="{len(head) - 2}"><b>infeasible:</b> {e(str(r["notes"]))}</td></tr>')
            continue
        fixed = r["tpuv4_fixed_strategy"]
        fixed_lab = f" [{e(str(fixed))}]" if isinstance(fixed, str) else ""
        out.append(
            "<tr>"
            f"<td>{e(str(r['model']))}</td><td class=\"num\">{int(r['seq'])}</td>"
            f"<td class=\"co\">{e(str(r['best_arch']))}<br><small>{e(str(r['best_arch_id']))}</small></td>"
            f"<td>{e(str(r['best_plan']))}</td>"
            f"<td class=\"num\">{_num(r['best_area_mm2'], '.1f')}</td>"
            f"<td class=\"num\">{_num(r['best_samples_per_s'], '.1f')}</td>"
            f"<td class=\"num\">{_num(r['best_tokens_per_s'], ',.0f')}</td>"
            f"<td class=\"num\">{_num(r['best_mfu'], '.3f')}</td>"
            f"<td class=\"num\">{_num(r['best_tflops_per_device'], '.1f')}</td>"
            f"<td class=\"num\">{_num(r['tpuv4_opt_samples_per_s'], '.1f')}</td>"
            f"<td class=\"num\">{_num(r['tpuv4_fixed_samples_per_s'], '.1f')}{fixed_lab}</td>"
            f"<td class=\"num\">{_num(r['spotlight_samples_per_s'], '.1f')}</td>"
            + _speed(r["speedup_vs_tpuv4_opt"]) + _speed(r["speedup_vs_tpuv4_fixed"])
            + ('<td class="num">same chip</td>' if r.get("spotlight_is_best") is True
               else _speed(r["speedup_vs_spotlight"]))
            + "</tr>")
        if r["notes"]:   # a full-width row under the numbers: long notes wrap in the page
            out.append(f'<tr class="notes"><td class="notes" colspan="{len(head)}">'
                       f"<b>note:</b> {e(str(r['notes']))}</td></tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _img(path: Path, caption: str, ident: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img id="{ident}" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}'
            f"</figcaption></figure>")


def _reproduce(summary: pd.DataFrame) -> str:
    """The `phaze evaluate` command of each best design and baseline (summary.COMMANDS):
    each recomputes its row."""
    from phaze.report.summary import COMMANDS

    items = []
    for _, r in summary[summary["status"] == "ok"].iterrows():
        cmds = "".join(f"<li>{role}: <code>{html.escape(str(r[col]))}</code></li>"
                       for role, col in COMMANDS if isinstance(r.get(col), str))
        if cmds:
            items.append(f"<li>{html.escape(str(r['model']))}, seq {int(r['seq'])}:"
                         f"<ul>{cmds}</ul></li>")
    if not items:
        return ""
    return (f'<h2 id="reproduce">Reproduce a design and its baselines</h2><p>Each command '
            f'recomputes the row of the best design or of a baseline, with its stages (run '
            f'it where the sweep ran):</p><ul>{"".join(items)}</ul>')


def render(summary: pd.DataFrame, plots: dict[str, tuple[Path | None, str]],
           extra_html: str = "", context_html: str = "") -> str:
    alerts = []
    for _, r in summary[summary["status"] != "ok"].iterrows():
        alerts.append(f'<div class="alert"><b>{html.escape(str(r["model"]))}, seq '
                      f'{int(r["seq"])}: no feasible design.</b> {html.escape(str(r["notes"]))}</div>')
    figs = [_img(p, cap, ident) for ident, (p, cap) in plots.items() if p is not None]
    n_ok = int((summary["status"] == "ok").sum())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>phaze report</title>
<style>{CSS}</style></head><body>
<h1>phaze: co-designed accelerator and training plan</h1>
<p class="meta">phaze {html.escape(__version__)} &middot; {len(summary)} model/sequence
combinations, {n_ok} with a feasible design. Throughput in training samples/s for the whole
cluster; speedups are the co-designed chip's throughput over each baseline's, under the
same cost model and placement DP.</p>
{''.join(alerts)}
{context_html}
<h2 id="summary-head">Summary</h2>
{summary_table(summary)}
{_reproduce(summary)}
{extra_html}
<h2>Plots</h2>
{''.join(figs) if figs else '<p>No feasible design, so nothing to plot.</p>'}
</body></html>
"""
