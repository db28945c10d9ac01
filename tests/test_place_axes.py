"""The default DP's axes beyond d, p, t (expert parallelism, context parallelism, ZeRO-0..3)
on multi-level networks: its optimum equals an exhaustive search over (ep, ZeRO stage, d,
p, every contiguous partition) with an evaluator written here from the documented
formulas (docs/place.md#axes), none of phaze's cost helpers used."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from phaze.place.chain import Chain
from phaze.place.dp import best_plans
from phaze.place.plan import Links, PlanOptions, evaluate_plan
from test_place_levels import rand_levels  # 2-3 random network levels, one generator

GB, WB, ADAM = 2.0, 2.0, 12.0      # bf16 grads and weights, fp32 master + 2 moments


def rand_moe_chain(rng):
    """Alternating attention-like and MoE-like layers; MoE layers carry expert weights and
    an all-to-all payload, attention-like ones an attention core and a K, V chunk (the
    context-parallel ring's payload)."""
    n = int(rng.integers(2, 7))
    fwd = rng.uniform(0.5, 3.0, n)
    bwd = 2 * fwd * rng.uniform(0.8, 1.2, n)
    P = rng.integers(1, 100, n).astype(float) * 1e6
    moe = rng.random(n) < 0.5
    E = np.where(moe, P * rng.uniform(0.5, 0.95, n), 0.0)
    kw = dict(a2a_bytes=np.where(moe, rng.integers(1, 40, n) * 1e6, 0.0),
              act_none_bytes=rng.integers(1, 100, n).astype(float) * 1e6,
              act_full_bytes=rng.integers(1, 10, n).astype(float) * 1e6,
              act_selective_bytes=rng.integers(1, 60, n).astype(float) * 1e6,
              recompute_selective_s=rng.uniform(0.0, 0.5, n) * fwd,
              out_bytes=rng.integers(0, 50, n).astype(float) * 1e6)
    core = rng.uniform(0.05, 0.6, n)
    kw.update(core_fwd_s=core * fwd, core_bwd_s=core * bwd,
              core_recompute_s=kw["recompute_selective_s"] * rng.uniform(0.3, 1.0, n),
              kv_bytes=np.where(moe, 0.0, rng.integers(1, 200, n) * 1e6))
    return Chain(t=int(rng.choice([1, 2])), mbs=1, seq=128, fwd_s=fwd, bwd_s=bwd,
                 tp_fwd_s=0.1 * fwd, tp_bwd_s=0.1 * fwd, param_count=P, expert_param_count=E,
                 flops_fwd=fwd * 1e12, flops_bwd=2 * fwd * 1e12, kinds=("block",) * n, **kw)


# ------------------------------------------------------------- independent evaluator
def fanout(levels, g, stride):
    """[(k, bw, lat)]: a group of g members `stride` apart in rank order has, inside one
    level-i group, min(g, level size // stride) members."""
    out, below = [], 1
    for size, bw, lat in levels:
        inside = g if size == 0 else max(1, min(g, size // stride))
        inside = max(inside, below)
        if inside > below:
            out.append((inside // below, bw, lat))
        below = inside
    return out


def coll(kind, levels, nbytes, g, stride):
    if g <= 1 or nbytes <= 0:
        return 0.0
    t, below = 0.0, 1
    for k, bw, lat in fanout(levels, g, stride):
        if kind == "ar":
            t += 2 * (k - 1) / k * nbytes / below / bw + 2 * (k - 1) * lat
        elif kind in ("rs", "ag"):
            t += (k - 1) / k * nbytes / below / bw + (k - 1) * lat
        else:   # all-to-all: the share leaving the level below crosses this level
            t += nbytes * (below * k - below) / g / bw + (k - 1) * lat
        below *= k
    return t


def send(levels, nbytes, g, stride):
    """Send/recv between neighbours of a g-member ring `stride` apart: latency + bytes / bw
    of the outermost level the group spans."""
    fan = fanout(levels, g, stride)
    if g <= 1 or nbytes <= 0 or not fan:
        return 0.0
    _k, bw, lat = fan[-1]
    return lat + nbytes / bw


def my_eval(ch, stages, d, batch, rec, levels, ep, cp, z, step_s=0.0):
    """Megatron-Core's groups: dense grads over d cp devices stride t; with ep > 1 the
    expert grid is tp, ep, dp, pp (CP folded in): the all-to-all over ep devices stride t,
    the experts' grads (and ZeRO shards) over the d cp / ep expert-data-parallel devices
    stride t ep. `step_s`: optimizer step seconds per parameter a device steps (with ZeRO
    >= 1 each member of a group steps 1/group of its params), after the stage's sync."""
    p, t, n = len(stages), ch.t, ch.n
    g = d * cp
    M = batch // (ch.mbs * d)
    a2a = np.array([coll("a2a", levels, b, ep, t) for b in ch.a2a_bytes])
    # ring attention over cp devices stride t: cp - 1 steps, each max(core, K V send)
    ring_f, ring_b, ring_r = (np.zeros(n) for _ in range(3))
    for k in range(n):
        if ch.kv_bytes[k] > 0:
            sf, sb = send(levels, ch.kv_bytes[k], cp, t), send(levels, 2 * ch.kv_bytes[k], cp, t)
            ring_f[k] = (cp - 1) * max(ch.core_fwd_s[k], sf)
            ring_b[k] = (cp - 1) * max(ch.core_bwd_s[k], sb)
            if ch.core_recompute_s[k] > 0:
                ring_r[k] = (cp - 1) * max(ch.core_recompute_s[k], sf)
    F, B = ch.fwd_s + ring_f + 2 * a2a, ch.bwd_s + ring_b + 2 * a2a
    E = ch.expert_param_count / ep if ep > 1 else 0 * ch.expert_param_count
    D = ch.param_count - ch.expert_param_count + (0 if ep > 1 else ch.expert_param_count)
    groups = ((D, g, t), (E, g // ep, t * ep))      # (params per layer, group, stride)
    blocks = np.array([kind not in ("prologue", "epilogue") for kind in ch.kinds], dtype=float)
    R = {"none": 0 * F, "selective": ch.recompute_selective_s + ring_r, "full": F * blocks}[rec]
    kept = {"none": ch.act_none_bytes, "selective": ch.act_selective_bytes,
            "full": ch.act_full_bytes}[rec]
    work = np.maximum(ch.act_none_bytes - kept, 0.0)     # never negative (Chain.work_bytes)
    S = t * cp * d                     # devices of one pipeline rank
    bound = {}
    for r, (i, _j) in enumerate(stages):
        if r:   # hop into rank r: device x of rank r - 1 to device x of rank r, slowest pair
            lv = max(next(k for k, (g, _b, _a) in enumerate(levels)
                          if g == 0 or ((r - 1) * S + x) // g == (r * S + x) // g)
                     for x in range(S))
            bound[i - 1] = levels[lv][1:]
    hop = lambda k: bound[k][1] + ch.out_bytes[k] / bound[k][0] if ch.out_bytes[k] > 0 else 0.0  # noqa: E731
    def per_param(n):
        return WB / (n if z >= 3 else 1) + GB / (n if z >= 2 else 1) + ADAM / (n if z >= 1 else 1)

    loads, syncs, mem = [], [], 0.0
    for k, (i, j) in enumerate(stages):
        sync = per_mb = static = 0.0
        for X, n_, s_ in groups:
            Ps = X[i:j].sum()
            static += Ps * per_param(n_)
            if z == 0:
                sync += coll("ar", levels, GB * Ps, n_, s_)
            elif z == 1:
                sync += coll("rs", levels, GB * Ps, n_, s_) + coll("ag", levels, WB * Ps, n_, s_)
            elif z == 2:
                sync += coll("ag", levels, WB * Ps, n_, s_)
                per_mb += coll("rs", levels, GB * Ps, n_, s_)
            else:
                per_mb += coll("rs", levels, GB * Ps, n_, s_) + 2 * coll("ag", levels, WB * Ps, n_, s_)
            sync += step_s * Ps / (n_ if z >= 1 else 1)
        fb = F[i:j].sum() + B[i:j].sum()
        zero_mb = max(per_mb / (j - i), per_mb - fb)
        cin = hop(i - 1) if i > 0 else 0.0
        cout = hop(j - 1) if j < n else 0.0
        loads.append(cin + fb + R[i:j].sum() + cout + zero_mb)
        syncs.append(sync)
        inflight = min(p - k, M)
        mem = max(mem, static + inflight * kept[i:j].sum() + work[i:j].max())
    return (M + p - 1) * max(loads) + max(syncs), mem


def partitions(n, p):
    for cuts in itertools.combinations(range(1, n), p - 1):
        b = (0,) + cuts + (n,)
        yield list(zip(b[:-1], b[1:]))


def brute(ch, devices, batch, rec, hbm, levels, cp, eps, zs, step_s=0.0):
    best = np.inf
    nmb = batch // ch.mbs
    for ep in eps:
        for z in zs:
            for d in range(1, nmb + 1):
                if nmb % d or (d * cp) % ep:
                    continue
                for p in range(1, ch.n + 1):
                    if ch.t * cp * d * p > devices:
                        break
                    for st in partitions(ch.n, p):
                        tm, mem = my_eval(ch, st, d, batch, rec, levels, ep, cp, z, step_s)
                        if mem <= hbm:
                            best = min(best, tm)
    return best


def instance(seed):
    """(chain, network levels, cp, devices, batch, HBM limits) of one random instance:
    an MoE chain on a random multi-level network, one tight and one loose memory limit."""
    rng = np.random.default_rng(1000 + seed)
    ch = rand_moe_chain(rng)
    levels = rand_levels(rng)
    cp = int(rng.choice([1, 2]))
    devices = int(rng.choice([4, 8, 16]))
    batch = int(rng.choice([4, 8]))
    hbms = (float(rng.uniform(0.2, 1.0) * 1e10), 1e12)
    return ch, levels, cp, devices, batch, hbms


@pytest.mark.parametrize("seed", range(60))
def test_dp_with_ep_cp_zero_equals_bruteforce(seed):
    ch, levels, cp, devices, batch, hbms = instance(seed)
    eps = (1, 2, 4)
    zs = (0, 1, 2, 3)
    recs = ("none", "selective", "full")
    links = Links(levels=levels)
    opts = PlanOptions(optimizer="adam", collectives="nccl", cp=cp)
    got = best_plans(ch, devices, batch, hbms, recs, links=links, options=opts, eps=eps,
                     zero_stages=zs)
    for (h, rec), plan in got.items():
        want = brute(ch, devices, batch, rec, h, levels, cp, eps, zs)
        if not np.isfinite(want):
            assert plan is None
            continue
        assert plan is not None and plan["feasible"]
        assert plan["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
        # the plan's own figures under the independent evaluator
        tm, mem = my_eval(ch, [tuple(s) for s in plan["stages"]], plan["d"], batch, rec, levels,
                          plan["ep"], plan["cp"], plan["zero_stage"])
        assert tm == pytest.approx(plan["time_per_batch_s"], rel=1e-9)
        assert mem == pytest.approx(plan["memory_per_device_bytes"], rel=1e-9)
        assert plan["devices"] == plan["p"] * plan["d"] * plan["t"] * cp
    # the DP's own objective is the evaluator's (not just its argmin): bounded just below
    # the optimum no plan beats it (no term missing), just above the optimum is found
    for (h, rec), plan in got.items():
        if plan is not None:
            for f, found in ((1 - 1e-7, False), (1 + 1e-7, True)):
                lim = {(h, rec): plan["time_per_batch_s"] * f}
                pl = best_plans(ch, devices, batch, [h], [rec], links=links, options=opts,
                                eps=eps, zero_stages=zs, bound=lim)[(h, rec)]
                assert (pl is not None) == found


@pytest.mark.parametrize("seed", range(16))
def test_dp_with_optimizer_step_equals_bruteforce(seed):
    """The optimizer step, timed from the HBM bandwidth (36 B/param: adam_step_bytes of
    bf16 grads, fp32 state, bf16 weights), is charged with the stage's sync; ZeRO >= 1
    shards it. The DP's optimum equals the exhaustive search with the step in the
    independent evaluator, and the plan's optimizer_s is its closed form."""
    from phaze.place.plan import adam_step_bytes

    ch, levels, cp, devices, batch, hbms = instance(seed)
    hbm_bw = float(np.random.default_rng(seed).uniform(1e6, 1e8))
    step_bytes = adam_step_bytes(GB, ADAM, WB)
    assert step_bytes == 36.0
    eps, zs, recs = ((1, 2, 4) if seed % 2 else (2,)), (0, 1, 3), ("none", "full")
    opts = PlanOptions(optimizer="adam", collectives="nccl", cp=cp,
                       optimizer_bytes_per_param=step_bytes)
    got = best_plans(ch, devices, batch, hbms, recs, links=Links(levels=levels), options=opts,
                     eps=eps, zero_stages=zs, hbm_bw_Bps=hbm_bw)
    for (h, rec), plan in got.items():
        want = brute(ch, devices, batch, rec, h, levels, cp, eps, zs, step_bytes / hbm_bw)
        if not np.isfinite(want):
            assert plan is None
            continue
        assert plan["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
        st = [tuple(s) for s in plan["stages"]]
        z, ep, d = plan["zero_stage"], plan["ep"], plan["d"]
        dense = [ch.param_count[i:j].sum() - (ch.expert_param_count[i:j].sum() if ep > 1 else 0)
                 for i, j in st]
        expert = [ch.expert_param_count[i:j].sum() / ep if ep > 1 else 0.0 for i, j in st]
        g = d * cp
        steps = [(P / (g if z >= 1 else 1) + E / (g // ep if z >= 1 else 1)) * step_bytes / hbm_bw
                 for P, E in zip(dense, expert)]
        assert any(plan["optimizer_s"] == pytest.approx(x, rel=1e-9) for x in steps)
        assert plan["optimizer_s"] > 0
        # the DP's own objective carries the step (dense and expert): just below the
        # optimum nothing is found, just above it is
        for f, found in ((1 - 1e-7, False), (1 + 1e-7, True)):
            pl = best_plans(ch, devices, batch, [h], [rec], links=Links(levels=levels),
                            options=opts, eps=eps, zero_stages=zs, hbm_bw_Bps=hbm_bw,
                            bound={(h, rec): plan["time_per_batch_s"] * f})[(h, rec)]
            assert (pl is not None) == found


def test_axes_change_the_answer():
    """The instances above exercise every axis: some optimum uses ep > 1, some ZeRO-2/3."""
    seen = set()
    for seed in range(60):
        ch, levels, cp, devices, batch, hbms = instance(seed)
        got = best_plans(ch, devices, batch, hbms, ("none", "full"), links=Links(levels=levels),
                         options=PlanOptions(collectives="nccl", cp=cp), eps=(1, 2, 4),
                         zero_stages=(0, 1, 2, 3))
        for pl in got.values():
            if pl:
                seen.add(("ep", pl["ep"] > 1))
                seen.add(("zero", pl["zero_stage"]))
    assert ("ep", True) in seen and ("ep", False) in seen
    assert {("zero", 2), ("zero", 3)} & seen


def test_expert_parallelism_shards_expert_weights_only():
    rng = np.random.default_rng(7)
    ch = rand_moe_chain(rng)
    opts = PlanOptions(collectives="nccl", ep=2)
    links = Links(levels=((4, 1e9, 1e-5), (0, 1e8, 1e-4)))
    one = evaluate_plan(ch, 1, 2, 4, links=links, options=PlanOptions(collectives="nccl"))
    two = evaluate_plan(ch, 1, 2, 4, links=links, options=opts)
    dense = ch.param_count.sum() - ch.expert_param_count.sum()
    per_param = (one["memory_weights_bytes"]) / ch.param_count.sum()
    assert two["memory_weights_bytes"] == pytest.approx(
        per_param * (dense + ch.expert_param_count.sum() / 2))
    bad = evaluate_plan(ch, 1, 1, 4, links=links, options=PlanOptions(collectives="nccl", ep=4))
    assert not bad["feasible"] and "ep 4" in bad["reason"]


def test_driver_rows_carry_the_axes_and_reproduce():
    """A sweep row's ep / cp / zero_stage columns name the plan: evaluate_plan with those
    axes gives the row's time and memory."""
    from phaze.hw.presets import NETWORKS
    from phaze.place.driver import context, run_item
    from phaze.place.plan import with_axes
    from phaze.place.synthetic import gpt_chain
    from phaze.settings import PlacementSettings, SweepSettings

    pl = PlacementSettings(devices=64, global_batch=64, hbm_gib=(16,), recompute=("full",),
                           zero_stage=(0, 1, 2, 3))
    ctx = context(SweepSettings(placement=pl, network=NETWORKS["dgx-h100-superpod"]))
    assert ctx["zero_stages"] == (0, 1, 2, 3) and ctx["options"].collectives == "nccl"
    syn = {"layers": 8, "hidden": 2048, "heads": 16, "vocab": 32000, "tps": [1, 2],
           "peak_flops": 300e12}
    item = {"model": "m", "seq": 1024, "arch_id": "a", "mbs": 1, "hbm_bytes": 16 * 2**30,
            "recompute": "full", "synthetic": syn}
    ctx["hbm_bw"] = {"a": 2e11}        # the arch's achieved HBM bandwidth: times the step
    table = run_item(0, item, ctx)
    row = table[table.row_kind == "best"].iloc[0]
    assert row["feasible"] and row["zero_stage"] in (0, 1, 2, 3) and row["ep"] == 1
    ch = gpt_chain(seq=1024, mbs=1, t=int(row["t"]), model="m", layers=8, hidden=2048,
                   heads=16, vocab=32000, peak_flops=300e12)
    import json
    stages = [tuple(s) for s in json.loads(row["stages"])]
    ev = evaluate_plan(ch, int(row["p"]), int(row["d"]), 64, "full", int(row["interleave"]),
                       stages=stages, hbm_bytes=16 * 2**30, links=ctx["links"],
                       options=with_axes(ctx["options"], int(row["ep"]), int(row["zero_stage"])),
                       hbm_bw_Bps=2e11)
    assert ev["time_per_batch_s"] == pytest.approx(row["time_per_batch_s"], rel=1e-12)
    assert ev["memory_per_device_bytes"] == pytest.approx(row["memory_per_device_bytes"], rel=1e-12)
    # the sweep's step: mixed-precision Adam, 36 B per parameter a device steps (its shard
    # with ZeRO >= 1), at the arch's bandwidth
    shard = row["d"] if row["zero_stage"] >= 1 else 1
    steps = [ch.param_count[i:j].sum() / shard * 36.0 / 2e11 for i, j in stages]
    assert any(row["optimizer_s"] == pytest.approx(x, rel=1e-12) for x in steps)


def test_megatron_export_names_the_axes():
    from phaze.report.runnable import megatron_args, nemo_yaml

    row = {"t": 2, "p": 4, "d": 8, "interleave": 1, "stages": "[]", "mbs": 1, "seq": 4096,
           "recompute": "none", "ep": 4.0, "cp": 2.0, "zero_stage": 3.0}
    text = megatron_args(row, 1024)
    for flag in ("--expert-model-parallel-size 4", "--context-parallel-size 2",
                 "--use-distributed-optimizer", "--use-custom-fsdp",
                 "--data-parallel-sharding-strategy optim_grads_params", "world size 128"):
        assert flag in text
    assert "expert_model_parallel_size: 4" in nemo_yaml(row, 1024, 8)
    # a table of feasible rows only stores sequence_parallel as numpy bools
    import numpy as np

    from phaze.report.summary import plan_label

    sp = dict(row, sequence_parallel=np.True_)
    assert "--sequence-parallel" in megatron_args(sp, 1024)
    assert "sequence_parallel: true" in nemo_yaml(sp, 1024, 8)
    assert "--sequence-parallel" not in megatron_args(dict(row, sequence_parallel=np.False_), 1024)
    assert "cp=2 ep=4" in plan_label(row) and "cp=" not in plan_label(dict(row, cp=1.0))
    # every axis a plan uses shows: two plans that differ only in v, SP or ZeRO differ here
    labels = {plan_label(dict(row, interleave=v, sequence_parallel=s, zero_stage=z))
              for v in (1, 2) for s in (np.False_, np.True_) for z in (0, 1, 3)}
    assert len(labels) == 12
    assert "v=2 sp zero=3" in plan_label(dict(row, interleave=2, sequence_parallel=np.True_,
                                               zero_stage=3))
    old = {k: v for k, v in row.items() if k not in ("ep", "cp", "zero_stage")}
    assert "--use-distributed-optimizer" not in megatron_args(old, 1024)
    assert "--use-distributed-optimizer" in megatron_args(old, 1024, zero1=True)


@pytest.mark.parametrize("field,value", [("zero_stage", (4,)), ("ep", (0,)), ("ep", ("x",))])
def test_bad_axis_settings_name_the_field(field, value):
    from phaze.errors import UserError
    from phaze.settings import PlacementSettings

    with pytest.raises(UserError) as e:
        PlacementSettings(**{field: value})
    assert field in str(e.value)


def test_moe_graph_gives_expert_weights_and_all_to_all_payload():
    """chain_from_graph on Mixtral-8x7B (t = 2): every block's routed experts hold
    8 x 3 h ffn / t parameters, and one all-to-all moves the T top_k h token slots (bf16)."""
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph

    g = build_graph(get_model("mixtral-8x7b"), seq=512, mbs=1, tp=2)
    ch = chain_from_graph(g, op_latency_s=lambda o: 1e-6)
    blocks = [k for k, kind in enumerate(ch.kinds) if kind == "block"]
    assert len(blocks) == 32
    assert ch.expert_param_count[blocks] == pytest.approx(8 * 3 * 4096 * 14336 / 2)
    assert ch.a2a_bytes[blocks] == pytest.approx(512 * 2 * 4096 * 2)
    assert ch.expert_param_count[0] == 0 and ch.a2a_bytes[-1] == 0


def test_expert_state_and_gradients_use_the_expert_data_parallel_group():
    """Closed form on Mixtral-8x7B (t = 2, one pipeline stage), from Megatron-Core: a
    device keeps E / ep of the routed experts' E parameters (its EP shard) and the
    distributed optimizer / ZeRO shards each parameter buffer over that buffer's data-
    parallel group: the d cp / ep expert-data-parallel devices for expert buffers
    (DistributedDataParallel: intra_expt_dp_group), d cp for the dense ones. So with
    ZeRO-2 a device holds 12 B (optimizer) and 2 B (grads) x (D / (d cp) + (E / ep) /
    (d cp / ep)) = x (D + E) / (d cp), and 2 B x (D + E / ep) of weights; the expert
    gradients are all-reduced (ZeRO-0) by a ring of d / ep devices."""
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph
    from phaze.place.plan import with_axes

    ch = chain_from_graph(build_graph(get_model("mixtral-8x7b"), seq=512, mbs=1, tp=2),
                          op_latency_s=lambda o: 1e-6)
    E = float(ch.expert_param_count.sum())
    D = float(ch.param_count.sum()) - E - ch.shared_param_count
    d, cp, ep = 4, 2, 4
    links = Links(levels=((8, 400e9, 3e-6), (0, 50e9, 1e-5)))
    pl = evaluate_plan(ch, 1, d, 64, links=links, options=with_axes(
        PlanOptions(collectives="nccl", cp=cp), ep, 2))
    assert pl["memory_optimizer_bytes"] == pytest.approx(ADAM * (D + E) / (d * cp), rel=1e-12)
    assert pl["memory_grads_bytes"] == pytest.approx(GB * (D + E) / (d * cp), rel=1e-12)
    assert pl["memory_weights_bytes"] == pytest.approx(WB * (D + E / ep), rel=1e-12)
    # ZeRO-0 on the flat two-level network (8 devices a node, 300 GB/s + 2 us inside,
    # 25 GB/s + 5 us between): dense ring of d = 8 stride 2 and expert ring of 2 stride 8,
    # both across nodes
    flat = Links()
    d = 8
    pl = evaluate_plan(ch, 1, d, 64, links=flat, options=with_axes(PlanOptions(), ep, 0))
    bw, lat = flat.inter_bw_Bps, flat.inter_latency_s
    ge = d // ep
    want = (2 * (d - 1) / d * GB * D / bw + 2 * (d - 1) * lat
            + 2 * (ge - 1) / ge * GB * E / ep / bw + 2 * (ge - 1) * lat)
    assert pl["dp_sync_s"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_plain_model_with_experts_dp_equals_evaluate_plan(seed):
    """The plain model (flat two-level network, ZeRO-0 or ZeRO-1 via zero1) with ep > 1:
    the DP's optimum equals the least evaluate_plan over every (ep, d, p, partition); the
    evaluator's expert group terms are pinned by the closed form above."""
    from phaze.place.plan import with_axes

    rng = np.random.default_rng(5000 + seed)
    ch = rand_moe_chain(rng)
    links = Links(devices_per_node=int(rng.choice([2, 4])), intra_bw_Bps=300e6,
                  inter_bw_Bps=30e6, intra_latency_s=1e-4, inter_latency_s=2e-3)
    devices, batch = int(rng.choice([8, 16])), 8
    hbm = float(rng.uniform(0.2, 1.0) * 1e10)
    opts = PlanOptions(zero1=bool(seed % 2))
    got = best_plans(ch, devices, batch, (hbm,), ("none",), links=links, options=opts,
                     eps=(1, 2, 4))[(hbm, "none")]
    want = np.inf
    for ep in (1, 2, 4):
        o = with_axes(opts, ep)
        for d in (1, 2, 4, 8):
            for p in range(1, ch.n + 1):
                if ch.t * d * p > devices or d % ep:
                    continue
                for st in partitions(ch.n, p):
                    pl = evaluate_plan(ch, p, d, batch, "none", stages=st, hbm_bytes=hbm,
                                       links=links, options=o)
                    if pl["feasible"]:
                        want = min(want, pl["time_per_batch_s"])
    if not np.isfinite(want):
        assert got is None
    else:
        assert got["time_per_batch_s"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed, comm", [(s, c) for s in range(4) for c in ("allgather", "a2a")])
def test_dp_with_cp_comm_types_equals_evaluate_plan(seed, comm):
    """--cp-comm-type allgather / a2a (plan.context_parallel_chain) in the DP: its optimum
    over recompute modes and ZeRO stages equals the least evaluate_plan over every (d, p,
    partition) at cp 2, and differs from the p2p ring's (its exposed collectives)."""
    from dataclasses import replace

    rng = np.random.default_rng(7000 + seed)
    ch = rand_moe_chain(rng)
    # dense, and every layer attention-like (a K, V chunk and a core)
    ch = replace(ch, a2a_bytes=np.zeros(ch.n), expert_param_count=np.zeros(ch.n),
                 kv_bytes=rng.integers(1, 200, ch.n) * 1e6,
                 extra={**ch.extra, "cp_q_bytes": 3e7, "cp_o_bytes": 3e7})
    links = Links(levels=rand_levels(rng))
    devices, batch, cp = 16, 8, 2
    hbm = 1e12
    for rec in ("none", "selective"):
        opts = PlanOptions(optimizer="adam", collectives="nccl", cp=cp, cp_comm_type=comm)
        got = best_plans(ch, devices, batch, (hbm,), (rec,), links=links, options=opts,
                         eps=(1,))[(hbm, rec)]
        want = min(evaluate_plan(ch, p, d, batch, rec, stages=st, hbm_bytes=hbm, links=links,
                                 options=opts)["time_per_batch_s"]
                   for d in (1, 2, 4, 8) for p in range(1, ch.n + 1)
                   if ch.t * cp * d * p <= devices for st in partitions(ch.n, p))
        assert got["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
        ring = best_plans(ch, devices, batch, (hbm,), (rec,), links=links,
                          options=replace(opts, cp_comm_type="p2p"), eps=(1,))[(hbm, rec)]
        assert got["time_per_batch_s"] != pytest.approx(ring["time_per_batch_s"], rel=1e-9)


def test_fixed_baseline_runs_the_sweeps_zero_stages():
    """The fixed PxDxT baseline takes the sweep's ZeRO stages like the search: its row is
    the fastest fitting stage, each stage's time being evaluate_plan's with that stage
    (at 2.2 GiB only ZeRO-2 and -3 fit: the zero1 default alone has no fixed plan)."""
    import json

    from phaze.hw.presets import NETWORKS
    from phaze.place.driver import context, run_item
    from phaze.place.plan import with_axes
    from phaze.place.synthetic import gpt_chain
    from phaze.settings import PlacementSettings, SweepSettings

    pl = PlacementSettings(devices=64, global_batch=64, hbm_gib=(2.2,), recompute=("none",),
                           zero_stage=(0, 1, 2, 3))
    ctx = context(SweepSettings(placement=pl, network=NETWORKS["dgx-h100-superpod"]),
                  fixed=(2, 8, 1))
    ctx["hbm_bw"] = {"a": 2e12}
    syn = {"layers": 8, "hidden": 2048, "heads": 16, "vocab": 32000, "tps": [1],
           "peak_flops": 300e12}
    item = {"model": "m", "seq": 1024, "arch_id": "a", "mbs": 1, "hbm_bytes": 2.2 * 2**30,
            "recompute": "none", "synthetic": syn}
    row = run_item(0, item, ctx).set_index("row_kind").loc["fixed"]
    ch = gpt_chain(seq=1024, mbs=1, t=1, model="m", layers=8, hidden=2048, heads=16,
                   vocab=32000, peak_flops=300e12)
    times = {}
    for z in (0, 1, 2, 3):
        ev = evaluate_plan(ch, 2, 8, 64, "none", 1, hbm_bytes=2.2 * 2**30, links=ctx["links"],
                           options=with_axes(ctx["options"], 1, z), hbm_bw_Bps=2e12)
        if ev["feasible"]:
            times[z] = ev["time_per_batch_s"]
    assert row["feasible"] and sorted(times) == [2, 3]
    z = min(times, key=times.get)
    assert int(row["zero_stage"]) == z and row["time_per_batch_s"] == pytest.approx(times[z])
    assert json.loads(row["stages"]) == [[0, 5], [5, 10]]
