"""Checks of a sweep config that a JSON schema cannot express, run before any job (by the
Snakefile and by `phaze check-config`): every model builds (zoo name or Hugging Face
config.json), every TP width divides its heads and every CP size splits its sequences,
an MoE model has an expert-parallel size (placement.ep) that divides its routed experts
(sizes that do not are skipped for it: model.graph.graph_eps), every fixed baseline plan
can run (fixed_plan_errors); the arch grid is not empty."""

from __future__ import annotations

import os

from phaze.errors import UserError

# The fixed Megatron-style baselines (p x d x t) published with PHAZE (configs/paper.yaml,
# docs/reference.md#models). Two of them do not split their model's blocks uniformly
# (gpt2-xl: 48 blocks, p = 32; megatron-gpt2-54: 54 blocks, p = 8): they are kept as
# published, so a config may name them, and the report says why they give no row
# (report.summary.fixed_plan_obstacle), as opt-350m's d = 85, which no power-of-two batch
# splits. Any other plan whose p does not divide the blocks, or whose d x mbs divides the
# global batch for no microbatch size, is refused.
PUBLISHED_FIXED_PLANS = {
    "bert-large": "8x128x1", "gpt2-xl": "32x32x1", "opt-350m": "12x85x1",
    "llama2-7b": "8x128x1", "megatron-gpt2-54": "8x32x4", "megatron-gpt2-72": "8x16x8",
    "gpt3-175b": "32x8x4",
}


def fixed_plan_problems(m: dict, spec, devices: int, graph, names: dict | None = None,
                        batch: int | None = None,
                        mbs: tuple = ()) -> list[tuple[str, str, str]]:
    """Why the fixed plan m["fixed_plan"] 'PxDxT' of the model entry m (name, tp, optional
    hf_config) cannot run, as (field, message, fix), one each: it needs more than `devices`
    accelerators, t does not divide the model's split dimensions or is not one of m["tp"]
    (the fixed plan runs on that width's graphs, without sequence parallelism); and, unless
    the plan is the published baseline of that zoo model (PUBLISHED_FIXED_PLANS), p does
    not divide the model's blocks (Megatron's uniform split) or d x mbs divides the global
    batch `batch` for no microbatch size of `mbs` (Megatron's num_microbatches = batch /
    (d mbs); unchecked when either is not given). `names` relabels the settings the messages name (keys plan,
    devices, tp, sp_true, sp_both, drop, batch, mbs: the config's fields by default;
    `phaze search` passes its flags)."""
    plan = m.get("fixed_plan")
    if not plan:
        return []
    label = {"plan": "fixed_plan", "devices": "placement.devices", "tp": "the model's tp list",
             "sp_true": "graph.sequence_parallel: true",
             "sp_both": "graph.sequence_parallel: [false, true]", "drop": "fixed_plan",
             "batch": "placement.global_batch", "mbs": "microbatch_sizes", **(names or {})}
    field = label["plan"]
    p, d, t = (int(x) for x in str(plan).lower().split("x"))
    problems = []
    if p * d * t > devices:
        problems.append((field, f"{plan} needs p x d x t = {p * d * t} devices, more than "
                         f"{label['devices']} {devices}",
                         f"use a plan of at most {devices} devices, raise {label['devices']} "
                         f"to {p * d * t}, or drop {label['drop']}"))
    try:
        spec.check_tp(t)
    except UserError as e:
        why = str(e).split(": ", 1)[-1]
        if e.fix:
            why = why.removesuffix(f"; fix: {e.fix}")
        problems.append((field, f"t = {t} of {plan}: {why}", e.fix))
    else:
        if t not in m["tp"]:
            problems.append((field, f"t = {t} of {plan} is not among the model's tp widths "
                             f"{list(m['tp'])}, so the plan has no graphs to run on",
                             f"add {t} to {label['tp']} or use a plan with t in it"))
        elif t > 1 and False not in graph.sp_values(t):
            problems.append((field, f"{plan} runs without sequence parallelism, which "
                             f"{label['sp_true']} leaves out",
                             f"set {label['sp_both']} or drop {label['drop']}"))
    blocks = spec.layers
    published = "hf_config" not in m and PUBLISHED_FIXED_PLANS.get(m["name"]) == plan
    if blocks % p and not published:
        ok = [k for k in range(1, blocks + 1) if blocks % k == 0]
        problems.append((field, f"p = {p} of {plan} does not divide {m['name']}'s {blocks} "
                         "transformer blocks (Megatron's uniform split)",
                         f"use a p dividing {blocks}: {', '.join(map(str, ok))}"))
    if batch and mbs and all(int(batch) % (d * int(b)) for b in mbs) and not published:
        step = d * min(int(b) for b in mbs)
        problems.append((field, f"d = {d} of {plan} times no microbatch size in "
                         f"{label['mbs']} {list(mbs)} divides {label['batch']} {batch} "
                         "(Megatron's batch / (d x mbs) microbatches)",
                         f"set {label['batch']} to a multiple of {step} (e.g. "
                         f"{step * -(-int(batch) // step)}), use a d that divides it, or drop "
                         f"{label['drop']}"))
    return problems


