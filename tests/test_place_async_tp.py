"""Megatron's asynchronous TP communication in the backward (async_tensor_model_parallel_allreduce)
against its closed form, the graph's kernels, the framework profiles and Korthikanti Table 4
(held out: one layer's measured forward and backward)."""

import json

import pytest

from phaze.cost.api import op_latencies
from phaze.hw.presets import get_preset
from phaze.model.graph import build_graph
from phaze.model.ops import GemmDims, Op
from phaze.model.zoo import get_model
from phaze.place.evaluate import (FRAMEWORKS, async_tp_exposed, default_cost_params,
                                  evaluate_model, layer_latencies)


def _ops():
    g = GemmDims(1, 8, 8, 8)
    return [Op(name="fc1.dX", kind="gemm", gemm=g, flops=1.0),
            Op(name="fc1.dW", kind="gemm", gemm=g, flops=1.0),
            Op(name="f.bwd", kind="collective", collective="all_reduce", group="tp",
               deps=("fc1.dX",), comm_bytes=1.0),
            Op(name="x.regather", kind="collective", collective="all_gather", group="tp",
               comm_bytes=1.0),
            Op(name="qkv.dX", kind="gemm", gemm=g, flops=1.0),
            Op(name="qkv.dW", kind="gemm", gemm=g, flops=1.0, deps=("x.regather",)),
            Op(name="other.bwd", kind="collective", collective="all_gather", group="tp",
               deps=("ln.bwd",), comm_bytes=1.0),
            Op(name="ln.bwd", kind="vector", vclass="layernorm_bwd", elements=8)]


@pytest.mark.parametrize("c", [0.0, 0.222, 1.0])
@pytest.mark.parametrize("comm", [0.5, 2.0, 10.0])
def test_exposed_closed_form(c, comm):
    # dX all-reduce hides behind dW: max(C - G, c C); the SP regather behind qkv's dX; a
    # collective that waits on anything but dX GEMMs (and a lone one) stays exposed
    lat = [3.0, 4.0, comm, comm, 5.0, 6.0, comm, 1.0]
    got = async_tp_exposed(_ops(), lat, c)
    assert got[2] == pytest.approx(max(comm - 4.0, c * comm))
    assert got[3] == pytest.approx(max(comm - 5.0, c * comm))
    assert got[6] == comm
    assert [got[i] for i in (0, 1, 4, 5, 7)] == [3.0, 4.0, 5.0, 6.0, 1.0]
    assert async_tp_exposed(_ops(), lat, 0.0)[2] <= got[2] <= comm


@pytest.mark.parametrize("sp", [False, True])
def test_layer_latencies_hide_only_column_linear_collectives(sp):
    # the 22B layer of Korthikanti (t 8, mbs 4): with async the backward drops by exactly
    # what async_tp_exposed removes; forward and the selective re-run are untouched
    arch, prm = get_preset("a100"), default_cost_params(get_preset("a100"))
    g = build_graph(get_model("gpt-22b"), seq=2048, mbs=4, tp=8, sequence_parallel=sp)
    sync, sync_tp = layer_latencies(g, arch, arch.network, prm)
    asyn, asyn_tp = layer_latencies(g, arch, arch.network, prm, async_tp=True)
    block = [i for i, layer in enumerate(g.layers) if layer.kind == "block"][0]
    ops = list(g.layers[block].bwd)
    lat = [float(x) for x in op_latencies(ops, arch, arch.network, tp=8, params=prm).lat_all_s[0]]
    share = prm.nccl_channels / arch.n_tc
    hidden = sum(a - b for a, b in zip(lat, async_tp_exposed(ops, lat, share)))
    assert hidden > 0
    assert sync[block][1] - asyn[block][1] == pytest.approx(hidden)
    assert sync_tp[block][1] - asyn_tp[block][1] == pytest.approx(hidden)
    assert (sync[block][0], sync[block][2]) == (asyn[block][0], asyn[block][2])
    # two collectives per layer hide (attention's and the MLP's column linear), SP adds
    # the two regathers
    assert sum(a != b for a, b in zip(lat, async_tp_exposed(ops, lat, share))) == (4 if sp else 2)


