"""Sliding-window attention: the causal band a fused kernel computes, and context
parallelism for windowed and sink models as Transformer Engine runs it (all-gather and
all-to-all CP; the p2p ring refuses windows, sinks run only all-to-all)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from phaze.cost.api import flash_work_fraction, op_latencies
from phaze.cost.params import CostParams
from phaze.errors import UserError
from phaze.hw.presets import get_preset
from phaze.model.graph import (attention_band, build_graph, cp_comm_problem, cp_core_flop_steps,
                               cp_core_steps)
from phaze.model.ops import GemmDims, Op, is_attention_core
from phaze.model.zoo import resolve_model


def _band_brute(s: int, w: int) -> int:
    """Score elements of a causal mask with a window of w keys (each query i sees keys
    i - w < j <= i), counted one by one."""
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    return int(((j <= i) & (j > i - w)).sum())


@pytest.mark.parametrize("s,w", [(256, 0), (256, 256), (256, 100), (256, 16), (96, 95)])
def test_attention_band_against_the_mask(s, w):
    # the closed form drops the diagonal's half: within w / 2 of the count
    exact = _band_brute(s, w or s)
    assert abs(attention_band(s, w) - exact) <= (w or s) / 2 + 1e-9
    assert attention_band(s, w, causal=False) == s * s


def test_flash_work_fraction():
    p = CostParams(flash_causal=True)
    op = lambda m, n: Op(name="attn.core", kind="gemm", gemm=GemmDims(8, m, n, 64), flops=1.0)
    assert flash_work_fraction(op(4096, 4096), p) == 0.5
    assert flash_work_fraction(op(4096, 512), p) == pytest.approx(1 - 512 / 8192)
    assert flash_work_fraction(op(4096, 4096), replace(p, flash_causal=False)) == 1.0


def test_sliding_core_costs_its_band():
    """With the size terms off, a sliding-window core costs its band against the full
    core's triangle: s w - w^2/2 over s^2/2 (before: half the band, s w / 2)."""
    arch = get_preset("h100")
    p = CostParams(flash_causal=True, flash_fwd_efficiency=0.6, flash_bwd_efficiency=0.5,
                   flash_key_overhead=0, flash_head_dim_overhead=0)
    spec = resolve_model("mistral-7b")
    s, w = 16384, spec.sliding_window
    g = build_graph(spec, seq=s, mbs=1, tp=1, attention="flash")
    full = build_graph(replace(spec, sliding_window=0), seq=s, mbs=1, tp=1, attention="flash")
    for pass_ in ("fwd", "bwd"):
        lat = [op_latencies([o], arch, arch.network, params=p).lat_all_s[0][0]
               for gr in (g, full) for o in gr.layers[1].ops(pass_) if is_attention_core(o)]
        assert lat[0] / lat[1] == pytest.approx(attention_band(s, w) / attention_band(s, s),
                                                rel=1e-9)


def test_cp_core_steps_closed_forms():
    assert cp_core_steps(8192, 4) == pytest.approx(4.0)             # the triangle: cp
    assert cp_core_flop_steps(8192, 4) == pytest.approx(4.0)
    # Gemma-2's window is half the sequence: (8192 x 4096 - 4096^2/2) / 2 over 4096^2 / 2
    assert cp_core_steps(8192, 2, 4096) == pytest.approx(1.5)
    assert cp_core_flop_steps(8192, 2, 4096) == pytest.approx(1.0)   # 8192 x 4096 / 2 / 4096^2
    # a window far shorter than the chunk: nearly one core, the band's corner aside
    w, s, cp = 128, 32768, 4
    assert cp_core_steps(s, cp, w) == pytest.approx((s * w - w * w / 2) / cp
                                                    / (s / cp * w - w * w / 2))
    assert 1.0 < cp_core_steps(s, cp, w) < 1.01
    assert cp_core_flop_steps(s, cp, w) == 1.0
    assert cp_core_steps(s, 1, w) == 1.0
    # the all-gather CP's busiest device: Gemma-2's chunks 1 and 2 of 4, 1.75 cores
    assert cp_core_steps(8192, 2, 4096, busiest=True) == pytest.approx(1.75)
    assert cp_core_steps(8192, 4, busiest=True) == pytest.approx(4.0)


