"""Plan-level terms of issue 16 (PlanOptions extensions) against closed forms."""

import numpy as np
import pytest

from phaze.cost.collective import allreduce_time, reduce_scatter_time, all_gather_time
from phaze.place.chain import Chain
from phaze.place.plan import Links, PlanOptions, evaluate_plan, megatron_stages


def chain(n=10, f=1.0, b=2.0, P=1e8, t=1):
    kinds = ("prologue",) + ("block",) * (n - 2) + ("epilogue",)
    z = np.zeros(n)
    return Chain(t=t, mbs=1, seq=2048, fwd_s=np.full(n, f), bwd_s=np.full(n, b),
                 param_count=np.full(n, P), act_none_bytes=z + 1e6, act_full_bytes=z + 1e5,
                 out_bytes=z + 1e6, kinds=kinds)


def test_defaults_unchanged_by_the_new_fields():
    c = chain()
    a = evaluate_plan(c, 2, 4, 64, links=Links())
    o = PlanOptions()
    assert not o.extended()
    b = evaluate_plan(c, 2, 4, 64, links=Links(), options=o)
    assert a["time_per_batch_s"] == b["time_per_batch_s"]


def test_dp_reduction_nccl_exposed_and_overlapped():
    c = chain()
    L = Links(bw_efficiency=0.8)
    d = 16
    base = evaluate_plan(c, 1, d, 64, links=L, options=PlanOptions(collectives="nccl", grad_bytes=4.0))
    P = c.param_count.sum()
    want = allreduce_time(P * 4.0, d, 1, L, src_dtype_bytes=1.0, bw_efficiency=0.8)
    assert base["dp_sync_s"] == pytest.approx(want)
    ov = evaluate_plan(c, 1, d, 64, links=L, options=PlanOptions(
        collectives="nccl", grad_bytes=4.0, overlap_grad_reduce=True))
    bwd = c.bwd_s.sum()
    assert ov["dp_sync_s"] == pytest.approx(max(want * 40e6 / P, want - bwd))


def test_distributed_optimizer_is_rs_plus_ag_and_shards_state():
    c = chain()
    L = Links(bw_efficiency=1.0)
    d = 8
    o = PlanOptions(collectives="nccl", distributed_optimizer=True, grad_bytes=4.0)
    r = evaluate_plan(c, 1, d, 64, links=L, options=o)
    P = c.param_count.sum()
    want = (reduce_scatter_time(P * 4, d, 1, L, src_dtype_bytes=1.0, bw_efficiency=1.0)
            + all_gather_time(P * 2, d, 1, L, src_dtype_bytes=1.0, bw_efficiency=1.0))
    assert r["dp_sync_s"] == pytest.approx(want)
    assert o.static_bytes_per_param(d) == pytest.approx(2 + 4 + 12 / d)
    assert PlanOptions(collectives="nccl", zero_stage=3).static_bytes_per_param(d) == \
        pytest.approx((2 + 2 + 12) / d)


def test_tp_overlap_leaves_one_chunk_and_p2p_overlap_hides_p2p():
    c = chain(t=4)
    c = Chain(**{**c.__dict__, "tp_fwd_s": np.full(c.n, 0.4), "tp_bwd_s": np.full(c.n, 0.4)})
    a = evaluate_plan(c, 2, 1, 8, interleave=2, links=Links(), options=PlanOptions(collectives="nccl"))
    b = evaluate_plan(c, 2, 1, 8, interleave=2, links=Links(),
                      options=PlanOptions(collectives="nccl", tp_comm_overlap=True, overlap_p2p=True))
    assert b["tp_s"] == pytest.approx(a["tp_s"] / 4)
    # overlapped: only the fill and drain wait for the hops (one microbatch's 2 (p v - 1))
    assert 0 < b["p2p_s"] < a["p2p_s"]
    # 4 chunks, 3 hops: each rank sends or receives 3 per microbatch, the fill crosses 2 x 3
    assert b["p2p_s"] == pytest.approx(2 * a["p2p_s"] / a["M"])


