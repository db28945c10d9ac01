"""HTML sections of the report beyond the summary table: the sweep's context, each best
design next to its baselines, sensitivity, memory split, solver status and the runnable
outputs. Each function returns an HTML fragment (no scripts, CSS in phaze.report.html).
Colours carry one meaning each: green = the co-designed chip, red = a problem (does not
fit, slower, on the grid edge), grey = context; memory parts have one colour each."""

from __future__ import annotations

import html
import math


from phaze.report import compare, sensitivity, solver
from phaze.report.summary import role_rows
from phaze.units import GiB

E = html.escape
MEM_COLORS = {"weights": "#4e79a7", "grads": "#76b7b2", "optimizer": "#b07aa1",
              "activations": "#f28e2b", "buffers": "#9c755f"}


def table(head, rows, ident="", cls="") -> str:
    i = f' id="{ident}"' if ident else ""
    c = f' class="{cls}"' if cls else ""
    out = [f"<table{i}{c}><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(x if str(x).startswith("<td") else f"<td>{x}</td>"
                                    for x in r) + "</tr>")
    return "\n".join(out + ["</tbody></table>"])


def context_section(ctx: list[tuple[str, str]]) -> str:
    rows = [(E(k), E(v)) for k, v in ctx]
    return '<h2 id="context">The sweep</h2>' + table(["setting", "value"], rows, "context-table")


def _title(s) -> str:
    return f"{E(str(s['model']))}, seq {int(s['seq'])}"


def compare_section(place, grid, summary) -> str:
    info = grid.set_index("arch_id")
    out = ['<h2 id="compare">Why the co-designed chip wins: side by side with the baselines</h2>',
           "<p>Speedup = peak ratio &times; MFU ratio &times; devices ratio &times; model-FLOPs "
           "ratio (exact; see phaze/report/compare.py). Baselines keep their own HBM: the "
           "TPUv4-like chip its real capacity.</p>"]
    for _, s in summary[summary["status"] == "ok"].iterrows():
        roles = role_rows(place, s)
        if not roles:
            continue
        peaks = [float(info.loc[r["arch_id"], "peak_flops"]) for _, r in roles]
        cols = [(name, r, compare.chip_rows(info.loc[r["arch_id"]].to_dict()
                                            | {"arch_id": r["arch_id"]}),
                 compare.plan_rows(r, pk)) for (name, r), pk in zip(roles, peaks)]
        labels = [k for k, _ in cols[0][2]] + [k for k, _ in cols[0][3]]
        body = []
        for i, lab in enumerate(labels):
            cells = [f"<th>{E(lab)}</th>"]
            for name, r, chip, plan in cols:
                allr = chip + plan
                v = dict(allr).get(lab, "")
                cells.append(f'<td class="{"co" if name == "co-design" else ""}">{E(v)}</td>')
            body.append("".join(cells))
        w, pw = roles[0][1], peaks[0]
        dec_rows = []
        for (name, b), pb in list(zip(roles, peaks))[1:]:
            d = compare.decompose(w, b, pw, pb)
            dec_rows.append((E(name), _x(d["speedup"]), compare.fmt_factor(d["peak"]),
                             compare.fmt_factor(d["mfu"]), compare.fmt_factor(d["devices"]),
                             compare.fmt_factor(d["flops"]),
                             E(compare.memory_effect(place, w, b))))
        head = "".join(f"<th>{E(n)}</th>" for n, *_ in cols)
        out.append(f'<h3>{_title(s)}</h3><table class="compare"><thead><tr><th></th>{head}'
                   "</tr></thead><tbody>" + "".join(f"<tr>{b}</tr>" for b in body)
                   + "</tbody></table>")
        if dec_rows:
            out.append(table(["co-design vs", "speedup", "peak FLOP/s", "MFU", "devices",
                              "model FLOPs", "what memory allowed"], dec_rows,
                             cls="decompose"))
        if s.get("spotlight_is_best") is True:
            out.append("<p>The Spotlight-style pick (fastest single chip, blind to placement) "
                       "is this same chip, so it has no column of its own.</p>")
    return "\n".join(out)


def _x(v):
    if not (isinstance(v, float) and math.isfinite(v)):
        return "<td>&ndash;</td>"
    cls = "bad" if v < 1 - 1e-9 else ""
    return f'<td class="num {cls}">{v:.2f}&times;</td>'