@pytest.mark.parametrize("s,cp,w", [(64, 2, 24), (96, 3, 40), (64, 2, 64), (128, 4, 8)])
def test_busiest_device_of_the_chunked_split_against_the_mask(s, cp, w):
    """The all-gather CP's busiest device (its two chunks of the load-balanced split) and
    the balanced share, against the mask's elements counted per device; the closed form
    drops each chunk's diagonal half: within c / 2 per chunk."""
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    mask = (j <= i) & (j > i - w)
    c = s // (2 * cp)
    per_chunk = [int(mask[k * c:(k + 1) * c].sum()) for k in range(2 * cp)]
    busiest = max(per_chunk[r] + per_chunk[2 * cp - 1 - r] for r in range(cp))
    local = attention_band(s // cp, w)
    assert abs(cp_core_steps(s, cp, w, busiest=True) * local - busiest) <= c + 1e-9
    assert abs(cp_core_steps(s, cp, w) * local - mask.sum() / cp) <= c + 1e-9
    if w >= s:      # the triangle splits evenly: cp either way
        assert cp_core_steps(s, cp, w, busiest=True) == pytest.approx(cp)


def test_cp_comm_problem_matrix():
    mistral, oss, llama = (resolve_model(m) for m in ("mistral-7b", "gpt-oss-20b", "llama3-8b"))
    assert "sliding" in cp_comm_problem(mistral, 32768, 1, 2, "p2p")
    assert cp_comm_problem(mistral, 32768, 1, 2, "all_gather") is None     # Megatron's alias
    for kind in ("p2p", "allgather"):
        assert cp_comm_problem(oss, 8192, 1, 2, kind)                     # sinks: a2a only
    assert cp_comm_problem(oss, 8192, 1, 2, "a2a") is None
    assert "heads" in cp_comm_problem(oss, 8192, 8, 2, "a2a")             # 1 kv head per rank
    for kind in ("p2p", "allgather", "a2a"):
        assert cp_comm_problem(llama, 8192, 1, 2, kind) is None
        assert cp_comm_problem(mistral, 32768, 1, 1, kind) is None        # no CP


@pytest.mark.parametrize("model,seq,kind", [("mistral-7b", 16384, "allgather"),
                                            ("mistral-7b", 16384, "a2a"),
                                            ("gpt-oss-20b", 8192, "a2a")])
def test_windowed_cp_through_evaluate(model, seq, kind):
    """phaze evaluate's route against the closed form: the model FLOPs of a batch do not
    depend on cp, and the CP time of a windowed model is its layers' further cores
    (cp_core_steps - 1 each, a full layer's cp - 1) plus the communication, which is the
    same as for the model without its window (same K, V, Q, O bytes)."""
    from phaze.place.evaluate import default_cost_params, evaluate_model

    arch = get_preset("h100")
    p = replace(default_cost_params(arch), flash_causal=True)
    kw = dict(tp=1, pp=1, dp=2, mbs=1, batch=8, recompute="none", seq=seq,
              framework="megatron-core-2024")
    M = 8 // 2           # microbatches on the one stage

    def further_cores(spec):
        g = build_graph(spec, seq=seq, mbs=1, tp=1, cp=2, attention="flash")
        total = 0.0
        for lg in g.layers:
            lat = [op_latencies([o], arch, arch.network, params=p).lat_all_s[0][0]
                   for ps in ("fwd", "bwd") for o in lg.ops(ps) if is_attention_core(o)]
            steps = cp_core_steps(seq, 2, lg.attention_window, busiest=kind == "allgather")
            total += lg.repeat * (steps - 1) * sum(lat)
        return M * total, {lg.attention_window for lg in g.layers if lg.kind.startswith("block")}

    spec = resolve_model(model)
    bare = replace(spec, sliding_window=0, layer_types=())
    one = evaluate_model(spec, arch, cp=1, **kw)
    two = evaluate_model(spec, arch, cp=2, options={"cp_comm_type": kind}, **kw)
    ref = evaluate_model(bare, arch, cp=2, options={"cp_comm_type": kind}, **kw)
    assert two["model_flops"] == pytest.approx(one["model_flops"], rel=1e-9)
    cores, windows = further_cores(spec)
    bare_cores, bare_windows = further_cores(bare)
    assert windows == {spec.sliding_window} | ({0} if model == "gpt-oss-20b" else set())
    assert bare_windows == {0}
    comm = ref["cp_ring_s"] - bare_cores
    assert comm > 0
    assert two["cp_ring_s"] == pytest.approx(cores + comm, rel=1e-9)
    assert cores < bare_cores        # a band grows with the sequence only linearly


def test_p2p_ring_refuses_a_window_with_one_line():
    from phaze.place.evaluate import evaluate_model

    with pytest.raises(UserError) as e:
        evaluate_model(resolve_model("mistral-7b"), get_preset("h100"), tp=1, pp=1, dp=2, mbs=1,
                       batch=8, recompute="none", seq=16384, cp=2,
                       framework="megatron-core-2024", options={"cp_comm_type": "p2p"})
    assert e.value.field == "--cp-comm-type" and "allgather or a2a" in e.value.fix


def test_window_survives_the_graph_file(tmp_path):
    """The sweep's route: `phaze graph` writes the blocks' windows, the placement stage's
    chain reads them back (the same core steps as the graph in memory)."""
    from phaze.model.serialize import load_graph, save_graph
    from phaze.place.chain import chain_from_graph

    g = build_graph(resolve_model("gpt-oss-20b"), seq=8192, mbs=1, tp=1, cp=2, attention="flash")
    save_graph(g, tmp_path / "g.json")
    back = load_graph(tmp_path / "g.json")
    assert [lg.attention_window for lg in back.layers] == [lg.attention_window for lg in g.layers]
    lat = lambda o: 1e-6
    for causal in (False, True):
        a, b = (chain_from_graph(x, op_latency_s=lat, causal_cores=causal) for x in (g, back))
        for key in ("cp_core_steps", "cp_core_flop_steps"):
            assert np.array_equal(a.extra[key], b.extra[key])
        band = cp_core_steps(8192, 2, 128) if causal else cp_core_flop_steps(8192, 2, 128)
        assert sorted(set(a.extra["cp_core_steps"])) == pytest.approx([band, 2.0])


# ------------------------------------------------------------------ the sweep's route
SMALL_MISTRAL = {"model_type": "mistral", "hidden_size": 256, "num_hidden_layers": 4,
                 "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 512,
                 "vocab_size": 1024, "max_position_embeddings": 4096, "sliding_window": 128,
                 "hidden_act": "silu", "tie_word_embeddings": False}
NET = {"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 1.25e10,
       "intra_latency_s": 2e-6, "inter_latency_s": 5e-6}


def test_windowed_cp_through_the_sweep_stages(tmp_path, capsys):
    """graph -> schedule -> merge -> place with cp 2 and cp_comm_type allgather on a
    sliding-window model (window 128 < the 512-token chunk), every feasible row reproduced
    by `phaze evaluate --grid`; the p2p ring's placement refuses the graph in one line."""
    import json

    import pandas as pd
    from place_util import evaluate_row

    from phaze.cli import main

    d, cfg = tmp_path, tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL_MISTRAL))
    assert main(["arch", "grid", "--spec", json.dumps(
        {"n_tc": [4], "n_vc": [4], "tc_rows": [64], "tc_cols": [64], "glb_mib": [8],
         "clock_hz": [1.05e9], "hbm_bw_Bps": [1.2e12],
         "area": {"a_max_mm2": "tpuv4", "min_frac": 0.0, "keep_single_core": "all"}}),
        "-o", str(d / "grid.parquet")]) == 0
    g = str(d / "g2.json")
    assert main(["graph", "--model", str(cfg), "--seq", "1024",
                 "--mbs", "1", "--tp", "1", "--cp", "2", "--fused", "--attention", "flash",
                 "-o", g]) == 0
    net = json.dumps(NET)
    assert main(["schedule-batch", "--graphs", g, "--grid", str(d / "grid.parquet"), "--chunk",
                 "0", "--n-chunks", "1", "--network", net, "--solver", "auto", "--formulation",
                 "compact", "--time-limit", "2", "--bnb-share", "0.5", "--cache",
                 str(d / "cache"), "-o", str(d / "shard.parquet")]) == 0
    assert main(["merge-latency", str(d / "shard.parquet"), "--grid", str(d / "grid.parquet"),
                 "--n-chunks", "1", "-o", str(d / "lat.parquet")]) == 0
    capsys.readouterr()
    place = ["place", "--latency", str(d / "lat.parquet"), "--graphs", g, "--grid",
             str(d / "grid.parquet"), "--devices", "8", "--batch", "16", "--hbm-gib", "1,32",
             "--recompute", "none", "--optimizer", "adam", "--interleave", "1", "--network",
             net, "-o", str(d / "place.parquet")]
    assert main(place + ["--cp-comm-type", "p2p"]) == 2
    err = capsys.readouterr().err
    assert "sliding-window" in err and "allgather or a2a" in err and len(err.strip().splitlines()) == 1
    assert not (d / "place.parquet").exists()
    assert main(place + ["--cp-comm-type", "allgather"]) == 0
    capsys.readouterr()
    table = pd.read_parquet(d / "place.parquet")
    # how the rows were obtained: the graphs' own options (place has no graph flags)
    assert table.attrs["phaze"]["graph"]["attention"] == "flash"
    assert table.attrs["phaze"]["placement"]["cp_comm_type"] == "allgather"
    rows = table.set_index(["hbm_bytes", "recompute"])
    ok = rows[rows["feasible"]]
    assert len(ok) >= 1 and (ok["cp"] == 2).all()
    arch = str(pd.read_parquet(d / "grid.parquet")["arch_id"].iloc[0])
    flags = ["--model", str(cfg), "--seq", "1024", "--grid",
             str(d / "grid.parquet"), "--mbs", "1", "--batch", "16", "--optimizer", "adam",
             "--fused", "--attention", "flash", "--network", net, "--cache", str(d / "cache"),
             "--cp-comm-type", "allgather"]
    for (hbm, rec), r in ok.iterrows():
        got = evaluate_row(r, arch, hbm, rec, flags, capsys)
        assert got["plan_options"]["cp_comm_type"] == "allgather" and got["cp_ring_s"] > 0


