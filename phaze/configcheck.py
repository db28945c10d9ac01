"""Checks of a sweep config that a JSON schema cannot express, run before any job (by the
Snakefile and by `phaze check-config`): every model builds (zoo name or Hugging Face
config.json), every TP width divides its heads and every CP size splits its sequences;
the arch grid is not empty."""

from __future__ import annotations

import os

from phaze.errors import UserError


def semantic_errors(cfg: dict, check_grid: bool = True) -> list[str]:
    """Messages 'field F: what is wrong; the fix', one per problem found."""
    from phaze.model.zoo import ZOO, resolve_model

    from phaze.model.graph import check_context_parallel
    from phaze.settings import GraphSettings

    try:
        graph = GraphSettings.from_config(cfg.get("graph"))
    except UserError as e:
        return [f"field {e}"]
    attention = graph.attention
    errors = []
    seen = set()
    for i, m in enumerate(cfg["models"]):
        field = f"models[{i}].name"
        if m["name"] in seen:
            errors.append(f"field {field}: model {m['name']!r} listed twice; merge its seq/tp lists")
        seen.add(m["name"])
        if "hf_config" in m:
            field = f"models[{i}].hf_config"
            if not os.path.isfile(m["hf_config"]):
                errors.append(f"field {field}: no such file {m['hf_config']!r}")
                continue
        elif m["name"] not in ZOO:
            errors.append(
                f"field {field}: unknown model {m['name']!r}; known: {', '.join(sorted(ZOO))}"
                " (or give hf_config: path/to/config.json)")
            continue
        try:
            spec = resolve_model(m.get("hf_config", m["name"]))
        except UserError as e:
            errors.append(f"field {field}: {e}")
            continue
        if m.get("fixed_plan") and 1 not in m.get("cp", [1]):
            errors.append(f"field models[{i}].cp: the fixed baseline {m['fixed_plan']} runs "
                          "without context parallelism, which the cp list leaves out; add 1 "
                          "to it (or drop fixed_plan)")
        for j, t in enumerate(m["tp"]):
            try:
                spec.check_tp(t)                    # the check `phaze evaluate` and graphs run
            except UserError as e:
                errors.append(f"field models[{i}].tp[{j}]: {str(e).split(': ', 1)[-1]}")
                continue
            for k, seq in enumerate(m["seq"]):      # what a graph job would refuse, now
                for n, cp in enumerate(m.get("cp", [1])):
                    try:
                        for sp in graph.sp_values(t):
                            spec.check_run(seq, 1, t, sp, cp=cp)
                        if cp > 1:
                            check_context_parallel(spec, seq, attention)
                    except UserError as e:
                        where = e.field if e.field in ("seq", "cp") else "tp"
                        if e.field == "attention":
                            where = "cp"
                        idx = {"seq": k, "cp": n, "tp": j}[where]
                        errors.append(f"field models[{i}].{where}[{idx}]: "
                                      f"{str(e).split(': ', 1)[-1]}")
    if check_grid:
        errors += grid_errors(cfg["arch"])
    return list(dict.fromkeys(errors))   # a seq refused at every cp is one message


def grid_errors(arch_spec: dict) -> list[str]:
    """Bad axis values, or an empty grid after the area filter (phaze's own grid code)."""
    from phaze.hw.grid import enumerate_grid

    try:
        n = len(enumerate_grid(arch_spec))
    except UserError as e:
        return [f"field {e}" if e.field else f"field arch: {e}"]
    if n == 0:
        return ["field arch.area: no arch is left after the area filter; widen it"]
    return []