def fixed_plan_errors(i: int, m: dict, spec, devices: int, graph, batch: int | None = None,
                      mbs: tuple = ()) -> list[str]:
    """fixed_plan_problems of models[i] as check-config messages 'field F: what; fix: how'."""
    names = {"plan": f"models[{i}].fixed_plan", "tp": f"models[{i}].tp"}
    return [f"field {f}: {msg}; fix: {fix}" if fix else f"field {f}: {msg}"
            for f, msg, fix in fixed_plan_problems(m, spec, devices, graph, names, batch, mbs)]


def semantic_errors(cfg: dict, check_grid: bool = True) -> list[str]:
    """Messages 'field F: what is wrong; the fix', one per problem found."""
    from phaze.model.zoo import ZOO, closest_model, resolve_model

    from phaze.model.graph import check_context_parallel, cp_comm_refusal, graph_eps
    from phaze.settings import GraphSettings, PlacementSettings, SweepSettings, parse_list

    try:
        graph = GraphSettings.from_config(cfg.get("graph"))
        placement = PlacementSettings.from_config(cfg.get("placement"))
        devices = placement.devices
        mbs_sizes = parse_list(cfg.get("microbatch_sizes", SweepSettings().microbatch_sizes),
                               int, "microbatch_sizes", minimum=1)
    except UserError as e:
        return [f"field {e}"]
    attention = graph.attention
    errors = []
    seen = set()
    moe, resolved = False, True     # whether a model has routed experts (placement.ep's use)
    for i, m in enumerate(cfg["models"]):
        field = f"models[{i}].name"
        if m["name"] in seen:
            errors.append(f"field {field}: model {m['name']!r} listed twice; fix: merge its "
                          "seq/tp lists into one entry")
        seen.add(m["name"])
        if "hf_config" in m:
            field = f"models[{i}].hf_config"
            if not os.path.isfile(m["hf_config"]):
                errors.append(f"field {field}: no such file {m['hf_config']!r}; fix: give "
                              "the path of a Hugging Face config.json, or drop hf_config for "
                              "a zoo model")
                resolved = False
                continue
        elif m["name"] not in ZOO:
            near = closest_model(m["name"])
            fix = (f"did you mean {near!r}? " if near else "") + \
                f"use a zoo name ({', '.join(sorted(ZOO))}) or give hf_config: path/to/config.json"
            errors.append(f"field {field}: unknown model {m['name']!r}; fix: {fix}")
            resolved = False
            continue
        try:
            # messages name the model as the config does, not by its file's stem
            spec = resolve_model(m.get("hf_config", m["name"])).with_(name=m["name"])
        except UserError as e:
            errors.append(f"field {field}: {e}")
            resolved = False
            continue
        moe = moe or bool(spec.experts)
        if m.get("fixed_plan") and 1 not in m.get("cp", [1]):
            errors.append(f"field models[{i}].cp: the fixed baseline {m['fixed_plan']} runs "
                          "without context parallelism, which the cp list leaves out; fix: "
                          "add 1 to it (or drop fixed_plan)")
        try:
            graph_eps(spec, placement.ep)
        except UserError as e:
            errors.append(f"field {e}")
        if m.get("fixed_plan") and spec.experts and 1 not in placement.ep:
            errors.append(f"field placement.ep: the fixed baseline {m['fixed_plan']} of "
                          f"models[{i}] runs without expert parallelism, which the ep list "
                          "leaves out; fix: add 1 to it (or drop fixed_plan)")
        errors += fixed_plan_errors(i, m, spec, devices, graph, placement.global_batch,
                                    mbs_sizes)
        errors += device_errors(i, m, spec, devices, placement.ep)
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
                        no = cp > 1 and cp_comm_refusal(
                            spec, seq, t, cp, placement.cp_comm_type, placement.cp_a2a_size,
                            "placement.cp_comm_type", "placement.cp_a2a_size")
                        if no:     # named at models[i].cp[j], the size it refuses
                            raise UserError(
                                f"{no[0]} (placement.cp_comm_type {placement.cp_comm_type})",
                                field="cp", fix=no[2])
                    except UserError as e:
                        where = e.field if e.field in ("seq", "cp") else "tp"
                        if e.field == "attention":
                            where = "cp"
                        idx = {"seq": k, "cp": n, "tp": j}[where]
                        loc = f"models[{i}].{where}[{idx}]"
                        errors.append(f"field {loc}: " + config_fix(
                            str(e).split(": ", 1)[-1], e.field, loc))
    pl_raw = cfg.get("placement") or {}
    if resolved and not moe and "ep" in pl_raw and any(e > 1 for e in placement.ep):
        # the ep axis spreads routed experts; a dense sweep would ignore it (and re-run for it)
        errors.append(f"field placement.ep: expert-parallel sizes {list(placement.ep)} spread "
                      "routed experts, and no model of this sweep has any; fix: drop "
                      "placement.ep (or add an MoE model)")
    if pl_raw.get("zero1") is True and placement.zero_stage and 1 not in placement.zero_stage:
        # zero_stage decides the stages searched: a zero1 it leaves out would be ignored
        errors.append(f"field placement.zero1: true asks for ZeRO-1, but placement.zero_stage "
                      f"{list(placement.zero_stage)} (the stages searched) leaves stage 1 out; "
                      f"fix: add 1 to placement.zero_stage, or set zero1: false")
    mbs = cfg.get("microbatch_sizes") or []
    batch = placement.global_batch
    if mbs and all(batch % b for b in mbs):
        ok = [b for b in range(1, min(batch, max(mbs)) + 1) if batch % b == 0]
        errors.append(f"field placement.global_batch: no microbatch size {list(mbs)} divides "
                      f"the global batch {batch} (a plan runs batch / (d x mbs) microbatches "
                      f"per replica), so no plan can run it; fix: add to microbatch_sizes a "
                      f"size that divides {batch} (e.g. {' or '.join(map(str, ok[::-1][:4]))}), "
                      f"or give a global_batch that one of them divides")
    if check_grid:
        errors += grid_errors(cfg["arch"])
    return list(dict.fromkeys(errors))   # a seq refused at every cp is one message