def test_cp_steps_follow_the_cost_convention():
    """The sweep's cost model charges an attention core its whole queries x keys rectangle
    (CostParams.flash_causal off), the GPU presets its causal band: a device's share of a
    windowed layer under CP costs 1/cp of its cp = 1 time either way (found by a review:
    the band's steps on rectangle costs gave 0.75 for Gemma-2's window at cp 2)."""
    from phaze.hw.presets import get_preset
    from phaze.place.chain import chain_from_graph
    from phaze.sched.adapter import attention_core_times

    arch, spec, seq = get_preset("h100"), resolve_model("gemma2-9b"), 8192

    def per_device(cp, causal):
        g = build_graph(spec, seq=seq, cp=cp, attention="flash", fused=True)
        if causal:
            p = CostParams(flash_causal=True, flash_fwd_efficiency=0.6, flash_bwd_efficiency=0.5,
                           flash_key_overhead=0, flash_head_dim_overhead=0)
            t = np.array([[sum(op_latencies([o], arch, arch.network, params=p).lat_all_s[0][0]
                               for o in lg.ops(ps) if is_attention_core(o))
                           for ps in ("fwd", "bwd")] for lg in g.layers])
        else:
            t = attention_core_times(g, arch, arch.network)[0][:, :2]
        ch = chain_from_graph(g, op_latency_s=lambda o: 0.0, causal_cores=causal)
        steps = {}
        for i, lg in enumerate(g.layers):
            if lg.kind.startswith("block"):
                at = sum(lgg.repeat for lgg in g.layers[:i])
                steps[lg.attention_window] = t[i].sum() * ch.extra["cp_core_steps"][at]
        return steps

    for causal in (False, True):
        one, two = per_device(1, causal), per_device(2, causal)
        assert set(one) == {0, 4096}
        for w in one:
            assert two[w] / one[w] == pytest.approx(0.5, rel=0.02), (causal, w)