def test_blocking_p2p_sends_both_directions_one_after_the_other():
    """DeepSpeed's pipeline engine (p2p_blocking): a middle stage receives the activation,
    sends the gradient, sends the activation, receives the gradient, one blocking call after
    another: 4 transfers per microbatch where Megatron's paired sends cost 2. Closed form on
    3 stages of equal layers (4, 3, 4 with the prologue and epilogue): the end stages are
    the busiest, their one transfer x per microbatch becomes 2, the time grows by
    (M + p - 1) x; nothing else moves."""
    from phaze.place.plan import p2p_time

    c = chain(n=11)
    L = Links(devices_per_node=1, inter_bw_Bps=1e9, inter_latency_s=1e-5)
    a = evaluate_plan(c, 3, 1, 8, links=L)
    b = evaluate_plan(c, 3, 1, 8, links=L, options=PlanOptions(p2p_blocking=True))
    x = float(p2p_time(1e6, *L.link(True)))
    assert b["p2p_s"] == pytest.approx(2 * a["p2p_s"]) and a["p2p_s"] == pytest.approx(8 * x)
    assert b["time_per_batch_s"] - a["time_per_batch_s"] == pytest.approx((8 + 2) * x)
    assert b["compute_s"] == a["compute_s"]
    from phaze.place.evaluate import FRAMEWORKS

    from phaze.place.dp import best_plans

    for flag in ("p2p_blocking", "p2p_scatter_gather"):   # the DP costs neither: refused
        with pytest.raises(ValueError, match=flag):
            best_plans(c, 3, 8, [1e12], links=L, options=PlanOptions(**{flag: True}))
    assert FRAMEWORKS["megatron-deepspeed"]["plan"]["p2p_blocking"]
    assert not FRAMEWORKS["megatron-deepspeed"]["plan"]["p2p_scatter_gather"]


def _deepspeed_train_schedule(stage: int, stages: int, m: int) -> list:
    """DeepSpeed's TrainSchedule.steps (deepspeed/runtime/pipe/schedule.py at 559c4ce1, the
    version Megatron-DeepSpeed ran in 2021-22) as (command, microbatch) pairs: 2 (m + p - 1)
    steps, even stages forward on even steps and backward on odd ones (odd stages the
    other way round), the receive and send commands before each step's pass."""
    def mb_of(step):
        if step % 2 == stage % 2 == 0:
            return step // 2 - stage // 2, True
        if step % 2 == stage % 2 == 1:
            return (step - 1) // 2 - stage // 2, True
        if step % 2 == 0:
            return step // 2 - stages + (stage + 1) // 2, False
        return (step - 1) // 2 - stages + 1 + stage // 2, False
    out, prev = [], -1
    for step in range(2 * (m + stages - 1)):
        mb, fwd = mb_of(step)
        ok, ok_prev = 0 <= mb < m, 0 <= prev < m
        if fwd and stage > 0:
            out += [("RecvActivation", mb)] * ok + [("SendGrad", prev)] * ok_prev
        if not fwd and stage < stages - 1:
            out += [("SendActivation", prev)] * ok_prev + [("RecvGrad", mb)] * ok
        if ok:
            out.append(("ForwardPass" if fwd else "BackwardPass", mb))
        prev = mb
    return out


def _simulate_blocking_pipeline(p: int, m: int, f: float, b: float, c: float) -> float:
    """Makespan of DeepSpeed's schedule on p stages (pass times f, b) whose sends and
    receives are blocking and paired (each pair starts when both stages reach it and takes
    c seconds)."""
    pair = {"RecvActivation": (-1, "SendActivation"), "SendActivation": (1, "RecvActivation"),
            "SendGrad": (-1, "RecvGrad"), "RecvGrad": (1, "SendGrad")}
    q = [_deepspeed_train_schedule(s, p, m) for s in range(p)]
    pos, clock = [0] * p, [0.0] * p
    while any(pos[s] < len(q[s]) for s in range(p)):
        moved = False
        for s in range(p):
            while pos[s] < len(q[s]):
                cmd, mb = q[s][pos[s]]
                if cmd in ("ForwardPass", "BackwardPass"):
                    clock[s] += f if cmd == "ForwardPass" else b
                    pos[s] += 1
                    moved = True
                    continue
                d, want = pair[cmd]
                o = s + d
                if pos[o] >= len(q[o]) or q[o][pos[o]] != (want, mb):
                    break
                clock[s] = clock[o] = max(clock[s], clock[o]) + c
                pos[s] += 1
                pos[o] += 1
                moved = True
        assert moved, "the schedule deadlocked"
    return max(clock)


