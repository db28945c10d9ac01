"""Default-mode DP and plan evaluation against an evaluator and exhaustive search written
here independently from the formulas of docs/place.md."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from phaze.place.chain import Chain
from phaze.place.dp import best_plan
from phaze.place.plan import Links, PlanOptions, evaluate_plan, uniform_stages


def rand_chain(rng, n=None, t=None, mbs=None):
    n = n or int(rng.integers(1, 9))
    kinds = ["block"] * n
    if n >= 3 and rng.random() < 0.5:
        kinds[0], kinds[-1] = "prologue", "epilogue"
    fwd = rng.uniform(0.5, 3.0, n)
    return Chain(t=t or int(rng.choice([1, 2])), mbs=mbs or int(rng.choice([1, 2])), seq=128,
                 fwd_s=fwd, bwd_s=2 * fwd * rng.uniform(0.8, 1.2, n),
                 tp_fwd_s=0.1 * fwd, tp_bwd_s=0.1 * fwd,
                 param_count=rng.integers(1, 100, n).astype(float) * 1e6,
                 act_none_bytes=rng.integers(1, 100, n).astype(float) * 1e6,
                 act_full_bytes=rng.integers(1, 10, n).astype(float) * 1e6,
                 act_selective_bytes=rng.integers(1, 60, n).astype(float) * 1e6,
                 recompute_selective_s=rng.uniform(0.0, 0.5, n) * fwd,
                 out_bytes=rng.integers(0, 50, n).astype(float) * 1e6,
                 flops_fwd=fwd * 1e12, flops_bwd=2 * fwd * 1e12, kinds=tuple(kinds),
                 # a tied head: part of the last layer's params is the first layer's copy
                 shared_param_count=float(rng.choice([0.0, 1e6])) if n >= 2 else 0.0)


def rand_links(rng):
    return Links(devices_per_node=int(rng.choice([2, 4, 8])), intra_bw_Bps=float(rng.choice([50e6, 400e6])),
                 intra_latency_s=1e-3, inter_bw_Bps=float(rng.choice([10e6, 40e6])),
                 inter_latency_s=5e-3)


# --------------------------------------------------------- independent evaluator
def my_eval(ch, stages, p, d, batch, rec, v, links, opt):
    """Time and peak memory of a plan, straight from the documented formulas."""
    t, mbs, n = ch.t, ch.mbs, ch.n
    M = batch // (mbs * d)
    inter_pp = t * d * p > links.devices_per_node
    bw, lat = (links.inter_bw_Bps, links.inter_latency_s) if inter_pp else \
        (links.intra_bw_Bps, links.intra_latency_s)
    inter_dp = t * d > links.devices_per_node
    dbw, dlat = (links.inter_bw_Bps, links.inter_latency_s) if inter_dp else \
        (links.intra_bw_Bps, links.intra_latency_s)

    def p2p(k):  # boundary after layer k
        b = ch.out_bytes[k]
        return lat + b / bw if b > 0 else 0.0

    loads = [0.0] * p
    params = [0.0] * p
    acts = [0.0] * p
    work = [0.0] * p
    for c, (i, j) in enumerate(stages):
        r = c % p
        F = sum(ch.fwd_s[i:j])
        B = sum(ch.bwd_s[i:j])
        cin = p2p(i - 1) if i > 0 else 0.0
        cout = p2p(j - 1) if j < n else 0.0
        kept = {"none": ch.act_none_bytes, "selective": ch.act_selective_bytes,
                "full": ch.act_full_bytes}[rec]
        # full recomputation re-runs the transformer blocks, never the prologue / epilogue
        full = sum(x for x, kind in zip(ch.fwd_s[i:j], ch.kinds[i:j])
                   if kind not in ("prologue", "epilogue"))
        redo = {"none": 0.0, "selective": sum(ch.recompute_selective_s[i:j]), "full": full}[rec]
        loads[r] += cin + F + redo + B + cout
        params[r] += sum(ch.param_count[i:j])
        acts[r] += sum(kept[i:j])
        # recomputation rematerialises one layer at a time: what it did not keep
        work[r] = max(work[r], max(max(a - k, 0.0) for a, k in zip(ch.act_none_bytes[i:j],
                                                                     kept[i:j])))
    if p == 1:      # embedding and tied head on one device: one copy
        params[0] -= ch.shared_param_count
    per_param = opt.weight_bytes + opt.grad_bytes + \
        (opt.adam_state_bytes if opt.optimizer == "adam" else 0.0) / (d if opt.zero1 else 1)
    mem = []
    for r in range(p):
        if v == 1:
            inflight = min(p - r, M)
        else:
            inflight = min(2 * (p - r - 1) + (v - 1) * p + 1, M * v) / v
        mem.append(params[r] * per_param + inflight * acts[r] + work[r])
    ar = [0.0 if d == 1 else 2 * (d - 1) / d * P * opt.grad_bytes / dbw + 2 * (d - 1) * dlat
          for P in params]
    time = (M + (p - 1) / v) * max(loads) + max(ar)
    return time, max(mem)


def brute_force(ch, devices, batch, rec, hbm, links, opt):
    best = math.inf
    n = ch.n
    nmb = batch // ch.mbs
    for d in range(1, nmb + 1):
        if nmb % d or ch.t * d > devices:
            continue
        for cuts in itertools.product((0, 1), repeat=n - 1):
            bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [n]
            stages = list(zip(bounds[:-1], bounds[1:]))
            p = len(stages)
            if p * d * ch.t > devices:
                continue
            time, mem = my_eval(ch, stages, p, d, batch, rec, 1, links, opt)
            if mem <= hbm:
                best = min(best, time)
    return best


def assert_memory_parts(plan):
    """The busiest device's parts sum to memory_per_device_bytes; each rank's parts sum to
    its memory, the largest of which is that peak."""
    names = ("weights", "grads", "optimizer", "activations", "buffers")
    split = sum(plan[f"memory_{k}_bytes"] for k in names)
    assert split == pytest.approx(plan["memory_per_device_bytes"], rel=1e-12)
    per_rank = [sum(r[k] for k in names) for r in plan["stage_memory"]]
    assert len(per_rank) == plan["p"]
    assert max(per_rank) == pytest.approx(plan["memory_per_device_bytes"], rel=1e-12)
    assert min(min(r.values()) for r in plan["stage_memory"]) >= 0


@pytest.mark.parametrize("batch_no", range(10))
def test_default_dp_equals_brute_force(batch_no):
    """>= 300 random chains (<= 8 layers, <= 16 devices), random memory, recompute on/off,
    SGD / Adam / ZeRO-1, intra/inter-node links."""
    rng = np.random.default_rng(500 + batch_no)
    feasible = 0
    for _ in range(32):
        ch = rand_chain(rng)
        rec = str(rng.choice(["none", "selective", "full"]))
        opt = PlanOptions(optimizer=str(rng.choice(["sgd", "adam"])), zero1=bool(rng.random() < .5))
        links = rand_links(rng)
        devices = int(rng.integers(1, 17))
        batch = ch.mbs * int(rng.choice([1, 2, 4, 6, 8, 12, 16]))
        total = ch.param_count.sum() * 16 + ch.act_none_bytes.sum() * 4
        hbm = float(rng.uniform(0.05, 1.0) * total)
        want = brute_force(ch, devices, batch, rec, hbm, links, opt)
        got = best_plan(ch, devices, batch, rec, hbm_bytes=hbm, links=links, options=opt)
        if math.isinf(want):
            assert got is None
            continue
        feasible += 1
        assert got["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
        # the reported plan is consistent with the independent evaluator
        t2, m2 = my_eval(ch, [tuple(s) for s in got["stages"]], got["p"], got["d"], batch, rec, 1,
                         links, opt)
        assert t2 == pytest.approx(got["time_per_batch_s"], rel=1e-9)
        assert m2 == pytest.approx(got["memory_per_device_bytes"], rel=1e-9) and m2 <= hbm
        assert_memory_parts(got)
    assert feasible >= 8


def test_evaluate_plan_matches_independent_evaluator_interleaved():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(200):
        ch = rand_chain(rng, n=int(rng.integers(2, 9)))
        links = rand_links(rng)
        opt = PlanOptions(optimizer=str(rng.choice(["sgd", "adam"])), zero1=bool(rng.random() < .5))
        rec = str(rng.choice(["none", "selective", "full"]))
        v = int(rng.choice([1, 2, 3]))
        p = int(rng.integers(1, 5))
        if p * v > ch.n:
            continue
        cuts = sorted(rng.choice(np.arange(1, ch.n), size=p * v - 1, replace=False).tolist())
        stages = list(zip([0] + cuts, cuts + [ch.n]))
        d = int(rng.choice([1, 2, 4]))
        batch = ch.mbs * d * p * int(rng.integers(1, 4))
        got = evaluate_plan(ch, p, d, batch, rec, v, links=links, options=opt, stages=stages)
        t2, m2 = my_eval(ch, stages, p, d, batch, rec, v, links, opt)
        assert got["time_per_batch_s"] == pytest.approx(t2, rel=1e-12)
        assert got["memory_per_device_bytes"] == pytest.approx(m2, rel=1e-12)
        assert_memory_parts(got)
        parts = sum(got[k] for k in ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s"))
        assert parts == pytest.approx(got["time_per_batch_s"], rel=1e-12)
        checked += 1
    assert checked >= 100


def test_interleaving_shrinks_bubble_closed_form():
    # 8 identical blocks, no communication: 1F1B bubble (p-1) L, interleaved (p-1)/v L'
    n = 8
    ch = Chain(t=1, mbs=1, seq=16, fwd_s=np.ones(n), bwd_s=2 * np.ones(n), param_count=np.ones(n),
               act_none_bytes=np.ones(n), act_full_bytes=np.ones(n), out_bytes=np.zeros(n),
               kinds=("block",) * n)
    p, M = 4, 8
    a = evaluate_plan(ch, p, 1, M, "none", 1)
    b = evaluate_plan(ch, p, 1, M, "none", 2)
    # each device: 2 layers x 3 s = 6 s per microbatch
    assert a["time_per_batch_s"] == pytest.approx((M + p - 1) * 6)
    assert b["time_per_batch_s"] == pytest.approx((M + (p - 1) / 2) * 6)
    assert uniform_stages(ch, 8) == [(k, k + 1) for k in range(8)]
    # Megatron/Korthikanti: first device of interleaved holds p (1 + (p-1)/(p v)) microbatches
    # params: 2 per device x 16 B (Adam default); activations 2 B per microbatch
    assert b["memory_per_device_bytes"] == pytest.approx(2 * 16 + 2 * 4 * (1 + 3 / 8))


def test_allreduce_is_max_over_stages_not_first():
    ch = Chain(t=1, mbs=1, seq=16, fwd_s=np.ones(2), bwd_s=np.ones(2),
               param_count=np.array([1e6, 9e6]), act_none_bytes=np.zeros(2),
               act_full_bytes=np.zeros(2), out_bytes=np.zeros(2), kinds=("block", "block"))
    links = Links(devices_per_node=1, inter_bw_Bps=1e9, inter_latency_s=0.0)
    r = evaluate_plan(ch, 2, 4, 8, "none", 1, links=links, options=PlanOptions(grad_bytes=2))
    assert r["dp_sync_s"] == pytest.approx(2 * 3 / 4 * 9e6 * 2 / 1e9)


# ----------------------------------------------- batched scenarios, block chains, edge cases
def block_chain(rng, blocks):
    """prologue + identical blocks + epilogue (the realistic shape the fast DP exploits)."""
    n = blocks + 2
    f = float(rng.uniform(0.5, 2.0))
    fwd = np.array([0.1 * f] + [f] * blocks + [float(rng.uniform(0.5, 4.0)) * f])
    P = np.array([float(rng.integers(20, 80))] + [float(rng.integers(5, 30))] * blocks +
                 [float(rng.integers(20, 80))]) * 1e6
    act = np.array([1.0] + [float(rng.integers(5, 40))] * blocks + [float(rng.integers(5, 40))]) * 1e6
    out = np.array([4.0] * (n - 1) + [0.0]) * 1e6
    return Chain(t=int(rng.choice([1, 2])), mbs=int(rng.choice([1, 2])), seq=64, fwd_s=fwd,
                 bwd_s=2 * fwd, tp_fwd_s=0.05 * fwd, tp_bwd_s=0.05 * fwd, param_count=P,
                 act_none_bytes=act, act_full_bytes=np.full(n, 2e6), out_bytes=out,
                 flops_fwd=fwd * 1e12, flops_bwd=2 * fwd * 1e12,
                 kinds=("prologue",) + ("block",) * blocks + ("epilogue",))


@pytest.mark.parametrize("seed", range(4))
def test_best_plans_batch_equals_brute_force_per_scenario(seed):
    """One best_plans call over 3 HBM sizes x 2 recompute flags agrees with brute force (and
    with one best_plan call) for every scenario, on block-structured chains up to 10 layers."""
    from phaze.place.dp import best_plans

    rng = np.random.default_rng(900 + seed)
    checked = 0
    for _ in range(4):
        ch = block_chain(rng, int(rng.integers(2, 9)))
        links = rand_links(rng)
        opt = PlanOptions(optimizer=str(rng.choice(["sgd", "adam"])), zero1=bool(rng.random() < .3))
        devices = int(rng.integers(2, 33))
        batch = ch.mbs * int(rng.choice([1, 2, 4, 8, 16]))
        total = ch.param_count.sum() * 16 + ch.act_none_bytes.sum() * 4
        hbms = sorted(float(x) for x in rng.uniform(0.05, 0.8, 3) * total)
        got = best_plans(ch, devices, batch, hbms, ["none", "selective", "full"], links=links, options=opt)
        assert set(got) == {(h, r) for h in hbms for r in ("none", "selective", "full")}
        for (hbm, rec), plan in got.items():
            want = brute_force(ch, devices, batch, rec, hbm, links, opt)
            one = best_plan(ch, devices, batch, rec, hbm_bytes=hbm, links=links, options=opt)
            if math.isinf(want):
                assert plan is None and one is None
                continue
            checked += 1
            assert plan["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
            assert one["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
            t2, m2 = my_eval(ch, [tuple(s) for s in plan["stages"]], plan["p"], plan["d"], batch,
                             rec, 1, links, opt)
            assert t2 == pytest.approx(plan["time_per_batch_s"], rel=1e-9) and m2 <= hbm
    assert checked >= 10


def test_single_data_parallel_replica_with_infeasible_small_p():
    """nmb = 1 forces d = 1 (no all-reduce); p = 1 does not fit, p = 2 does: the DP must not
    lose the p = 2 plan to the infeasible p = 1 entry (guards 0 x inf in the objective)."""
    n = 4
    ch = Chain(t=1, mbs=1, seq=16, fwd_s=np.ones(n), bwd_s=2 * np.ones(n),
               param_count=np.full(n, 1e6), act_none_bytes=np.full(n, 1e6),
               act_full_bytes=np.full(n, 1e6), out_bytes=np.zeros(n), kinds=("block",) * n)
    opt = PlanOptions(optimizer="sgd")          # 4 B/param: 4 MB per layer + 1 MB activations
    hbm = 12e6                                   # 2 layers fit (10 MB), 4 do not (20 MB)
    got = best_plan(ch, 4, 1, "none", hbm_bytes=hbm, options=opt)
    want = brute_force(ch, 4, 1, "none", hbm, Links(), opt)
    assert got is not None and got["d"] == 1 and got["p"] >= 2
    assert got["time_per_batch_s"] == pytest.approx(want, rel=1e-12)


def test_fewest_stages_greedy_equals_brute_force():
    """The fewest-stages greedy (used to skip stage counts memory rules out), run for several
    scenarios and in-flight caps M at once, equals the least stage count of any
    memory-feasible partition, by brute force."""
    from phaze.place.dp import _fewest_stages, _Ranges

    rng = np.random.default_rng(77)
    Ms = [1, 2, 3, 5, 64]
    for _ in range(30):
        ch = rand_chain(rng, n=int(rng.integers(2, 8)))
        opt = PlanOptions(optimizer="adam")
        total = ch.param_count.sum() * 16 + ch.act_none_bytes.sum() * 4
        scen = [(str(rng.choice(["none", "selective", "full"])), float(rng.uniform(0.05, 0.6) * total))
                for _ in range(3)]
        smaxes = [_Ranges(ch, rec).smax(opt.static_bytes_per_param(1), hbm) for rec, hbm in scen]
        lo = _fewest_stages(smaxes, Ms, ch.n)
        assert lo.shape == (len(scen), len(Ms))
        for g, (rec, hbm) in enumerate(scen):
            for k, M in enumerate(Ms):
                # least p with a partition whose every stage fits at in-flight min(s, M)
                want = math.inf
                for cuts in itertools.product((0, 1), repeat=ch.n - 1):
                    bounds = [0] + [q + 1 for q, c in enumerate(cuts) if c] + [ch.n]
                    st = list(zip(bounds[:-1], bounds[1:]))
                    p = len(st)
                    fits = True
                    for pos, (i, j) in enumerate(st):
                        s = p - pos
                        mem = ch.param_count[i:j].sum() * 16 + \
                            min(s, M) * ch.act_bytes(rec)[i:j].sum() + \
                            max(max(a - k, 0.0) for a, k in zip(ch.act_none_bytes[i:j],
                                                                ch.act_bytes(rec)[i:j]))
                        fits &= mem <= hbm
                    if fits:
                        want = min(want, p)
                # the greedy's own partition is feasible, and no feasible one has fewer stages
                assert lo[g, k] == want


def test_interleave_depths_without_1_give_only_interleaved_plans():
    """placement.interleave lists the depths to try: without 1 no plain-1F1B plan is
    answered (p = 1 has no chunks, so none of those either); with 1 and 2 the answer is
    the faster of the two lists' answers."""
    from phaze.place.dp import best_plans
    from phaze.place.synthetic import gpt_chain

    ch = gpt_chain(seq=1024, mbs=1, t=1, model="m", layers=8, hidden=2048, heads=16,
                   vocab=32000, peak_flops=300e12)
    kw = dict(links=Links(), options=PlanOptions(), peak_flops=300e12)
    hbms = [4 * 2**30, 40 * 2**30]
    only2 = best_plans(ch, 16, 64, hbms, ["none"], interleaves=(2,), **kw)
    only1 = best_plans(ch, 16, 64, hbms, ["none"], interleaves=(1,), **kw)
    both = best_plans(ch, 16, 64, hbms, ["none"], interleaves=(1, 2), **kw)
    assert any(pl is not None for pl in only2.values())
    for key, pl in only2.items():
        assert pl is None or (pl["interleave"] == 2 and pl["p"] >= 2)
        cands = [x for x in (pl, only1[key]) if x is not None]
        if cands:
            assert both[key]["time_per_batch_s"] == pytest.approx(
                min(x["time_per_batch_s"] for x in cands), rel=1e-12)