def test_framework_profiles_switch_it_as_megatron_did():
    # on since Megatron-LM 2021-09 (the 2022 default; Megatron-Core/TE alike), absent from
    # the SC'21 code; userbuffers (tp_comm_overlap) replace it
    assert FRAMEWORKS["megatron-lm-2022"]["plan"]["async_tensor_model_parallel_allreduce"]
    assert not FRAMEWORKS["megatron-lm-2021"]["plan"]["async_tensor_model_parallel_allreduce"]
    assert not FRAMEWORKS["megatron-deepspeed"]["plan"]["async_tensor_model_parallel_allreduce"]
    m, a = get_model("gpt-22b"), get_preset("a100")
    kw = dict(tp=8, pp=1, dp=1, mbs=4, batch=4, recompute="full")
    on = evaluate_model(m, a, **kw)
    off = evaluate_model(m, a, options={"async_tensor_model_parallel_allreduce": False}, **kw)
    assert on["time_per_batch_s"] < off["time_per_batch_s"] and on["tp_s"] < off["tp_s"]
    assert on["plan_options"]["async_tensor_model_parallel_allreduce"] is True
    assert evaluate_model(m, a, tp=1, pp=1, dp=1, mbs=4, batch=4)["tp_s"] == 0.0


def test_cli_no_overlap_async_tp(capsys):
    from phaze.cli import main

    base = ["evaluate", "--model", "gpt-22b", "--arch", "a100", "--tp", "8", "--pp", "1",
            "--dp", "1", "--mbs", "4", "--batch", "4", "--recompute", "full", "--json"]

    def run(*extra):
        assert main(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)

    on, off = run(), run("--no-overlap", "async_tp")
    assert off["time_per_batch_s"] > on["time_per_batch_s"]
    assert off["plan_options"]["async_tensor_model_parallel_allreduce"] is False
    on_2021 = run("--framework", "megatron-lm-2021", "--overlap", "async_tp")
    off_2021 = run("--framework", "megatron-lm-2021")
    assert on_2021["time_per_batch_s"] < off_2021["time_per_batch_s"]


def test_korthikanti_table4_layer_times_held_out():
    # one 22B layer (never fitted): the backward with the overlap lands within 3 % on every
    # experiment; without it the baseline backward is 5 % slow. The forward is 6-8 % slow
    # (docs/validate.md: the fitted per-kernel overhead weighs on the forward's small ops)
    from phaze.validate.layer_times import predict_layer_times

    rows = predict_layer_times()
    assert [r["experiment"] for r in rows] == ["baseline", "sp", "full", "selective",
                                               "selective_sp"]
    for r in rows:
        assert abs(r["err_backward_pct"]) <= 3.0, r
        assert 0.0 < r["err_forward_pct"] <= 10.0, r
    errs = [abs(r[k]) for r in rows for k in ("err_forward_pct", "err_backward_pct")]
    assert sum(errs) / len(errs) <= 5.0
    # the selective re-run (attention core) costs what the paper measured, 1.3 ms, within 15 %
    sel = {r["experiment"]: r for r in rows}
    core = sel["selective"]["pred_backward_ms"] - sel["baseline"]["pred_backward_ms"]
    assert core == pytest.approx(13.2 - 11.9, rel=0.15)
    # the same layer with the overlap switched off (as the 2021 code ran): the backward is
    # 4-6 % slow, the forward unchanged
    sync = predict_layer_times(options={"async_tensor_model_parallel_allreduce": False})
    assert sync[0]["err_backward_pct"] > 4.0
    assert sync[0]["pred_forward_ms"] == pytest.approx(rows[0]["pred_forward_ms"])


def test_nccl_channels_checked():
    from phaze.cost.params import CostParams

    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="nccl_channels"):
            CostParams(nccl_channels=bad)


