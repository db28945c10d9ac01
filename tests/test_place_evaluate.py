"""`phaze evaluate` and the Narayanan Eq. 3 FLOP count."""

from __future__ import annotations

import json

import pytest

from phaze.cost.params import preset_params
from phaze.place.evaluate import narayanan_flops


def test_narayanan_eq3_decomposition():
    # per block and sample: 24 s h^2 (1 + s/6h) FLOP forward; x3 training, x4 with recompute;
    # logits 2 s h V forward, x3 always (never recomputed)
    B, s, l, h, V = 8, 2048, 96, 12288, 51200
    block_fwd = 24 * B * s * h * h * (1 + s / (6 * h))
    logit = 6 * B * s * h * V
    assert narayanan_flops(B, s, l, h, V, True) == pytest.approx(4 * l * block_fwd + logit, rel=1e-12)
    assert narayanan_flops(B, s, l, h, V, False) == pytest.approx(3 * l * block_fwd + logit, rel=1e-12)


def test_evaluate_cli_json(capsys):
    from phaze.cli import main

    argv = ["evaluate", "--model", "gpt-1.7b", "--arch", "a100", "--tp", "1", "--pp", "2",
            "--dp", "4", "--mbs", "1", "--batch", "32", "--recompute", "full", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    for k in ("time_per_batch_s", "tflops_per_gpu_eq3", "memory_per_device_bytes", "compute_s",
              "bubble_s", "p2p_s", "dp_sync_s", "tp_s", "mfu"):
        assert k in out
    F = narayanan_flops(32, 2048, 24, 2304, 51200, True)
    assert out["tflops_per_gpu_eq3"] == pytest.approx(F / out["time_per_batch_s"] / 8 / 1e12)
    parts = sum(out[k] for k in ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s",
                                 "optimizer_s", "grad_accum_s"))
    assert parts == pytest.approx(out["time_per_batch_s"])
    # pp that does not divide the 24 blocks -> one-line user error, exit 2
    assert main(argv[:8] + ["5"] + argv[9:]) == 2


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_context_parallel_ring_in_the_chain_matches_per_layer_ring(recompute):
    """The preset route now leaves the ring attention to plan.context_parallel_chain (the
    DP's chain too). Second route written here: add (cp - 1) max(core, K V send) to each
    layer's pass latencies (send: latency + bytes / bus bandwidth of a cp-ring stride t on
    the preset's network; bwd sends K, V and their grads) and evaluate that chain as cp 1
    work with the plan's cp group terms."""
    from phaze.cost.collective import collective_time
    from phaze.hw.presets import get_preset
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph
    from phaze.place.evaluate import (MEGATRON_OPTIONS, attention_core_latencies,
                                      default_cost_params, evaluate_model, layer_latencies,
                                      megatron_layout)
    from phaze.place.plan import Links, PlanOptions, evaluate_plan

    spec, arch = get_model("llama2-7b"), get_preset("h100")
    seq, cp, tp, mbs = 8192, 4, 2, 1
    got = evaluate_model(spec, arch, tp=tp, pp=2, dp=2, mbs=mbs, batch=16, recompute=recompute,
                         seq=seq, cp=cp, graph_options={"attention": "flash"})
    from dataclasses import replace

    prm = replace(default_cost_params(arch), flash_causal=True)   # flash: the causal kernel
    # the default profile (megatron-lm-2022): eager bias kernels, async TP backward overlap,
    # Megatron's fused QKV and gate+up GEMMs
    g = build_graph(megatron_layout(spec), seq=seq // cp, mbs=mbs, tp=tp, unfused_bias=True,
                    attention="flash")
    lat, tps = layer_latencies(g, arch, arch.network, prm, async_tp=True)
    core = attention_core_latencies(g, arch, arch.network, prm)
    kv = 2 * mbs * (seq // cp) * (spec.n_kv_heads // tp) * spec.d_head * 2
    links = Links.of(arch.network, bw_efficiency=prm.link_bw_efficiency)
    ring = {}
    for li, c in core.items():
        if c[0] > 0:
            send = [collective_time("send_recv", kv * m, cp, tp, links, src_dtype_bytes=1.0,
                                    bw_efficiency=prm.link_bw_efficiency) for m in (1, 2, 1)]
            ring[li] = tuple(x + (cp - 1) * max(ci, s) if ci > 0 else x
                             for x, ci, s in zip(lat[li], c, send))
    assert ring, "llama2-7b has attention layers"
    ch = chain_from_graph(g, layer_latency={**lat, **ring}, layer_tp_s=tps)
    want = evaluate_plan(ch, 2, 2, 16, recompute, hbm_bytes=arch.hbm_bytes, links=links,
                         options=PlanOptions(**MEGATRON_OPTIONS, cp=cp),
                         peak_flops=arch.peak_flops,
                         hbm_bw_Bps=arch.hbm_bw_Bps * prm.hbm_bw_efficiency)
    assert got["time_per_batch_s"] == pytest.approx(want["time_per_batch_s"], rel=1e-12)
    bare = evaluate_plan(chain_from_graph(g, layer_latency=lat, layer_tp_s=tps), 2, 2, 16,
                         recompute, links=links, options=PlanOptions(**MEGATRON_OPTIONS, cp=cp),
                         hbm_bw_Bps=arch.hbm_bw_Bps * prm.hbm_bw_efficiency)
    assert got["time_per_batch_s"] > bare["time_per_batch_s"]     # the ring is charged


@pytest.mark.parametrize("comm, recompute", [("allgather", "selective"), ("allgather", "full"),
                                             ("a2a", "selective"), ("a2a", "none")])
def test_context_parallel_allgather_and_a2a_closed_form(comm, recompute):
    """--cp-comm-type allgather / a2a (Transformer Engine's AttnFuncWithCPAndKVAllGather /
    AttnFuncWithCPAndQKVOA2A), second route written here: each attention layer adds cp - 1
    local cores and exposed collectives over the CP group (cp devices, stride t) to each
    pass. allgather: forward all-gathers cp x KV; backward gathers again and
    reduce-scatters dK, dV. a2a: Q + K + V in and O out (forward), dO in and dQ + dK + dV
    out (backward). A selective recomputation of the core re-runs the forward's."""
    from dataclasses import replace

    from phaze.cost.collective import collective_time
    from phaze.hw.presets import get_preset
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph
    from phaze.place.evaluate import (MEGATRON_OPTIONS, attention_core_latencies,
                                      default_cost_params, evaluate_model, layer_latencies,
                                      megatron_layout)
    from phaze.place.plan import Links, PlanOptions, evaluate_plan

    spec, arch = get_model("llama2-7b"), get_preset("h100")
    seq, cp, tp, mbs = 8192, 4, 2, 1
    opts = {"cp_comm_type": comm}
    got = evaluate_model(spec, arch, tp=tp, pp=2, dp=2, mbs=mbs, batch=16, recompute=recompute,
                         seq=seq, cp=cp, graph_options={"attention": "flash"}, options=opts)
    prm = replace(default_cost_params(arch), flash_causal=True)
    g = build_graph(megatron_layout(spec), seq=seq // cp, mbs=mbs, tp=tp, unfused_bias=True,
                    attention="flash")
    lat, tps = layer_latencies(g, arch, arch.network, prm, async_tp=True)
    core = attention_core_latencies(g, arch, arch.network, prm)
    heads = mbs * (seq // cp) * (spec.heads // tp) * spec.d_head * 2      # Q (= O) bytes
    kv = 2 * mbs * (seq // cp) * (spec.n_kv_heads // tp) * spec.d_head * 2
    links = Links.of(arch.network, bw_efficiency=prm.link_bw_efficiency)

    def c(kind, nbytes):
        return collective_time(kind, nbytes, cp, tp, links, src_dtype_bytes=1.0,
                               bw_efficiency=prm.link_bw_efficiency)
    if comm == "allgather":
        fwd = c("all_gather", cp * kv)
        bwd = fwd + c("reduce_scatter", cp * kv)
    else:
        fwd = bwd = c("all_to_all", heads + kv) + c("all_to_all", heads)
    added = {li: tuple(x + (cp - 1) * ci + comm_s if ci > 0 else x
                       for x, ci, comm_s in zip(lat[li], cr, (fwd, bwd, fwd)))
             for li, cr in core.items() if cr[0] > 0}
    assert added, "llama2-7b has attention layers"
    ch = chain_from_graph(g, layer_latency={**lat, **added}, layer_tp_s=tps)
    want = evaluate_plan(ch, 2, 2, 16, recompute, hbm_bytes=arch.hbm_bytes, links=links,
                         options=PlanOptions(**MEGATRON_OPTIONS, cp=cp, **opts),
                         peak_flops=arch.peak_flops,
                         hbm_bw_Bps=arch.hbm_bw_Bps * prm.hbm_bw_efficiency)
    assert got["time_per_batch_s"] == pytest.approx(want["time_per_batch_s"], rel=1e-12)
    assert got["plan_options"]["cp_comm_type"] == comm
    ring = evaluate_model(spec, arch, tp=tp, pp=2, dp=2, mbs=mbs, batch=16, recompute=recompute,
                          seq=seq, cp=cp, graph_options={"attention": "flash"})
    # the same core work; only the ring hides its sends behind it
    assert got["time_per_batch_s"] > ring["time_per_batch_s"]
    assert got["model_flops"] == pytest.approx(ring["model_flops"], rel=1e-12)


def test_cp_comm_type_refusals():
    # Megatron-Core's names only; a2a splits the heads a TP rank holds (TE: num_heads %
    # cp_size == 0 for Q, K and V)
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model
    from phaze.place.plan import PlanOptions

    with pytest.raises(ValueError, match="cp_comm_type"):
        PlanOptions(cp_comm_type="ring")
    from phaze.errors import UserError

    with pytest.raises(UserError, match="cp = 8 must divide the 4 key/value heads"):
        evaluate_model(get_model("llama3-8b"), get_preset("h100"), tp=2, pp=1, dp=1, mbs=1,
                       batch=4, recompute="none", seq=32768, cp=8, sequence_parallel=True,
                       options={"cp_comm_type": "a2a"})


def test_megatron_2021_profile_fp16_reduction_accumulation_and_ddp_impl():
    # Narayanan SC'21 run scripts (--fp16): gradients reduced in fp16 (half the 2022
    # profile's fp32 bytes), accumulated by AccumulateGrad at 6 B/param per microbatch after
    # the first, a 52 B/param fp16-optimizer step; PyTorch DDP hides the reduction behind
    # the last microbatch's backward
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    m, a = get_model("gpt-1.7b"), get_preset("a100")
    kw = dict(tp=1, pp=1, dp=32, mbs=4, batch=512, recompute="full")
    new = evaluate_model(m, a, framework="megatron-lm-2022", **kw)
    old = evaluate_model(m, a, framework="megatron-lm-2021", **kw)
    torch_ddp = evaluate_model(m, a, framework="megatron-lm-2021", ddp_impl="torch", **kw)
    assert old["dp_sync_s"] == pytest.approx(new["dp_sync_s"] / 2, rel=0.05)
    assert new["grad_accum_s"] == 0.0
    M = 512 // (32 * 4)
    assert old["grad_accum_s"] > 0 and old["optimizer_s"] == pytest.approx(
        new["optimizer_s"] * 52 / 42)
    assert old["grad_accum_s"] == pytest.approx(old["optimizer_s"] * 6 / 52 * (M - 1))
    # PyTorch DDP hides the reduction but its last (embedding) bucket, its bucket copies and
    # the SMs its NCCL channels take from the backward beside it (16 of 108 on 4 nodes)
    assert torch_ddp["dp_sync_s"] < 0.45 * old["dp_sync_s"]
    free = evaluate_model(m, a, framework="megatron-lm-2021", ddp_impl="torch",
                          options={"comm_sm_share": 0.0, "comm_sm_share_net": 0.0}, **kw)
    assert free["dp_sync_s"] < 0.3 * old["dp_sync_s"]
    assert torch_ddp["time_per_batch_s"] < old["time_per_batch_s"]
    with pytest.raises(ValueError, match="DDP"):
        evaluate_model(m, a, ddp_impl="apex", **kw)


def test_evaluate_cli_overlap_switches_and_fused_cross_entropy(capsys):
    # --no-overlap turns a framework's overlap off (exposed TP collectives cost more);
    # --cross-entropy-fusion drops the unfused fp32 loss passes; both at once is an error
    from phaze.cli import main

    base = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--tp", "2", "--pp", "1",
            "--dp", "4", "--mbs", "1", "--batch", "32", "--recompute", "none",
            "--sequence-parallel", "--framework", "nemo-2024", "--json"]

    def run(*extra):
        assert main(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)

    on, off, fused = run(), run("--no-overlap", "tp_comm"), run("--cross-entropy-fusion")
    assert off["tp_s"] > on["tp_s"] and off["time_per_batch_s"] > on["time_per_batch_s"]
    assert fused["time_per_batch_s"] < on["time_per_batch_s"]
    assert fused["memory_per_device_bytes"] == on["memory_per_device_bytes"]
    assert main(base + ["--overlap", "p2p", "--no-overlap", "p2p"]) == 2


def test_preset_route_expert_parallelism_shards_experts_and_adds_all_to_all(capsys):
    # Mixtral-8x7B on H100: ep 8 keeps 1/8 of the routed experts per device and adds the
    # dispatch/combine all-to-alls; the same plan through the CLI gives the same time
    from phaze.cli import main
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    m, h = get_model("mixtral-8x7b"), get_preset("h100")
    kw = dict(tp=1, pp=4, dp=16, mbs=1, batch=256, recompute="full", seq=4096, interleave=8,
              framework="nemo-2024")
    one, eight = evaluate_model(m, h, **kw), evaluate_model(m, h, ep=8, **kw)
    assert eight["memory_per_device_bytes"] < 0.5 * one["memory_per_device_bytes"]
    assert eight["time_per_batch_s"] > one["time_per_batch_s"]      # the all-to-alls
    with pytest.raises(ValueError, match="expert parallelism"):
        evaluate_model(m, h, ep=3, **kw)
    argv = ["evaluate", "--model", "mixtral-8x7b", "--arch", "h100", "--tp", "1", "--pp", "4",
            "--dp", "16", "--mbs", "1", "--batch", "256", "--seq", "4096", "--interleave", "8",
            "--framework", "nemo-2024", "--ep", "8", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["time_per_batch_s"] == pytest.approx(eight["time_per_batch_s"])
    assert out["ep"] == 8
    # the result records how it was obtained: profile, plan options, cost parameters
    assert out["framework"] == "nemo-2024" and out["plan_options"]["ep"] == 8
    assert out["plan_options"]["distributed_optimizer"] is True
    assert out["cost_params"]["sustained_clock_fraction"] == pytest.approx(
        preset_params("h100").sustained_clock_fraction)
    assert out["graph_options"]["attention"] == "flash"


def test_cli_choices_are_the_profiles():
    # the CLI lists --framework / --ddp-impl literally (no import of the model at start-up):
    # they must be exactly phaze.place.evaluate's tables
    from phaze.cli import build_parser
    from phaze.place.evaluate import DDP_IMPLS, FRAMEWORKS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["evaluate"]
    choices = {a.dest: a.choices for a in sub._actions if a.choices}
    assert set(choices["framework"]) == set(FRAMEWORKS)
    assert set(choices["ddp_impl"]) == set(DDP_IMPLS)


@pytest.mark.parametrize("table", ["narayanan2021_table1", "nemo_2407_h100_fp8"])
def test_cli_reproduces_the_validate_rows(table, capsys):
    # two routes to one figure: `phaze evaluate` with a row's published flags gives the time
    # `phaze validate` reports (d > 1, the 2021 DDP, FP8, fused CE, overlaps switched per
    # row). The inline model is a Megatron GPT (tied, dropout): the GPT rows of each table.
    from phaze.cli import main
    from phaze.validate import data
    from phaze.validate.evaluate import plan_evaluator

    rows = [c for c in data.cases(table) if c.family == "gpt"]
    assert rows
    for c in rows:
        argv = ["evaluate", "--hidden", str(c.hidden), "--heads", str(c.heads), "--layers",
                str(c.layers), "--vocab", str(c.vocab), "--seq", str(c.seq), "--arch", c.arch,
                "--tp", str(c.tp), "--pp", str(c.pp), "--dp", str(c.dp), "--cp", str(c.cp),
                "--mbs", str(c.microbatch), "--batch", str(c.batch), "--interleave",
                str(c.interleave), "--recompute", c.recompute, "--json", "--allow-infeasible",
                "--framework", c.framework or "megatron-lm-2022", "--ddp-impl", c.ddp_impl]
        argv += ["--sequence-parallel"] if c.sequence_parallel else []
        argv += ["--fp8"] if c.fp8 else []
        argv += ["--cross-entropy-fusion"] if c.ce_fusion else []
        if c.tp_overlap is not None:
            argv += ["--overlap" if c.tp_overlap else "--no-overlap", "tp_comm"]
        assert main(argv) == 0, c.name
        got = json.loads(capsys.readouterr().out)["time_per_batch_s"]
        want = plan_evaluator(c, c.microbatch, c.interleave).time_per_batch_s
        assert got == pytest.approx(want, rel=1e-9), c.name


def test_cli_gradient_and_optimizer_state_dtypes(capsys):
    """--grad-sync-dtype / --optimizer-state-dtype bf16 (NeMo's distributed Adam
    grad_sync_dtype and dtype): 2 B gradients and 6 B of Adam state per parameter instead of
    4 and 12; the optimizer and gradient memory halve, the weights stay. Refused with --grid
    (a GPU-stack setting, like --framework)."""
    from phaze.cli import main

    base = ["evaluate", "--arch", "h100", "--framework", "megatron-core-2024", "--model",
            "llama3-8b", "--seq", "2048", "--tp", "2", "--pp", "1", "--dp", "4", "--mbs", "1",
            "--batch", "32", "--recompute", "none", "--sequence-parallel", "--json"]
    got = []
    for extra in ([], ["--grad-sync-dtype", "bf16", "--optimizer-state-dtype", "bf16"]):
        assert main(base + extra) == 0
        got.append(json.loads(capsys.readouterr().out))
    a, b = got
    assert (b["plan_options"]["grad_bytes"], b["plan_options"]["adam_state_bytes"]) == (2.0, 6.0)
    assert b["memory_grads_bytes"] == pytest.approx(a["memory_grads_bytes"] / 2)
    assert b["memory_optimizer_bytes"] == pytest.approx(a["memory_optimizer_bytes"] / 2)
    assert b["memory_weights_bytes"] == a["memory_weights_bytes"]
    # the optimizer step moves 3 x 2 B less gradient and 2 1/3 x 6 B less state per param
    step = a["plan_options"]["optimizer_bytes_per_param"] - b["plan_options"]["optimizer_bytes_per_param"]
    assert step == pytest.approx(3 * 2 + 7 / 3 * 6)
    assert b["optimizer_s"] < a["optimizer_s"]
    assert main(["evaluate", "--grid", "g.parquet", "--arch", "x", "--model", "gpt2-xl",
                 "--tp", "1", "--pp", "1", "--dp", "1", "--mbs", "1",
                 "--grad-sync-dtype", "bf16"]) == 2
    assert "--grad-sync-dtype" in capsys.readouterr().err



@pytest.mark.parametrize("extra,field", [
    (["--framework", "megatron-deepspeed", "--interleave", "2"], "--interleave"),
    (["--framework", "megatron-deepspeed", "--overlap", "p2p"], "--overlap"),
    (["--framework", "megatron-lm-2021", "--fp8"], "--fp8"),
    (["--framework", "megatron-deepspeed", "--fp8"], "--fp8")])
def test_framework_refuses_what_its_code_cannot_run(extra, field, capsys):
    """DeepSpeed's pipeline engine has no interleaving and blocks on every p2p; the 2021
    stacks had no FP8 (no Transformer Engine): one line naming the flag, exit 2."""
    from phaze.cli import main

    assert main(["evaluate", "--model", "gpt2-xl", "--arch", "h100", "--tp", "1", "--pp", "4",
                 "--dp", "2", "--mbs", "1", "--batch", "16", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"phaze: error: {field}:" in err


def test_attention_flag_wins_over_the_framework(capsys):
    """--attention flash with a framework whose kernel is eager (megatron-lm-2022) builds
    flash attention, so context parallelism runs (it was refused, the fix naming the flag
    the user had given)."""
    from phaze.cli import main

    args = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--framework",
            "megatron-lm-2022", "--tp", "2", "--pp", "1", "--dp", "1", "--cp", "2", "--mbs", "1",
            "--batch", "2", "--seq", "8192", "--sequence-parallel", "--recompute", "none",
            "--json"]
    assert main(args) == 2 and "--attention flash" in capsys.readouterr().err
    assert main(args + ["--attention", "flash"]) == 0
    assert json.loads(capsys.readouterr().out)["graph_options"]["attention"] == "flash"


def test_fp8_runs_report_mfu_against_both_peaks():
    """MFU is against the dense bf16 peak (Megatron's and NeMo's convention); an FP8 run also
    reports it against the FP8 peak (fp8_speedup x the bf16 one), which stays below 1."""
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    kw = dict(tp=1, pp=1, dp=8, mbs=1, batch=16, recompute="none", framework="nemo-2024")
    spec = get_model("llama3-8b").with_(layers=2)
    r8 = evaluate_model(spec, get_preset("h100"), fp8=True, **kw)
    assert r8["mfu_fp8_peak"] == pytest.approx(r8["mfu"] / 2.0) and r8["mfu_fp8_peak"] < 1
    assert "mfu_fp8_peak" not in evaluate_model(spec, get_preset("h100"), **kw)


def test_sgd_step_moves_the_weight_not_adams_state():
    """The profiles count Adam's step (38 B/param for Megatron-Core: grad norm and update
    reads of the grad, 2 1/3 passes over the 12 B of master weight, m and v, the zeroing);
    SGD keeps no state: those passes become a read and a write of the 2 B weight, 14 B."""
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model
    from phaze.place.plan import PlanOptions

    kw = dict(tp=1, pp=1, dp=8, mbs=1, batch=16, recompute="none", framework="nemo-2024")
    spec = get_model("llama3-8b").with_(layers=2)
    adam = evaluate_model(spec, get_preset("h100"), **kw)
    sgd = evaluate_model(spec, get_preset("h100"), optimizer="sgd", **kw)
    assert sgd["optimizer_s"] == pytest.approx(adam["optimizer_s"] * 14 / 38)
    assert PlanOptions(optimizer="sgd").step_bytes_per_param() == 0.0     # untimed stays untimed


def test_cli_fp8_blockwise_recipe_records_and_costs_it(capsys):
    # --fp8-recipe blockwise (Megatron-Core's name; NeMo's fp8_sc) reaches the cost model
    # and the result records it: the CLI equals evaluate_model called with the recipe, and
    # differs from the per-tensor recipe (slower block-scaled main loop, cheaper quantize)
    from phaze.cli import main
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    base = ["evaluate", "--arch", "h100", "--framework", "megatron-core-2024", "--model",
            "llama3-8b", "--seq", "4096", "--tp", "2", "--pp", "1", "--dp", "4", "--mbs", "1",
            "--batch", "32", "--recompute", "none", "--sequence-parallel", "--fp8", "--json"]
    got = {}
    for recipe in ("tensorwise", "blockwise"):
        assert main(base + ["--fp8-recipe", recipe]) == 0
        got[recipe] = json.loads(capsys.readouterr().out)
    assert got["blockwise"]["fp8_recipe"] == got["blockwise"]["cost_params"]["fp8_recipe"] == "blockwise"
    r = evaluate_model(get_model("llama3-8b"), get_preset("h100"), tp=2, pp=1, dp=4, mbs=1,
                       batch=32, seq=4096, recompute="none", sequence_parallel=True,
                       framework="megatron-core-2024", fp8=True, fp8_recipe="blockwise")
    assert got["blockwise"]["time_per_batch_s"] == pytest.approx(r["time_per_batch_s"], rel=1e-12)
    assert got["blockwise"]["time_per_batch_s"] != pytest.approx(
        got["tensorwise"]["time_per_batch_s"], rel=1e-4)


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_fp8_linears_keep_their_inputs_in_fp8(recompute):
    # Transformer Engine keeps the quantized input of an FP8 linear for its weight
    # gradient (linear.py: saved_inputmat = the column-wise FP8 copy): 1 B per element
    # instead of the graph's 2. Closed form: the FP8 plan's activation memory is the bf16
    # plan's less half the saved input of every FP8 linear the mode keeps, summed over the
    # layers a stage holds in flight; weights, gradients and optimizer state unchanged
    from phaze.cost.api import is_fp8_gemm
    from phaze.hw.presets import get_preset
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph
    from phaze.place.evaluate import evaluate_model, megatron_layout

    spec, arch = get_model("llama3-8b"), get_preset("h100")
    kw = dict(tp=2, pp=1, dp=4, mbs=1, batch=32, seq=4096, recompute=recompute,
              sequence_parallel=True, framework="megatron-core-2024",
              recompute_modules=("mlp",) if recompute == "selective" else None)
    bf, f8 = evaluate_model(spec, arch, **kw), evaluate_model(spec, arch, fp8=True, **kw)
    for k in ("memory_weights_bytes", "memory_grads_bytes", "memory_optimizer_bytes"):
        assert f8[k] == bf[k], k
    g = build_graph(megatron_layout(spec), seq=4096, mbs=1, tp=2, sequence_parallel=True,
                    attention="flash", recompute_modules=kw["recompute_modules"])
    block = g.layers[1]
    lin = [o for o in block.fwd if o.kind == "gemm" and is_fp8_gemm(o)]
    assert {o.name for o in lin} >= {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    # the output projection's input is the fused core's O, which the core keeps in bf16
    # for its own backward while it is not recomputed (here: not at all): under the
    # delayed recipe linear_proj keeps its FP8 copy beside it (_fp8_saved_delta)
    proj = next(o.saved_bytes for o in lin if o.name == "attn.proj")
    half = {"none": sum(o.saved_bytes for o in lin) / 2 - proj,
            "selective": sum(o.saved_bytes for o in lin if not o.selective_recompute) / 2
            - proj,
            "full": 0.0}[recompute]
    if recompute == "selective":     # --recompute-modules mlp re-runs fc1 / fc2: not kept
        assert half < sum(o.saved_bytes for o in lin) / 2 - proj
    a = chain_from_graph(g, op_latency_s=lambda o: 1e-6)
    b = chain_from_graph(g, op_latency_s=lambda o: 1e-6, fp8=True)
    blocks = [i for i, k in enumerate(a.kinds) if k == "block"]
    col = {"none": "act_none_bytes", "selective": "act_selective_bytes",
           "full": "act_full_bytes"}[recompute]
    for i in blocks:
        assert getattr(a, col)[i] - getattr(b, col)[i] == pytest.approx(half, rel=1e-12)
    if recompute == "none":
        assert f8["memory_activations_bytes"] < bf["memory_activations_bytes"]
    else:   # selective: QKV's copy saves what linear_proj's adds (fc1 / fc2 re-run)
        assert f8["memory_activations_bytes"] <= bf["memory_activations_bytes"]


def _fp8_block_delta(name, tp, recipe, **kw):
    """(none, selective) activation bytes of one FP8 block less the bf16 block's, and the
    block's forward ops by name (chain_from_graph, fp8=True with `recipe`)."""
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph
    from phaze.place.evaluate import megatron_layout

    g = build_graph(megatron_layout(get_model(name)), seq=4096, mbs=1, tp=tp,
                    sequence_parallel=tp > 1, attention="flash", unfused_bias=True, **kw)
    a = chain_from_graph(g, op_latency_s=lambda o: 1e-6)
    b = chain_from_graph(g, op_latency_s=lambda o: 1e-6, fp8=True, fp8_recipe=recipe)
    i = [j for j, k in enumerate(a.kinds) if k == "block"][-1]
    ops = {o.name: o for o in g.layers[-2].fwd}
    return (b.act_none_bytes[i] - a.act_none_bytes[i],
            b.act_selective_bytes[i] - a.act_selective_bytes[i]), ops


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise"])
def test_fp8_attention_output_is_kept_in_bf16_by_the_fused_core(recipe):
    # TE's fused attention saves q, k, v and out for its backward; Megatron-Core's
    # linear_proj reads that out. delayed: linear_proj keeps its FP8 copy beside the core's
    # bf16 O (+1 B) while the core is not recomputed, only the copy when it is (-1 B);
    # tensorwise / blockwise: Megatron-Core makes linear_proj save its original input
    # (attention.py set_save_original_input, "the output of the fused core_attn is saved by
    # itself"): the bf16 O, 2 B, in every mode. The other linears: -1 B each. Before: the
    # O was halved in every case (2 B per element of it too few while the core keeps it).
    (none, sel), ops = _fp8_block_delta("llama3-8b", 2, recipe)
    others = sum(ops[n].saved_bytes for n in ("attn.qkv", "mlp.fc1", "mlp.fc2")) / 2
    o = ops["attn.proj"].saved_bytes
    assert o == 4096 * (32 // 2) * 128 * 2    # T x heads / t x d x 2 B
    if recipe == "delayed":
        assert (none, sel) == (pytest.approx(-others + o / 2), pytest.approx(-others - o / 2))
    else:
        assert (none, sel) == (pytest.approx(-others), pytest.approx(-others))


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_output_discarding_recompute_modules_drop_no_fp8_copy(recipe):
    # --recompute-modules layernorm / moe_act (Megatron-Core CheckpointWithoutOutput): the
    # norm's and the activation's outputs are discarded after the forward and the linears
    # reading them save their original input (set_save_original_input under FP8), so QKV's
    # and the expert fc2's saved inputs are gone under selective: no FP8 copy to halve.
    # Before: halved a second time (16 + 48 MiB / 2 per block too few here)
    (none, sel), ops = _fp8_block_delta("qwen3-30b-a3b", 1, recipe, ep=8,
                                        recompute_modules=("layernorm", "moe_act"))
    lin = ("attn.qkv", "moe.expert.fc1", "moe.expert.down")
    assert all(ops[n].selective_drop == ops[n].saved_bytes for n in ("attn.qkv", "moe.expert.down"))
    proj = ops["attn.proj"].saved_bytes / 2 if recipe == "delayed" else 0.0  # core kept
    assert none == pytest.approx(-sum(ops[n].saved_bytes for n in lin) / 2 + proj)
    assert sel == pytest.approx(-ops["moe.expert.fc1"].saved_bytes / 2 + proj)


def test_fp8_linears_sharing_a_bf16_input_keep_their_own_copy():
    # MLA's kv_down reads the same norm output as q_down, a shared expert's fc1 the same as
    # the bf16 router: the bf16 graph counts that tensor once (at q_down, at the router),
    # but each FP8 linear quantizes and keeps its own copy (TE Linear: saved_inputmat),
    # 1 B per element of the local shard each. Before: nothing counted for them
    (none, sel), ops = _fp8_block_delta("deepseek-v3", 2, "tensorwise", ep=64,
                                        recompute_modules=("mla_up_proj", "mlp"))
    shard = 4096 // 2 * 7168 * 2                     # Ts x h x 2 B
    assert ops["attn.kv_down"].saved_bytes == ops["moe.shared.fc1"].saved_bytes == 0
    halved = ("attn.q_down", "attn.q_up", "attn.kv_up", "moe.expert.fc1", "moe.expert.down",
              "moe.shared.down")
    assert none == pytest.approx(-sum(ops[n].saved_bytes for n in halved) / 2 + shard)
    rerun = sum(ops[n].saved_bytes for n in ("attn.q_up", "attn.kv_up"))   # mla_up_proj
    assert sel == pytest.approx(-(sum(ops[n].saved_bytes for n in halved) - rerun) / 2 + shard)



@pytest.mark.parametrize("comm, label", [("p2p", "CP ring steps"), ("allgather", "CP all-gather steps"),
                                         ("a2a", "CP all-to-all steps")])
def test_cp_steps_named_as_the_comm_type_runs_them(comm, label, capsys):
    """The CP part of compute is a ring only under p2p: allgather and a2a print what they run."""
    from phaze.cli import main

    assert main(["evaluate", "--model", "llama3-8b", "--arch", "h100", "--framework", "nemo-2024",
                 "--tp", "2", "--pp", "1", "--cp", "2", "--dp", "2", "--mbs", "1", "--batch", "16",
                 "--cp-comm-type", comm]) == 0
    out = capsys.readouterr().out
    assert f"(in compute: {label} " in out
    assert sum(x in out for x in ("CP ring steps", "CP all-gather steps", "CP all-to-all steps")) == 1


@pytest.mark.parametrize("extra, stage", [(["--zero-stage", "1"], 1), (["--zero1"], 1),
                                          (["--no-zero1"], 0), (["--zero-stage", "2"], 2),
                                          ([], 1)])
def test_json_records_one_zero_stage_and_the_version(extra, stage, capsys):
    """ZeRO-1 is held as zero1 (or the distributed optimizer) with zero_stage 0 inside
    PlanOptions; the result records the stage it amounts to once, the same in plan_options
    as at the top, and the phaze version that computed it."""
    from phaze import __version__
    from phaze.cli import main

    assert main(["evaluate", "--model", "gpt2-xl", "--arch", "h100", "--framework", "nemo-2024",
                 "--tp", "1", "--pp", "2", "--dp", "2", "--mbs", "1", "--batch", "8", *extra,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan_options"]["zero_stage"] == out["zero_stage"] == stage
    assert out["phaze_version"] == __version__


def test_sequence_parallel_at_t1_is_recorded_off(capsys):
    """Megatron turns sequence parallelism off without TP; the plan records what ran and
    the text says so (a new user saw 'sequence parallel' printed at t = 1)."""
    from phaze.cli import main

    argv = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--framework",
            "megatron-core-2024", "--pp", "1", "--dp", "8", "--mbs", "1", "--batch", "64",
            "--sequence-parallel"]
    assert main(argv + ["--tp", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sequence_parallel"] is False
    assert main(argv + ["--tp", "1"]) == 0
    assert "no sequence parallel at t = 1" in capsys.readouterr().out
    assert main([x if x != "8" else "4" for x in argv] + ["--tp", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sequence_parallel"] is True


def test_hierarchical_cp_a2a_p2p_closed_form_and_its_two_ends():
    """--cp-comm-type a2a+p2p (TE's AttnFuncWithCPAndKVP2P with cp_group [a2a, p2p];
    Megatron-Core --hierarchical-context-parallel-sizes [a, cp / a]), second route written
    here: all-to-alls of Q + K + V and O over the first level (a devices, stride t), then a
    ring of cp / a steps over the second (stride t a), each a local cores beside the send of
    K, V (2 x in the backward). Its ends are the other two types exactly: a = 1 is the p2p
    ring, a = cp the all-to-all CP."""
    from dataclasses import replace

    import numpy as np

    from phaze.cost.collective import collective_time
    from phaze.hw.presets import get_preset
    from phaze.model.graph import build_graph
    from phaze.model.zoo import get_model
    from phaze.place.chain import chain_from_graph
    from phaze.place.evaluate import default_cost_params, evaluate_model
    from phaze.place.plan import Links, PlanOptions, axes_chain

    spec, arch = get_model("llama2-7b"), get_preset("h100")
    seq, cp, tp = 16384, 8, 1
    kw = dict(tp=tp, pp=1, dp=2, mbs=1, batch=8, recompute="none", seq=seq, cp=cp,
              graph_options={"attention": "flash"})

    def run(comm, a=0):
        return evaluate_model(spec, arch, options={"cp_comm_type": comm, "cp_a2a_size": a}, **kw)
    for a, same in ((1, "p2p"), (cp, "a2a")):
        assert run("a2a+p2p", a)["time_per_batch_s"] == pytest.approx(
            run(same)["time_per_batch_s"], rel=1e-12)
    a, ring = 4, cp // 4
    got = run("a2a+p2p", a)
    assert got["plan_options"]["cp_a2a_size"] == a
    prm = replace(default_cost_params(arch), flash_causal=True)
    links = Links.of(arch.network, bw_efficiency=prm.link_bw_efficiency)
    g = build_graph(spec, seq=seq, mbs=1, tp=tp, cp=cp, attention="flash")
    ch = chain_from_graph(g, op_latency_s=lambda o: 1e-4 if o.name.endswith("attn.core") else
                          (2.5e-4 if o.name.endswith("attn.core.bwd") else 1e-3))
    qo = (seq // cp) * (spec.heads // tp) * spec.d_head * 2
    kv = 2 * (seq // cp) * (spec.n_kv_heads // tp) * spec.d_head * 2

    def c(kind, nbytes, n, stride):
        return collective_time(kind, nbytes, n, stride, links, src_dtype_bytes=1.0,
                               bw_efficiency=links.bw_efficiency)
    comm = c("all_to_all", qo + kv, a, tp) + c("all_to_all", qo, a, tp)
    sf, sb = c("send_recv", kv, ring, tp * a), c("send_recv", 2 * kv, ring, tp * a)
    want_f = (a - 1) * 1e-4 + (ring - 1) * max(a * 1e-4, sf) + comm
    want_b = (a - 1) * 2.5e-4 + (ring - 1) * max(a * 2.5e-4, sb) + comm
    out = axes_chain(ch, links, PlanOptions(cp=cp, cp_comm_type="a2a+p2p", cp_a2a_size=a))
    on = ch.kv_bytes > 0
    assert on.sum() == spec.layers
    np.testing.assert_allclose(out.extra["cp_ring_s"][on], want_f + want_b, rtol=1e-12)
    assert got["model_flops"] == pytest.approx(run("p2p")["model_flops"], rel=1e-12)


def test_hierarchical_cp_refusals():
    from phaze.errors import UserError
    from phaze.model.graph import cp_comm_problem
    from phaze.model.zoo import resolve_model
    from phaze.place.plan import PlanOptions
    from phaze.settings import PlacementSettings

    llama, mistral, oss = (resolve_model(m) for m in ("llama3-8b", "mistral-7b", "gpt-oss-20b"))
    assert cp_comm_problem(llama, 65536, 1, 16, "a2a+p2p", 8) is None
    assert "divide cp = 16" in cp_comm_problem(llama, 65536, 1, 16, "a2a+p2p", 3)
    assert "key/value heads" in cp_comm_problem(llama, 65536, 2, 16, "a2a+p2p", 8)  # 4 per rank
    assert "sliding" in cp_comm_problem(mistral, 65536, 1, 8, "a2a+p2p", 2)
    from dataclasses import replace
    full_oss = replace(oss, layer_types=("full",) * oss.layers)   # sinks without windows
    assert "sinks" in cp_comm_problem(full_oss, 65536, 1, 8, "a2a+p2p", 2)
    assert cp_comm_problem(full_oss, 65536, 1, 8, "a2a", 2) is None
    with pytest.raises(ValueError, match="must divide cp = 8"):
        PlanOptions(cp=8, cp_comm_type="a2a+p2p", cp_a2a_size=3)
    with pytest.raises(UserError) as e:
        PlacementSettings(cp_comm_type="a2a+p2p")
    assert e.value.field == "cp_a2a_size"
    with pytest.raises(UserError) as e:
        PlacementSettings(cp_comm_type="a2a", cp_a2a_size=8)
    assert e.value.field == "cp_a2a_size"


def test_preset_route_records_the_network_and_chip_it_was_costed_on(tmp_path, capsys):
    """`phaze evaluate --json` on a preset records the network the plan ran on (--network
    or the chip's) and the chip: re-running from the record (chip JSON, network JSON)
    reproduces the time; the text output names the network."""
    import json

    from phaze.cli import main

    net = {"devices_per_node": 8, "intra_bw_Bps": 45e9, "intra_latency_s": 3e-6,
           "inter_bw_Bps": 5e9, "inter_latency_s": 6e-6}
    base = ["evaluate", "--model", "llama3-8b", "--arch", "h100", "--tp", "2", "--pp", "2",
            "--dp", "2", "--mbs", "1", "--batch", "16", "--seq", "2048"]
    runs = {}
    for name, extra in (("chip", []), ("slow", ["--network", json.dumps(net)])):
        assert main(base + extra + ["--json"]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["chip"]["network"]["name"] == "dgx-h100"
    assert {k: runs["slow"]["network"][k] for k in net} == net
    assert runs["slow"]["time_per_batch_s"] > runs["chip"]["time_per_batch_s"]
    chip = tmp_path / "chip.json"
    chip.write_text(json.dumps(runs["slow"]["chip"]))
    again = [a if a != "h100" else str(chip) for a in base]
    assert main(again + ["--network", json.dumps(runs["slow"]["network"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["time_per_batch_s"] == pytest.approx(
        runs["slow"]["time_per_batch_s"], rel=1e-12)
    assert main(base) == 0
    assert "(dgx-h100 network)" in capsys.readouterr().out.splitlines()[0]
    # the calibration is the chip name's preset's: recorded, and "none" for another name
    assert runs["chip"]["calibration"] == "h100"
    chip.write_text(json.dumps({**runs["chip"]["chip"], "name": "my-h100"}))
    assert main([a if a != "h100" else str(chip) for a in base] + ["--json"]) == 0
    renamed = json.loads(capsys.readouterr().out)
    assert renamed["calibration"] == "none"
    assert renamed["time_per_batch_s"] != pytest.approx(runs["chip"]["time_per_batch_s"])