def config_fix(text: str, flag: str | None, field: str) -> str:
    """A model check's message with its command-line fix said as the config field: "use
    --seq 512 or less" (phaze graph's flag) -> "set models[0].seq[0] to 512 or less"."""
    return text.replace(f"use --{flag} ", f"set {field} to ") if flag else text


def device_errors(i: int, m: dict, spec, devices: int, eps) -> list[str]:
    """A model that no plan can place on `devices`: every tp x cp width needs more
    devices, or (MoE) every expert-parallel size dividing its experts does (ep ranks are
    distinct devices). The DP would find no plan, and the report could only call the
    model infeasible."""
    from phaze.model.graph import dividing_eps

    errors = []
    tps, cps = m["tp"], m.get("cp", [1])
    least = min(tps) * min(cps)
    if least > devices:
        field = f"models[{i}].tp" if min(tps) > devices else f"models[{i}].cp"
        add = (f"a tp width of at most {devices} to models[{i}].tp" if field.endswith("tp")
               else f"cp 1 to models[{i}].cp")
        errors.append(f"field {field}: every tp x cp of {spec.name} needs more than "
                      f"placement.devices {devices} (the smallest: tp {min(tps)} x cp "
                      f"{min(cps)} = {least} devices), so no plan can run it; fix: add "
                      f"{add}, or raise placement.devices to {least}")
    if spec.experts:
        got = dividing_eps(spec.experts, eps)
        if got and min(got) > devices:
            ok = [k for k in range(1, min(devices, spec.experts) + 1) if spec.experts % k == 0]
            errors.append(f"field placement.ep: every expert-parallel size of {spec.name} "
                          f"{list(got)} needs more than placement.devices {devices}, so no "
                          f"plan can run it; fix: add an ep of at most {devices} dividing its "
                          f"{spec.experts} routed experts to placement.ep "
                          f"({', '.join(map(str, ok))}), or raise placement.devices to "
                          f"{min(got)}")
    return errors


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
