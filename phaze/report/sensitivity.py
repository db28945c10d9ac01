"""How the co-designed chip's throughput moves when one grid axis moves one step.

For each axis (tied axes, e.g. vc_lanes = tc_cols, move together) the neighbour is the
chip equal to the winner on every other axis with this axis one grid value lower or
higher; its throughput is the sweep's best row of that chip (the same selection as the
winner's). A neighbour is missing when the winner sits on the edge of the configured axis
(widen the grid) or the chip falls outside the area budget (then the sweep did not place
it); a neighbour the pruned search did not place (its throughput bound below the
winner's: no row at all) is "pruned", one whose every plan failed to fit "no plan". Without the config the axis values are the grid's own (area-filtered) values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from phaze.units import MiB

AXES = ("n_tc", "tc_rows", "tc_cols", "n_vc", "vc_lanes", "glb_bytes", "clock_hz", "hbm_bw_Bps")


def _label(axis: str, v) -> str:
    if axis == "glb_bytes":
        return f"{v / MiB:g} MiB"
    if axis == "clock_hz":
        return f"{v / 1e9:g} GHz"
    if axis == "hbm_bw_Bps":
        return f"{v / 1e12:g} TB/s"
    return f"{int(v)}"


def axis_groups(grid: pd.DataFrame, full: pd.DataFrame) -> list[tuple[str, ...]]:
    """Axes that vary in the configured grid, tied ones (equal on every chip) grouped."""
    axes = [a for a in AXES if a in full.columns and full[a].nunique() > 1]
    groups: list[list[str]] = []
    for a in axes:
        for g in groups:
            if (full[g[0]] == full[a]).all():
                g.append(a)
                break
        else:
            groups.append([a])
    return [tuple(g) for g in groups]


def sensitivity(place: pd.DataFrame, grid: pd.DataFrame, s, spec: dict | None) -> dict:
    """{"rows": [...], "edges": [axis names], "fixed": [...]} for one summary row s."""
    from phaze.hw.grid import enumerate_grid

    full = enumerate_grid(spec, filter_area=False) if spec is not None else grid
    opt = place[(place["model"] == s["model"]) & (place["seq"] == s["seq"])
                & (place["strategy"] == "optimised")]
    thr = opt.groupby("arch_id")["samples_per_s"].max()
    w = grid[grid["arch_id"] == s["best_arch_id"]].iloc[0]
    w_thr = float(s["best_samples_per_s"])
    rows, edges = [], []
    for group in axis_groups(grid, full):
        a = group[0]
        vals = np.sort(full[a].unique())
        i = int(np.searchsorted(vals, w[a]))
        row = {"axis": " = ".join(group), "value": _label(a, w[a])}
        for side, j in (("down", i - 1), ("up", i + 1)):
            if j < 0 or j >= len(vals):
                row[side] = {"status": "edge"}
                edges.append((" = ".join(group), side, _label(a, w[a])))
                continue
            m = np.ones(len(grid), dtype=bool)
            for c in AXES:
                if c in grid.columns:
                    want = vals[j] if c in group else w[c]
                    m &= np.isclose(grid[c].to_numpy(dtype=float), float(want), rtol=1e-12)
            hit = grid[m]
            new = _label(a, vals[j])
            if hit.empty:
                row[side] = {"status": "outside", "value": new}
                continue
            aid = str(hit["arch_id"].iloc[0])
            if aid not in thr.index:
                # no row at all: the pruned search never placed it (its throughput bound
                # was below the winner's), which says nothing about whether a plan fits
                row[side] = {"status": "pruned", "value": new, "arch_id": aid}
                continue
            t = float(thr.get(aid, np.nan))
            row[side] = {"status": "ok" if np.isfinite(t) else "no plan", "value": new,
                         "arch_id": aid, "samples_per_s": t, "ratio": t / w_thr,
                         "d_area_mm2": float(hit["area_mm2"].iloc[0] - w["area_mm2"])}
        rows.append(row)
    fixed = [f"{a} = {_label(a, full[a].iloc[0])}" for a in AXES
             if a in full.columns and full[a].nunique() == 1]
    return {"rows": rows, "edges": edges, "fixed": fixed}


def edge_warning(sens: dict) -> str:
    """One sentence naming the axes whose grid edge the winner sits on ('' if none)."""
    if not sens["edges"]:
        return ""
    parts = [f"{axis} at its {'largest' if side == 'up' else 'smallest'} value {v}"
             for axis, side, v in sens["edges"]]
    return ("The co-designed chip sits on the edge of the grid: " + "; ".join(parts)
            + ". The optimum may lie outside: widen the grid along these axes.")


def binding(sens: dict) -> str:
    """Which axis the throughput depends on most, from the neighbours the sweep holds: the
    step down that loses the most ('' when no neighbour exists)."""
    downs = [(r["axis"], r["down"]) for r in sens["rows"] if r["down"].get("status") == "ok"]
    if not downs:
        return ""
    axis, n = min(downs, key=lambda x: x[1]["ratio"])
    cheap = [(r["axis"], r["down"]) for r in sens["rows"] if r["down"].get("status") == "ok"
             and r["down"]["ratio"] > 0.99]
    out = (f"Throughput depends most on {axis}: one step down (to {n['value']}, "
           f"{n['d_area_mm2']:+.1f} mm^2) loses {1 - n['ratio']:.1%}.")
    if cheap:
        out += " Steps down that lose under 1% (area the chip could give back): " + ", ".join(
            f"{a} to {d['value']} ({d['d_area_mm2']:+.1f} mm^2, {d['ratio'] - 1:+.1%})"
            for a, d in cheap) + "."
    return out