def test_gradient_all_gather_a_dx_waits_for_stays_exposed():
    # Llama (no dropout) with SP: the backward all-gather of the row-parallel output's
    # gradient has no deps and feeds fc2's dX and dW; it cannot hide behind fc2.dX
    arch, prm = get_preset("a100"), default_cost_params(get_preset("a100"))
    g = build_graph(get_model("llama3-8b"), seq=2048, mbs=1, tp=8, sequence_parallel=True)
    ops = list(g.layers[1].bwd)
    lat = [float(x) for x in op_latencies(ops, arch, arch.network, tp=8, params=prm).lat_all_s[0]]
    got = async_tp_exposed(ops, lat, 0.22)
    for k, o in enumerate(ops):
        if o.kind == "collective" and any(o.name in p.deps and p.name.endswith(".dX") for p in ops):
            assert got[k] == lat[k], o.name          # a dX GEMM waits for it
    hidden = [o.name for k, o in enumerate(ops) if got[k] < lat[k]]
    assert any(n.endswith(".regather") for n in hidden)


def test_separate_qkv_and_gate_up_hide_behind_their_dw_gemms():
    # Llama's q/k/v (and gate/up) are separate linears in the graph: their dX sum (.gacc)
    # feeds the all-reduce, which hides behind the three (two) dW GEMMs as Megatron's
    # fused linear_qkv / linear_fc1 do
    arch, prm = get_preset("a100"), default_cost_params(get_preset("a100"))
    g = build_graph(get_model("llama3-8b"), seq=2048, mbs=1, tp=8)
    ops = list(g.layers[1].bwd)
    lat = [float(x) for x in op_latencies(ops, arch, arch.network, tp=8, params=prm).lat_all_s[0]]
    got = async_tp_exposed(ops, lat, 0.22)
    idx = {o.name: k for k, o in enumerate(ops)}
    for name, lin in (("attn.f.bwd", ("attn.q", "attn.k", "attn.v")),
                      ("mlp.f.bwd", ("mlp.gate", "mlp.up"))):
        k = idx[name]
        gemm = sum(lat[idx[f"{n}.dW"]] for n in lin)
        assert got[k] == pytest.approx(max(lat[k] - gemm, 0.22 * lat[k]))
        assert got[k] < lat[k]


def test_contention_outside_0_1_refused():
    with pytest.raises(ValueError, match="contention"):
        async_tp_exposed(_ops(), [1.0] * 8, 1.5)


def test_recorded_only_where_applied():
    # userbuffers replace it; a TPU or searched chip has no NCCL stream (nor eager CUDA
    # bias / LayerNorm kernels): the JSON says what was applied
    m = get_model("gpt-22b")
    kw = dict(tp=8, pp=1, dp=1, mbs=4, batch=4, recompute="full")
    ub = evaluate_model(m, get_preset("a100"), options={"tp_comm_overlap": True},
                        sequence_parallel=True, **kw)   # userbuffers need SP (Megatron-LM)
    assert ub["plan_options"]["async_tensor_model_parallel_allreduce"] is False
    tpu = evaluate_model(m, get_preset("tpuv4"), **kw)
    assert tpu["plan_options"]["async_tensor_model_parallel_allreduce"] is False
    assert "unfused_bias" not in tpu["graph_options"]
    gpu = evaluate_model(m, get_preset("a100"), **kw)
    assert gpu["graph_options"]["unfused_bias"] is True


def test_schedule_tables_refuse_gpu_kernel_graphs():
    from phaze.errors import UserError
    from phaze.sched.layers import graph_identity

    g = build_graph(get_model("gpt-1.7b"), seq=256, mbs=1, tp=1, unfused_bias=True)
    with pytest.raises(UserError, match="unfused_bias"):
        graph_identity(g)
    assert graph_identity(build_graph(get_model("gpt-1.7b"), seq=256, mbs=1, tp=1))