@pytest.mark.parametrize("p, m", [(4, 8), (5, 20), (8, 16)])
def test_blocking_p2p_matches_a_simulation_of_deepspeeds_schedule(p, m):
    """Second route for p2p_blocking: DeepSpeed's own TrainSchedule, simulated step by step
    with paired blocking transfers, against evaluate_plan's closed form (M + p - 1)
    (f + b + 4 c) on stages of equal layers. Without transfers the schedule is exactly
    1F1B's; with them the closed form charges the warm-up and cool-down as the steady
    state (each bubble slot with a middle stage's four transfers) and stays within 1 %."""
    c = chain(n=3 * p, f=1.0, b=2.0)
    c = Chain(**{**c.__dict__, "kinds": ("block",) * c.n})
    L = Links(devices_per_node=1, inter_bw_Bps=1e9, inter_latency_s=1e-5)
    r = evaluate_plan(c, p, 1, m, links=L, options=PlanOptions(p2p_blocking=True))
    x = r["p2p_s"] / (4 * m)                     # one transfer of a middle stage
    assert _simulate_blocking_pipeline(p, m, 3.0, 6.0, 0.0) == pytest.approx((m + p - 1) * 9.0)
    sim = _simulate_blocking_pipeline(p, m, 3.0, 6.0, x)
    assert r["time_per_batch_s"] == pytest.approx(sim, rel=0.01)
    assert r["time_per_batch_s"] >= sim


def test_embedding_and_loss_accounted_in_the_pipeline_split():
    """Megatron-Core --account-for-embedding-in-pipeline-split / --account-for-loss-in-
    pipeline-split: 126 blocks + the embedding + the loss = 128 layers over 64 chunks, 2
    each, the first and last chunk one block each beside the prologue / epilogue; without
    the accounting 126 does not split into 64; one-sided and mixed uses."""
    c = chain(n=128)                          # prologue, 126 blocks, epilogue
    st = megatron_stages(c, 8, 8, account_embedding=True, account_loss=True)
    assert len(st) == 64 and st[0] == (0, 2) and st[-1] == (126, 128)
    assert all(b - a == 2 for a, b in st)
    with pytest.raises(ValueError, match="do not split evenly"):
        megatron_stages(c, 8, 8)
    one = megatron_stages(chain(n=10), 3, 1, account_embedding=True)   # 8 blocks + 1 = 9
    assert one == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="accounting both"):
        megatron_stages(c, 8, 8, first=1, account_loss=True)


def test_uneven_first_and_last_stages():
    c = chain(n=12)        # 10 blocks
    st = megatron_stages(c, 4, 1, first=1, last=3)
    sizes = [b - a for a, b in st]
    assert st[0][0] == 0 and st[-1][1] == 12
    assert sizes == [2, 3, 3, 4]           # prologue + 1, 3, 3, 3 + epilogue
    assert megatron_stages(c, 2) == [(0, 6), (6, 12)]
    with pytest.raises(ValueError):
        megatron_stages(c, 4, 1, first=2)  # 8 blocks left over 3 chunks
    r = evaluate_plan(c, 4, 1, 8, stages=st, links=Links())
    assert r["stages"][0] == [0, 2]


def _queue_end(comm, unit, v, p, frac):
    """Independent route: simulate the chunk reductions (chunk v-1 first) on one network
    queue, bucket by bucket, against the cooldown's backward units (blocks of p per chunk);
    returns the time the last bucket ends after the last backward."""
    n_b = max(1, round(1 / frac))
    t_net = 0.0
    # backward units end at times 1..v p (in units of `unit`); chunk j's last unit is
    # number (v - 1 - j) p + 1 counted from the first unit of the final cycle
    for k, j in enumerate(range(v - 1, -1, -1)):
        last_start = (k * p) * unit          # its last backward starts here
        for b in range(n_b):                 # bucket b ready after (b + 1) / n_b of it
            ready = last_start + (b + 1) / n_b * unit
            t_net = max(t_net, ready) + comm / v / n_b
    end = ((v - 1) * p + 1) * unit
    return max(0.0, t_net - end)


@pytest.mark.parametrize("comm,v,p", [(5.0, 1, 4), (5.0, 2, 2), (5.0, 4, 2), (30.0, 3, 4),
                                      (0.5, 4, 4), (12.0, 6, 8)])
def test_interleaved_overlap_window_matches_a_queue_simulation(comm, v, p):
    from phaze.place.plan import overlap_exposed
    unit, n_b = 1.0, 2000
    got = overlap_exposed(comm, unit, v, p, 1 / n_b)
    # the floor: one bucket of the device's whole reduction stays exposed
    want = max(_queue_end(comm, unit, v, p, 1 / n_b), comm / n_b)
    assert got == pytest.approx(want, abs=comm / v / n_b + 1e-9)