def sensitivity_section(place, grid, summary, spec) -> str:
    out = ['<h2 id="sensitivity">Sensitivity: one grid step along each axis</h2>',
           "<p>Throughput (samples/s) of the chip that differs from the winner in one axis by "
           "one grid step, from the sweep's rows. <i>edge</i>: the winner has the axis's "
           "extreme value; <i>outside area</i>: that chip is outside the area budget, so the "
           "sweep did not place it; <i>pruned</i>: the pruned search did not place it, its "
           "throughput bound being below the winner's.</p>"]
    for _, s in summary[summary["status"] == "ok"].iterrows():
        sens = sensitivity.sensitivity(place, grid, s, spec)
        rows = []
        for r in sens["rows"]:
            cells = [E(r["axis"]), E(r["value"])]
            for side in ("down", "up"):
                n = r[side]
                if n["status"] == "edge":
                    cells.append('<td class="bad">edge of the grid</td>')
                elif n["status"] == "outside":
                    cells.append(f"<td>{E(n['value'])}: outside area</td>")
                elif n["status"] == "no plan":
                    cells.append(f'<td class="bad">{E(n["value"])}: no plan fits</td>')
                elif n["status"] == "pruned":
                    cells.append(f"<td>{E(n['value'])}: pruned (its bound is below the "
                                 f"winner's)</td>")
                else:
                    cells.append(f"<td>{E(n['value'])}: {n['samples_per_s']:,.1f} "
                                 f"({n['ratio'] - 1:+.1%}, {n['d_area_mm2']:+.1f} mm&sup2;)</td>")
            rows.append(cells)
        out.append(f"<h3>{_title(s)}</h3>" + table(["axis", "winner", "one step down",
                                                     "one step up"], rows, cls="sens"))
        warn = sensitivity.edge_warning(sens)
        if warn:
            out.append(f'<div class="warn">{E(warn)}</div>')
        b = sensitivity.binding(sens)
        if b:
            out.append(f"<p>{E(b)}</p>")
        if sens["fixed"]:
            out.append(f"<p>Axes not searched (one value): {E(', '.join(sens['fixed']))}.</p>")
    return "\n".join(out)


def memory_section(place, summary) -> str:
    out = ['<h2 id="memory-split">Memory per device</h2>',
           "<p>Per pipeline stage of each plan: weights, gradients, optimizer state, "
           "activations of the in-flight microbatches and the recomputation buffer, against "
           "the HBM capacity (GiB).</p>"]
    legend = " ".join(f'<span class="sw" style="background:{c}"></span>{k}'
                      for k, c in MEM_COLORS.items())
    out.append(f'<p class="legend">{legend}</p>')
    for _, s in summary[summary["status"] == "ok"].iterrows():
        out.append(f"<h3>{_title(s)}</h3>")
        rows = []
        for name, r in role_rows(place, s):
            stages = compare.stage_memory(r)
            cap = float(r["hbm_bytes"])
            for k, st in enumerate(stages):
                tot = sum(st.values())
                bar = "".join(f'<span style="width:{100 * v / cap:.2f}%;background:'
                              f'{MEM_COLORS[p]}"></span>' for p, v in st.items() if v > 0)
                rows.append([E(name) if k == 0 else "", str(k + 1)]
                            + [f'<td class="num">{st[p] / GiB:.2f}</td>' for p in MEM_COLORS]
                            + [f'<td class="num">{tot / GiB:.2f} / {cap / GiB:g}</td>',
                               f'<td class="barcell"><div class="bar">{bar}</div></td>'])
        out.append(table(["design", "stage", *MEM_COLORS, "total / HBM", "share of HBM"],
                         rows, cls="mem"))
    return "\n".join(out)


def solver_section(latency, place, summary) -> str:
    out = ['<h2 id="solver">Solver status</h2>']
    for _, s in summary[summary["status"] == "ok"].iterrows():
        st, rk = solver.status(latency, s), solver.ranking(latency, place, s)
        out.append(f"<p><b>{_title(s)}:</b> {E(solver.sentence(st, rk))}</p>")
    out.append("<p>Check used: an ILP stopped at its limit has a feasible schedule and a "
               "proven lower bound; a chip's throughput can rise at most by 1 / (its smallest "
               "lower bound / latency ratio) if every layer reached its bound, while the "
               "winner's throughput is already achieved. See phaze/report/solver.py.</p>")
    return "\n".join(out)


def runnable_section(files: dict) -> str:
    out = ['<h2 id="runnable">Run it</h2>']
    for (model, seq), f in files.items():
        out.append(f"<h3>{E(str(model))}, seq {int(seq)}</h3>"
                   f"<p>Megatron-LM arguments (<code>{E(f['megatron_path'])}</code>):</p>"
                   f"<pre>{E(f['megatron'])}</pre>"
                   f"<p>NeMo config keys (<code>{E(f['nemo_path'])}</code>):</p>"
                   f"<pre>{E(f['nemo'])}</pre>"
                   f"<p>This row, recomputed from scratch (the sweep's chip, plan, stages "
                   f"and settings; same samples/s):</p><pre>{E(f['evaluate'])}</pre>"
                   f"<p>The chip: <code>{E(f['chip_path'])}</code>, a hardware description "
                   f"to hand to others (its fields in SI units, the plan's HBM and the "
                   f"sweep's network; <code>phaze arch show {E(f['chip_path'])}</code> "
                   f"prints it). It does not reproduce this row: <code>phaze evaluate --arch "
                   f"FILE</code> costs a chip the way it costs GPU presets (each operator on all "
                   f"cores of its class, one after the other, and Megatron's training "
                   f"settings; no per-layer ILP schedule), so its samples/s differ from the "
                   f"sweep's; the command above gives the sweep's number.</p>")
    return "\n".join(out)
