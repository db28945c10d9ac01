"""The sweep's context for the report: its config (results/config.yaml, as `phaze
check-config` wrote it) and what the tables say about the search (grid size, solver and
DP time)."""

from __future__ import annotations

import pandas as pd

from phaze.errors import UserError
from phaze.units import GiB


def read_config(path: str | None) -> dict | None:
    if not path:
        return None
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}", field="--config",
                        fix="check the path and that the file is readable") from None
    except yaml.YAMLError as e:
        from phaze.settings import yaml_error

        raise yaml_error(path, e, "--config") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} holds no mapping", field="--config",
                        fix="give a YAML config whose top level is a mapping (e.g. configs/default.yaml)")
    return cfg


def sweep_context(cfg: dict | None, grid: pd.DataFrame, place: pd.DataFrame,
                  latency: pd.DataFrame | None) -> list[tuple[str, str]]:
    """(label, value) pairs: the training job, network, grid and search effort."""
    out = []
    pl = (cfg or {}).get("placement", {})
    if pl:
        # the ZeRO stages the DP searched: zero_stage when given (zero1 then plays no part)
        stages = pl.get("zero_stage") or ([1] if pl.get("zero1") else [0])
        opt = str(pl.get("optimizer", "?")) + (
            f" + ZeRO-{stages[0]}" if list(stages) != [0] and len(stages) == 1 else
            ", ZeRO stages " + ", ".join(map(str, stages)) if len(stages) > 1 else "")
        out += [("devices", f"{pl.get('devices')}"),
                ("global batch", f"{pl.get('global_batch')} samples"),
                ("optimizer", opt),
                ("HBM sizes swept", ", ".join(f"{h:g} GiB" for h in pl.get("hbm_gib", []))),
                ("recompute modes", ", ".join(map(str, pl.get("recompute", [])))),
                ("interleave (virtual stages)", ", ".join(map(str, pl.get("interleave", []))))]
        out.append(("microbatch sizes", ", ".join(map(str, cfg.get("microbatch_sizes", [])))))
    net = sweep_network(cfg)
    if net:
        levels = net.get("levels")
        if levels:      # what the costs used: the levels, not the two-level fields beside them
            out.append(("network", "levels (devices per group; per device, per direction): "
                        + "; ".join(f"{int(g) or 'whole cluster'}: {bw / 1e9:g} GB/s, "
                                    f"{lat * 1e6:g} us" for g, bw, lat in levels)))
        else:
            out.append(("network", f"{net['devices_per_node']} devices per node; "
                        f"{net['intra_bw_Bps'] / 1e9:g} GB/s, {net['intra_latency_s'] * 1e6:g} us "
                        f"inside a node; {net['inter_bw_Bps'] / 1e9:g} GB/s, "
                        f"{net['inter_latency_s'] * 1e6:g} us between nodes (per device, per "
                        f"direction)"))
    axes = [c for c in ("n_tc", "tc_rows", "tc_cols", "n_vc", "vc_lanes", "glb_bytes",
                        "clock_hz", "hbm_bw_Bps") if c in grid.columns]
    sizes = ", ".join(f"{c} {grid[c].nunique()}" for c in axes)
    out.append(("architecture grid", f"{len(grid)} chips within the area budget (at most "
                f"{grid['area_mm2'].max():.1f} mm^2); distinct values per axis: {sizes}"))
    if latency is not None and "seconds" in latency.columns:
        n = len(latency) * 3
        out.append(("scheduling", f"{n} layer ILPs (fwd, bwd, recompute per layer, arch, "
                    f"graph); {latency['seconds'].sum():.1f} s of solver time recorded in the "
                    f"latency tables"))
    if "solve_seconds" in place.columns:
        out.append(("placement", f"{len(place)} placement rows; "
                    f"{place['solve_seconds'].sum():.1f} s of DP time"))
    if not cfg:
        out.append(("config", "not given (pass --config results/config.yaml for the job's "
                    "settings)"))
    return out


def sweep_network(cfg: dict | None) -> dict | None:
    """The config's network as the sweep costed it (phaze.hw.arch.Network: with levels,
    devices_per_node and the intra/inter fields are levels 0 and 1, whatever the config's
    own values, e.g. configs/default.yaml's merged beside a copy's levels), or None."""
    net = (cfg or {}).get("network")
    if not net:
        return None
    from phaze.settings import parse_network

    return parse_network(dict(net)).to_dict()


def hbm_label(b) -> str:
    return f"{float(b) / GiB:g} GiB"