def test_interleaved_reduction_hides_behind_later_chunks():
    c = chain(n=18, f=0.0002, b=0.0005, P=2e8)
    L = Links(bw_efficiency=0.8)
    o = PlanOptions(collectives="nccl", grad_bytes=4.0, overlap_grad_reduce=True,
                    overlap_param_gather=True, distributed_optimizer=True)
    flat = evaluate_plan(c, 2, 8, 64, links=L, options=o)
    inter = evaluate_plan(c, 2, 8, 64, interleave=2, links=L, options=o)
    assert 0 < inter["dp_sync_s"] < flat["dp_sync_s"]


@pytest.mark.parametrize("extended", [False, True])
def test_unfused_grad_accumulation_is_one_pass_per_microbatch_after_the_first(extended):
    # eager AccumulateGrad (fp16 `grad += new`: 6 B/param) on every microbatch but the
    # first; the pass lengthens each microbatch's load, so the bubble grows with it
    c, bw, p, d, mbs_batch = chain(), 1.5e12, 2, 4, 64
    base = PlanOptions(collectives="nccl" if extended else "flat")
    plain = evaluate_plan(c, p, d, mbs_batch, links=Links(), options=base, hbm_bw_Bps=bw)
    acc = evaluate_plan(c, p, d, mbs_batch, links=Links(), hbm_bw_Bps=bw, options=PlanOptions(
        collectives=base.collectives, grad_accum_bytes_per_param=6.0))
    M = mbs_batch // d
    per_mb = c.param_count[:5].sum() * 6.0 / bw * (M - 1) / M    # rank 0: chunks 0..4
    assert acc["grad_accum_s"] == pytest.approx(M * per_mb)
    assert acc["time_per_batch_s"] - plain["time_per_batch_s"] == \
        pytest.approx((M + p - 1) * per_mb)
    assert plain["grad_accum_s"] == 0.0
    one = evaluate_plan(c, p, d, d, links=Links(), hbm_bw_Bps=bw,    # M = 1: nothing to add
                        options=PlanOptions(grad_accum_bytes_per_param=6.0))
    assert one["grad_accum_s"] == 0.0


