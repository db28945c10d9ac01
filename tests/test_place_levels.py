"""Placement on multi-level networks (Network.levels): the default DP against an exhaustive
search with an evaluator written here from the documented formulas (docs/place.md#levels),
and the hierarchical collectives of phaze.cost.collective."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from phaze.cost.collective import collective_time
from phaze.errors import UserError
from phaze.hw.arch import Network
from phaze.hw.presets import NETWORKS
from phaze.place.chain import Chain
from phaze.place.dp import best_plan
from phaze.place.plan import Links, PlanOptions


def rand_chain(rng):
    n = int(rng.integers(1, 8))
    fwd = rng.uniform(0.5, 3.0, n)
    return Chain(t=int(rng.choice([1, 2])), mbs=1, seq=128, fwd_s=fwd,
                 bwd_s=2 * fwd * rng.uniform(0.8, 1.2, n), tp_fwd_s=0.1 * fwd, tp_bwd_s=0.1 * fwd,
                 param_count=rng.integers(1, 100, n).astype(float) * 1e6,
                 act_none_bytes=rng.integers(1, 100, n).astype(float) * 1e6,
                 act_full_bytes=rng.integers(1, 10, n).astype(float) * 1e6,
                 act_selective_bytes=rng.integers(1, 60, n).astype(float) * 1e6,
                 recompute_selective_s=rng.uniform(0.0, 0.5, n) * fwd,
                 out_bytes=rng.integers(0, 50, n).astype(float) * 1e6,
                 flops_fwd=fwd * 1e12, flops_bwd=2 * fwd * 1e12, kinds=("block",) * n)


def rand_levels(rng):
    """2 or 3 levels, group sizes 2..4 then x2..x4, bandwidth falling outwards."""
    k = int(rng.integers(2, 4))
    sizes, g = [], 1
    for _ in range(k - 1):
        g *= int(rng.integers(2, 5))
        sizes.append(g)
    sizes.append(0)
    bws = sorted(rng.uniform(5e6, 500e6, k), reverse=True)
    lats = sorted(rng.uniform(1e-4, 5e-3, k))
    return tuple((s, float(b), float(a)) for s, b, a in zip(sizes, bws, lats))


# ------------------------------------------------------------- independent evaluator
def hier_allreduce(levels, nbytes, d, stride):
    """Reduce-scatter up the levels, all-gather down: members of the group inside one
    level-i group = min(d, group devices // stride)."""
    t, carried, inside_prev = 0.0, nbytes, 1
    for g, bw, lat in levels:
        inside = d if g == 0 else max(1, min(d, g // stride))
        inside = max(inside, inside_prev)
        k = inside // inside_prev
        if k > 1:
            t += 2 * (k - 1) / k * carried / bw + 2 * (k - 1) * lat
            carried /= k
        inside_prev = inside
    return t


def pair_level(levels, a, b):
    """Innermost level whose group (aligned blocks of its size) holds devices a and b."""
    return next(i for i, (g, _b, _a) in enumerate(levels) if g == 0 or a // g == b // g)


def hop_link(levels, stride, r):
    """The hop into pipeline rank r: device x of rank r - 1 sends to device x of rank r
    (ranks `stride` devices apart); the slowest pair sets the hop's level."""
    lv = max(pair_level(levels, (r - 1) * stride + x, r * stride + x) for x in range(stride))
    return levels[lv][1], levels[lv][2]


def my_eval(ch, stages, d, batch, rec, levels, opt):
    p, t, n = len(stages), ch.t, ch.n
    M = batch // (ch.mbs * d)
    bound = {}      # layer k -> (bw, lat) of the hop after it (the stage boundary there)
    for r, (i, _j) in enumerate(stages):
        if r:
            bound[i - 1] = hop_link(levels, t * d, r)
    p2p = lambda k: bound[k][1] + ch.out_bytes[k] / bound[k][0] if ch.out_bytes[k] > 0 else 0.0  # noqa: E731
    kept = {"none": ch.act_none_bytes, "selective": ch.act_selective_bytes,
            "full": ch.act_full_bytes}[rec]
    per_param = opt.weight_bytes + opt.grad_bytes + \
        (opt.adam_state_bytes if opt.optimizer == "adam" else 0.0) / (d if opt.zero1 else 1)
    loads, mems, ars = [], [], []
    for r, (i, j) in enumerate(stages):
        F, B = sum(ch.fwd_s[i:j]), sum(ch.bwd_s[i:j])
        full = sum(x for x, kind in zip(ch.fwd_s[i:j], ch.kinds[i:j])
                   if kind not in ("prologue", "epilogue"))   # blocks only are re-run
        redo = {"none": 0.0, "selective": sum(ch.recompute_selective_s[i:j]), "full": full}[rec]
        loads.append((p2p(i - 1) if i > 0 else 0.0) + F + redo + B + (p2p(j - 1) if j < n else 0.0))
        P = sum(ch.param_count[i:j])
        work = max(max(a - k, 0.0) for a, k in zip(ch.act_none_bytes[i:j], kept[i:j]))
        mems.append(P * per_param + min(p - r, M) * sum(kept[i:j]) + work)
        ars.append(hier_allreduce(levels, P * opt.grad_bytes, d, t) if d > 1 else 0.0)
    return (M + p - 1) * max(loads) + max(ars), max(mems)


def brute_force(ch, devices, batch, rec, hbm, levels, opt):
    best, n, nmb = math.inf, ch.n, batch // ch.mbs
    for d in range(1, nmb + 1):
        if nmb % d or ch.t * d > devices:
            continue
        for cuts in itertools.product((0, 1), repeat=n - 1):
            bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [n]
            stages = list(zip(bounds[:-1], bounds[1:]))
            if len(stages) * d * ch.t > devices:
                continue
            time, mem = my_eval(ch, stages, d, batch, rec, levels, opt)
            if mem <= hbm:
                best = min(best, time)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_dp_on_levels_equals_brute_force(seed):
    """Random chains on random 2-3 level networks, SGD / Adam / Adam + ZeRO-1."""
    rng = np.random.default_rng(900 + seed)
    feasible = 0
    for _ in range(25):
        ch = rand_chain(rng)
        levels = rand_levels(rng)
        links = Links.of(Network(levels=levels))
        rec = str(rng.choice(["none", "selective", "full"]))
        opt = PlanOptions(optimizer=str(rng.choice(["sgd", "adam"])),
                          zero1=bool(rng.random() < .5))
        devices = int(rng.integers(1, 33))
        batch = int(rng.choice([1, 2, 4, 8, 16]))
        hbm = float(rng.uniform(0.05, 1.0) * (ch.param_count.sum() * 16 + ch.act_none_bytes.sum() * 4))
        want = brute_force(ch, devices, batch, rec, hbm, levels, opt)
        got = best_plan(ch, devices, batch, rec, hbm_bytes=hbm, links=links, options=opt)
        if math.isinf(want):
            assert got is None
            continue
        feasible += 1
        assert got["time_per_batch_s"] == pytest.approx(want, rel=1e-9)
        t2, m2 = my_eval(ch, [tuple(s) for s in got["stages"]], got["d"], batch, rec, levels, opt)
        assert t2 == pytest.approx(got["time_per_batch_s"], rel=1e-9)
    assert feasible >= 5


def test_two_level_network_unchanged():
    """A Network without levels behaves as before; with levels [node, cluster] equal to the
    two-level fields, every collective costs the same on the levelled path's ring."""
    two = Network()
    assert two.level_list()[0] == (8, 300e9, 2e-6) and two.link(16) == (25e9, 5e-6, "inter")
    lv = Network(levels=((8, 300e9, 2e-6), (0, 25e9, 5e-6)))
    assert (lv.devices_per_node, lv.inter_bw_Bps) == (8, 25e9)
    # inside a node both are one ring
    a = collective_time("all_reduce", 1e9, 8, 1, two, algo="ring")
    b = collective_time("all_reduce", 1e9, 8, 1, lv)
    assert a == pytest.approx(b)


def test_hierarchical_allreduce_closed_form():
    net = NETWORKS["dgx-h100-superpod"]
    S = 1e9
    # 512 GPUs: 8 per node, 32 nodes per unit, 2 units
    want = (2 * 7 / 8 * S / 450e9 + 14 * 3e-6 + 2 * 31 / 32 * S / 8 / 50e9 + 62 * 6e-6
            + 2 * 1 / 2 * S / 256 / 50e9 + 2 * 9e-6)
    assert collective_time("all_reduce", S, 512, 1, net) == pytest.approx(want)
    # all-to-all on 16 GPUs (2 nodes): half the buffer crosses the leaf level
    a2a = collective_time("all_to_all", S, 16, 1, net)
    assert a2a == pytest.approx(7 / 16 * S / 450e9 + 7 * 3e-6 + 8 / 16 * S / 50e9 + 6e-6)


def test_presets_and_bad_levels():
    for name in ("dgx-h100-superpod", "tpuv4-pod", "spine-leaf"):
        net = NETWORKS[name]
        assert len(net.levels) == 3 and Network.from_dict(net.to_dict()) == net
    from phaze.settings import parse_network
    assert parse_network("spine-leaf").levels[1][0] == 128
    for bad in ([[8, 1e9, 0]], [[8, 1e9, 0], [12, 1e9, 0], [0, 1e9, 0]],
                [[0, 1e9, 0], [8, 1e9, 0]], [[8, -1, 0], [0, 1e9, 0]]):
        with pytest.raises(UserError):
            Network(levels=bad)