def test_grad_accumulation_on_every_microbatch_counts_the_first_too():
    # DeepSpeed's bf16 path copies each microbatch's grads into fp32: M passes, not M - 1
    c, bw, d = chain(), 1.5e12, 4
    for batch in (d, 64):
        M = batch // d
        r = evaluate_plan(c, 2, d, batch, links=Links(), hbm_bw_Bps=bw, options=PlanOptions(
            grad_accum_bytes_per_param=18.0, grad_accum_every_microbatch=True))
        assert r["grad_accum_s"] == pytest.approx(M * c.param_count[:5].sum() * 18.0 / bw)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_block_recompute_method_closed_form(n):
    """Megatron --recompute-method block --recompute-num-layers n: in each pipeline chunk the
    first n blocks keep their input (1e5 B) and are re-run (1 s each), the others keep all
    (1e6 B) and are not. One stage of 8 blocks (+ prologue and epilogue, which keep
    1e5 each here and are never re-run: Megatron checkpoints transformer layers only),
    one microbatch in flight, mbs 1."""
    c = chain(n=10)
    opts = PlanOptions(recompute_method="block", recompute_num_layers=n)
    full = evaluate_plan(c, 1, 1, 1, "full", links=Links())
    pl = evaluate_plan(c, 1, 1, 1, "full", links=Links(), options=opts)
    k = min(n, 8)
    assert pl["memory_activations_bytes"] == pytest.approx(2 * 1e5 + k * 1e5 + (8 - k) * 1e6)
    # fwd 10 + bwd 20 + re-run of k blocks
    assert pl["compute_s"] == pytest.approx(30 + k)
    if n >= 8:
        assert pl["time_per_batch_s"] == full["time_per_batch_s"]
    # two pipeline ranks x 2 chunks of 2 blocks (the ends apart): each chunk re-runs
    # min(n, 2) blocks, so each rank re-runs 2 min(n, 2)
    two = evaluate_plan(c, 2, 1, 4, "full", 2, links=Links(), options=opts,
                        stages=[(0, 3), (3, 5), (5, 7), (7, 10)])
    want = 4 * (3 * 3 + min(n, 2) + 2 * 3 + min(n, 2))     # rank 0 (chunks 0, 2) = rank 1
    assert two["compute_s"] == pytest.approx(want)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_uniform_recompute_groups_closed_form(n):
    """--recompute-method uniform --recompute-num-layers n: every block is re-run, only the
    first block of each group of n keeps its input, and re-running a group holds its n
    blocks' activations at once (the working buffer: n x 1e6 - 1e5)."""
    c = chain(n=10)
    pl = evaluate_plan(c, 1, 1, 1, "full", links=Links(),
                       options=PlanOptions(recompute_num_layers=n))
    groups = -(-8 // n)
    assert pl["memory_activations_bytes"] == pytest.approx(2 * 1e5 + groups * 1e5)
    assert pl["memory_buffers_bytes"] == pytest.approx(n * 1e6 - 1e5)
    assert pl["compute_s"] == pytest.approx(30 + 8)


def test_recompute_method_errors_and_the_dp_refuses():
    from phaze.place.dp import best_plans

    c = chain(n=10)
    with pytest.raises(ValueError, match="recompute_method"):
        evaluate_plan(c, 1, 1, 1, "full", options=PlanOptions(recompute_method="every"))
    with pytest.raises(ValueError, match="recompute_num_layers"):
        evaluate_plan(c, 1, 1, 1, "full", options=PlanOptions(recompute_num_layers=0))
    with pytest.raises(ValueError, match="recompute methods"):
        best_plans(c, 8, 64, [80e9], ("full",),
                   options=PlanOptions(recompute_method="block", recompute_num_layers=2))


def test_pytorch_ddp_bucket_copies_and_the_embedding_bucket():
    """PyTorch DDP (--DDP-impl torch): the reducer's copies into and out of its buckets,
    8 B/param over the HBM, are charged with the DP sync when d > 1; and the bucket left
    exposed after the backward holds at least the prologue's parameters (the embedding's
    gradient is ready last). Closed form on one stage: the backward (20 s) hides all but
    that last bucket."""
    c = chain(n=10, P=1e8)
    hbm = 2e12
    base = PlanOptions(overlap_grad_reduce=True, bucket_params=12.5e6, collectives="nccl")
    links = Links()
    red = allreduce_time(1e9 * 2.0, 8, 1, links, src_dtype_bytes=1.0, topology="nccl",
                         bw_efficiency=links.bw_efficiency)   # 1e9 params of fp16 grads
    plain = evaluate_plan(c, 1, 8, 64, links=links, options=base, hbm_bw_Bps=hbm)
    assert plain["dp_sync_s"] == pytest.approx(red * 12.5e6 / 1e9, rel=1e-9)
    import dataclasses
    ddp = dataclasses.replace(base, ddp_bucket_copy_bytes_per_param=8.0,
                              last_bucket_holds_prologue=True)
    pl = evaluate_plan(c, 1, 8, 64, links=links, options=ddp, hbm_bw_Bps=hbm)
    assert pl["dp_sync_s"] == pytest.approx(red * 1e8 / 1e9 + 1e9 * 8.0 / hbm, rel=1e-9)
    one = evaluate_plan(c, 1, 1, 64, links=links, options=ddp, hbm_bw_Bps=hbm)
    assert one["dp_sync_s"] == 0.0


@pytest.mark.parametrize("d, stride_members, share", [(8, 8, 24 / 132), (16, 8, 16 / 132),
                                                      (16, 1, 2 / 132), (16, 2, 4 / 132)])
def test_overlapped_dp_collective_slows_the_compute_beside_it(d, stride_members, share):
    """An overlapped gradient reduction hidden behind the backward still takes its NCCL
    channels' SMs: it adds share x (hidden part). Inside a node the share is
    comm_sm_share; a group across nodes runs comm_sm_share_net per member it has in a
    node (rings per NIC), at most comm_sm_share. Closed form on one stage whose backward
    (16 s) hides all but the last bucket."""
    import dataclasses
    t = 8 // stride_members                      # members per node = 8 / t
    c = chain(n=10, P=1e8, t=t)
    links = Links()
    base = PlanOptions(overlap_grad_reduce=True, collectives="nccl", grad_bytes=4.0)
    red = allreduce_time(1e9 * 4.0, d, t, links, src_dtype_bytes=1.0, topology="nccl",
                         bw_efficiency=links.bw_efficiency)
    exposed = red * 40e6 / 1e9
    free = evaluate_plan(c, 1, d, 64, links=links, options=base)
    assert free["dp_sync_s"] == pytest.approx(exposed, rel=1e-9)
    o = dataclasses.replace(base, comm_sm_share=24 / 132, comm_sm_share_net=2 / 132)
    got = evaluate_plan(c, 1, d, 64, links=links, options=o)
    assert got["dp_sync_s"] == pytest.approx(exposed + share * (red - exposed), rel=1e-9)


def test_megatron_core_profile_leaves_the_embedding_bucket_exposed():
    """Megatron-Core's DDP fills its buckets walking the parameters in reverse, so the word
    embedding is in the last bucket to reduce: the core profiles set
    last_bucket_holds_prologue (as PyTorch DDP's), and evaluate_model fills the SM shares
    of the overlapped collectives from the preset's NCCL channels."""
    from phaze.hw.presets import get_preset
    from phaze.place.evaluate import FRAMEWORKS, profile_options
    h100 = get_preset("h100")
    for fw in ("megatron-core-2024", "nemo-2024"):
        assert FRAMEWORKS[fw]["plan"]["last_bucket_holds_prologue"]
        assert profile_options(h100, fw)[1].last_bucket_holds_prologue
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model
    spec = get_model("gpt-1.7b").with_(layers=4)
    kw = dict(tp=1, pp=1, dp=16, mbs=1, batch=16, recompute="none", framework="nemo-2024")
    r = evaluate_model(spec, h100, **kw)
    free = evaluate_model(spec, h100, options={"comm_sm_share": 0.0, "comm_sm_share_net": 0.0},
                          **kw)
    assert r["dp_sync_s"] > free["dp_sync_s"] > 0
    assert r["compute_s"] == free["compute_s"]


def test_sm_shares_are_fractions_and_each_override_keeps_the_other_default():
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    for bad in (1.5, -0.1):
        for f in ("comm_sm_share", "comm_sm_share_net"):
            with pytest.raises(ValueError, match=f):
                PlanOptions(**{f: bad})
    spec, h100 = get_model("gpt-1.7b").with_(layers=4), get_preset("h100")
    kw = dict(tp=8, pp=1, dp=4, mbs=1, batch=8, recompute="none", framework="nemo-2024",
              sequence_parallel=True)      # the DP group (stride 8) crosses nodes: the net share
    base = evaluate_model(spec, h100, **kw)
    same = evaluate_model(spec, h100, options={"comm_sm_share": 24 / 132}, **kw)
    assert same["dp_sync_s"] == pytest.approx(base["dp_sync_s"])
    full = evaluate_model(spec, h100, options={"comm_sm_share_net": 1.0}, **kw)
    free = evaluate_model(spec, h100, options={"comm_sm_share_net": 0.0}, **kw)
    assert full["dp_sync_s"] > base["dp_sync_s"] > free["dp_sync_s"]


def _interleaved_order(p, v, m, r):
    """Rank r's ops in Megatron-Core's interleaved 1F1B (schedules.py,
    forward_backward_pipelining_with_interleaving, microbatch groups of p): (kind, chunk,
    microbatch) in the order it runs them: warm-up forwards, then one forward one backward,
    then the cool-down backwards."""
    total = m * v
    warm = total if m == p else min((p - r - 1) * 2 + (v - 1) * p, total)

    def op(kind, k):
        c = (k % (p * v)) // p
        return (kind, c if kind == "F" else v - 1 - c, (k // (p * v)) * p + k % p)
    ops = [op("F", k) for k in range(warm)]
    for i in range(total - warm):
        ops += [op("F", warm + i), op("B", i)]
    return ops + [op("B", k) for k in range(total - warm, total)]


def _simulate_interleaved(p, v, m, f, b, hop):
    """Makespan of that schedule, chunk c on rank c % p, every chunk f forward and b
    backward, each transfer between ranks `hop` seconds, sent asynchronously (overlap_p2p):
    an op starts when its rank is free and its input has arrived."""
    orders = [_interleaved_order(p, v, m, r) for r in range(p)]
    done, pos, clock = {}, [0] * p, [0.0] * p
    left = sum(map(len, orders))
    while left:
        moved = False
        for r in range(p):
            while pos[r] < len(orders[r]):
                kind, c, j = orders[r][pos[r]]
                if kind == "F":
                    dep = (r - 1, "F", c, j) if r else ((p - 1, "F", c - 1, j) if c else None)
                else:
                    dep = (r + 1, "B", c, j) if r < p - 1 else \
                        ((0, "B", c + 1, j) if c < v - 1 else (r, "F", c, j))
                if dep is not None and dep not in done:
                    break
                ready = 0.0 if dep is None else done[dep] + (hop if dep[0] != r else 0.0)
                clock[r] = max(clock[r], ready) + (f if kind == "F" else b)
                done[(r, kind, c, j)] = clock[r]
                pos[r] += 1
                left -= 1
                moved = True
        assert moved, "the schedule deadlocked"
    return max(clock)


@pytest.mark.parametrize("p, v, m", [(2, 6, 2), (2, 6, 8), (4, 2, 8), (4, 3, 12)])
def test_interleaved_overlapped_p2p_matches_a_simulation_of_megatrons_schedule(p, v, m):
    """Second route for overlap_p2p with interleaving: Megatron-Core's interleaved schedule
    simulated step by step. Without transfers it takes exactly the closed form's M L +
    (p - 1) / v L; with asynchronous transfers no longer than a chunk's forward, exactly 2
    (p v - 1) hops more (the first microbatch's way through every chunk and back), for any
    number of microbatches: what evaluate_plan charges (p2p_s). A transfer longer than a
    chunk's forward stalls the steady state too: then nothing counts as hidden."""
    from phaze.place.plan import interleaved_p2p_fill_s

    f, b = 1.0, 2.0
    c = chain(n=p * v, f=f, b=b)
    c = Chain(**{**c.__dict__, "kinds": ("block",) * c.n})
    L = Links(devices_per_node=1, inter_bw_Bps=2e9, inter_latency_s=1e-5)
    o = PlanOptions(collectives="nccl", overlap_p2p=True)
    r = evaluate_plan(c, p, 1, m, interleave=v, links=L, options=o)
    hop = r["p2p_s"] / (2 * (p * v - 1))
    assert 0 < hop < f
    free = _simulate_interleaved(p, v, m, f, b, 0.0)
    assert free == pytest.approx(m * v * (f + b) + (p - 1) / v * v * (f + b))
    assert r["time_per_batch_s"] - r["dp_sync_s"] == pytest.approx(
        _simulate_interleaved(p, v, m, f, b, hop))
    for x in (0.3, 0.9):     # the closed form itself, any hop up to a forward
        assert _simulate_interleaved(p, v, m, f, b, x) - free == pytest.approx(
            interleaved_p2p_fill_s(np.r_[0.0, [x] * (p * v - 1)], np.r_[[x] * (p * v - 1), 0.0],
                                   np.full(p * v, f)))
    # longer hops: at least the fill (more once the steady state stalls: m > p here)
    extra = _simulate_interleaved(p, v, m, f, b, 1.5) - free
    assert extra >= 2 * (p * v - 1) * 1.5 - 1e-9
    if m > p:
        assert extra > 2 * (p * v - 1) * 1.5
    assert interleaved_p2p_fill_s([0.0, 1.5], [1.5, 0.0], [f, f]) is None


def test_uneven_first_and_last_ranks_with_interleaving():
    """Megatron-Core get_num_layers_to_build: --decoder-first/last-pipeline-num-layers are
    the first / last pipeline RANK's blocks; interleaved, every rank's blocks split evenly
    over its chunks (chunk c on rank c mod p). 16 blocks, p 4, v 2, first = last = 2: ranks
    hold 2, 6, 6, 2 blocks, chunks 1, 3, 3, 1 in each of the two rounds."""
    c = chain(n=18)        # prologue, 16 blocks, epilogue
    st = megatron_stages(c, 4, 2, first=2, last=2)
    assert [b - a for a, b in st] == [1 + 1, 3, 3, 1, 1, 3, 3, 1 + 1]
    per_rank = [sum(b - a for a, b in st[r::4]) for r in range(4)]
    assert per_rank == [2 + 1, 6, 6, 2 + 1]     # + prologue / epilogue
    with pytest.raises(ValueError, match="interleave = 2"):
        megatron_stages(c, 4, 2, first=3, last=1)   # 3 blocks do not halve
    # interleave 1: the rank is the chunk, as before
    assert [b - a for a, b in megatron_stages(c, 4, 1, first=2, last=2)] == [3, 6, 6, 3]
