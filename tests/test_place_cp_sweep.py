"""Context parallelism as an axis of the sweep: a graph of cp > 1 is one device's seq / cp
chunk (its attention core one ring step), the scheduling rows carry the core's time, and
the placement DP picks the best CP size like a TP width. Checked by second routes: the
chunk graph against the graph of the shorter sequence, the model FLOPs against cp 1,
the sweep's rows against the best of one DP run per CP size (a brute force over the axis)
and against `phaze evaluate --grid --cp`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from place_util import assert_best_of, cp_latency_tables, evaluate_row

from phaze.cli import main
from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.ops import is_attention_core
from phaze.model.serialize import graph_from_dict, graph_to_dict
from phaze.model.zoo import resolve_model

GiB = 2**30
NET = {"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 1.25e10,
       "intra_latency_s": 2e-6, "inter_latency_s": 5e-6}


def _ops(g):
    return [[o.to_dict() for o in layer.fwd + layer.bwd] for layer in g.layers]


@pytest.mark.parametrize("model", ["bert-large", "llama2-7b"])
def test_cp_graph_is_the_chunk_graph(model):
    spec = resolve_model(model)
    g = build_graph(spec, seq=512, mbs=2, tp=2, cp=4, attention="flash")
    chunk = build_graph(spec, seq=128, mbs=2, tp=2, attention="flash")
    assert _ops(g) == _ops(chunk)
    assert (g.seq, g.cp, g.tokens_per_device) == (512, 4, 128)
    # K and V of the chunk, bf16: 2 x mbs x 128 tokens x kv heads / tp x head dim x 2 B
    assert g.kv_bytes == 2 * 2 * 128 * (spec.n_kv_heads // 2) * spec.d_head * 2
    # Q and the output O of the chunk (an all-to-all CP's payload beside K and V)
    assert g.q_bytes == g.o_bytes == 2 * 128 * (spec.heads // 2) * spec.d_head * 2
    back = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    assert (back.cp, back.kv_bytes, back.seq) == (4, g.kv_bytes, 512)
    assert (back.q_bytes, back.o_bytes) == (g.q_bytes, g.o_bytes)


def test_mla_q_and_o_bytes_take_their_own_head_dims():
    # DeepSeek-V3's MLA: queries nope + rope (192) wide, the output v_head_dim (128)
    spec = resolve_model("deepseek-v3")
    g = build_graph(spec, seq=512, mbs=1, tp=8, cp=2, sequence_parallel=True, attention="flash")
    per = 256 * (spec.heads // 8) * 2
    assert (g.q_bytes, g.o_bytes) == (per * spec.qk_head_dim, per * spec.v_head_dim)
    assert (spec.qk_head_dim, spec.v_head_dim) == (192, 128)


def test_attention_core_is_every_query_key_op():
    """Eager attention's s x keys ops (scores, softmax, dropout, context) all repeat per
    ring step; the projections and the output dropout do not."""
    g = build_graph(resolve_model("gpt2-xl"), seq=256, tp=1)
    core = {o.name for o in g.layers[1].fwd if is_attention_core(o)}
    assert core == {"attn.scores", "attn.softmax", "attn.dropout", "attn.context"}
    flash = build_graph(resolve_model("llama2-7b"), seq=256, attention="flash")
    assert {o.name for o in flash.layers[1].bwd if is_attention_core(o)} == {"attn.core.bwd"}


def test_cp_must_split_the_sequence_in_2cp_chunks():
    spec = resolve_model("gpt2-xl")
    with pytest.raises(UserError) as e:
        build_graph(spec, seq=1000, cp=8, attention="flash")   # 16 does not divide 1000
    assert e.value.field == "cp"
    from phaze.configcheck import semantic_errors

    cfg = {"models": [{"name": "gpt2-xl", "seq": [1024], "tp": [1], "cp": [1, 2, 3]}],
           "graph": {"attention": "flash"}}
    errs = semantic_errors(cfg, check_grid=False)
    assert errs == [e for e in errs if "models[0].cp[2]" in e] and len(errs) == 1


def test_cp_needs_fused_attention_and_windows_off_the_p2p_ring():
    """Megatron-Core runs context parallelism through Transformer Engine's fused attention
    only (its own DotProductAttention asserts cp 1); a sliding window runs with the
    all-gather or all-to-all CP, not the p2p ring (TE asserts it); the config check says
    so before any job, naming models[i].cp[j]."""
    from phaze.configcheck import semantic_errors
    from phaze.model.graph import cp_comm_problem

    with pytest.raises(UserError) as e:
        build_graph(resolve_model("gpt2-xl"), seq=1024, cp=2)             # eager
    assert e.value.field == "attention"
    mistral = resolve_model("mistral-7b")
    build_graph(mistral, seq=32768, cp=2, attention="flash")
    assert "sliding" in cp_comm_problem(mistral, 32768, 1, 2, "p2p")
    assert cp_comm_problem(mistral, 32768, 1, 2, "allgather") is None
    assert cp_comm_problem(mistral, 32768, 1, 2, "a2a") is None
    assert cp_comm_problem(mistral, 4096, 1, 2, "p2p") is None     # window = seq: no band
    cfg = {"models": [{"name": "gpt2-xl", "seq": [1024], "tp": [1], "cp": [1, 2]}]}
    assert [e.split(":")[0] for e in semantic_errors(cfg, check_grid=False)] == \
        ["field models[0].cp[1]"]
    cfg = {"models": [{"name": "mistral-7b", "seq": [32768], "tp": [1], "cp": [1, 2]}],
           "graph": {"attention": "flash"}}
    err = semantic_errors(cfg, check_grid=False)
    assert [e.split(":")[0] for e in err] == ["field models[0].cp[1]"]
    assert "allgather or a2a" in err[0]
    cfg["placement"] = {"cp_comm_type": "allgather"}
    assert semantic_errors(cfg, check_grid=False) == []
    cfg = {"models": [{"name": "llama2-7b", "seq": [1032], "tp": [8], "cp": [2]}],
           "graph": {"attention": "flash", "sequence_parallel": True}}
    assert "tp 8 to divide the 516 tokens" in semantic_errors(cfg, check_grid=False)[0]


def _chain(g, params=None):
    from phaze.cost.api import op_latencies
    from phaze.hw.presets import get_preset
    from phaze.place.chain import chain_from_graph

    arch = get_preset("a100")
    memo = {}

    def lat(o):
        if o.name not in memo:
            memo[o.name] = float(op_latencies([o], arch, arch.network, tp=g.tp).lat_all_s[0][0])
        return memo[o.name]
    return chain_from_graph(g, op_latency_s=lat)


def test_model_flops_and_tokens_do_not_depend_on_cp():
    """The model FLOPs of a batch and its tokens are the model's, whatever the CP size: the
    ring's cp - 1 further core steps are counted (a device does 1/cp of the causal core)."""
    from phaze.place.plan import Links, PlanOptions, evaluate_plan

    spec = resolve_model("gpt2-xl")
    links = Links.of(__import__("phaze.hw.presets", fromlist=["x"]).get_preset("a100").network)
    got = {}
    for cp in (1, 2, 4):
        g = build_graph(spec, seq=1024, mbs=1, tp=1, cp=cp, attention="flash")
        plan = evaluate_plan(_chain(g), 2, 4, 64, "selective", links=links,
                             options=PlanOptions(cp=cp), peak_flops=312e12)
        got[cp] = plan
        assert plan["tokens_per_s"] == pytest.approx(64 * 1024 / plan["time_per_batch_s"])
        assert plan["devices"] == 2 * 4 * cp
    assert got[1]["cp_ring_s"] == 0
    from phaze.place.plan import axes_chain      # closed form on one stage: M x the ring
    ch = _chain(build_graph(spec, seq=1024, mbs=1, tp=1, cp=2, attention="flash"))
    one = evaluate_plan(ch, 1, 8, 64, "none", links=links, options=PlanOptions(cp=2))
    ring = axes_chain(ch, links, PlanOptions(cp=2)).extra["cp_ring_s"]
    assert one["cp_ring_s"] == pytest.approx(8 * ring.sum(), rel=1e-12)
    for cp in (2, 4):
        # the ring's further steps: part of compute_s, reported on their own
        assert 0 < got[cp]["cp_ring_s"] < got[cp]["compute_s"]
        assert got[cp]["model_flops"] == pytest.approx(got[1]["model_flops"], rel=1e-12)
        assert got[cp]["hardware_flops"] == pytest.approx(got[1]["hardware_flops"], rel=1e-12)


# ---------------------------------------------------------------- the sweep's stages
@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """The workflow's commands on gpt2-xl s1024 (cp 1 and 2) and one arch: graphs,
    scheduling, merged latency tables per CP size and together."""
    d = tmp_path_factory.mktemp("cp")
    cp_latency_tables(d, 1024, [2], json.dumps(NET))
    return d


def _place(d, cps, capsys, extra=()):
    out = d / f"place{''.join(map(str, cps))}{''.join(extra)}.parquet"
    args = [*("place", "--latency"), *[str(d / f"lat{c}.parquet") for c in cps],
            "--graphs", *[str(d / f"g{c}.json") for c in cps], "--grid", str(d / "grid.parquet"),
            "--devices", "64", "--batch", "256", "--hbm-gib", "0.9,1,2,4,32",
            "--recompute", "none,full", "--optimizer", "adam", "--interleave", "1",
            "--network", json.dumps(NET), "-o", str(out), *extra]
    assert main(args) == 0
    capsys.readouterr()
    return pd.read_parquet(out).set_index(["hbm_bytes", "recompute"]).sort_index()


def test_latency_rows_carry_the_core_time(stages):
    from phaze.hw.grid import read_grid
    from phaze.model.serialize import load_graph
    from phaze.sched.adapter import SCHED_PASSES, attention_core_times

    grid = read_grid(str(stages / "grid.parquet"))
    for cp in (1, 2):
        lat = pd.read_parquet(stages / f"lat{cp}.parquet").sort_values("layer_index")
        assert (lat["cp"] == cp).all() and (lat["seq"] == 1024).all()
        cols = [f"{p}_core_s" for p in SCHED_PASSES]
        want = attention_core_times(load_graph(stages / f"g{cp}.json"), grid, None)[0]
        if cp == 1:       # no ring: nothing reads it, nothing is computed
            assert (lat[cols].to_numpy() == 0).all()
            continue
        np.testing.assert_allclose(lat[cols].to_numpy(), want, rtol=1e-12)
        block = lat[lat.layer_kind == "block"].iloc[0]
        assert 0 < block["fwd_core_s"] < block["fwd_s"] and block["bwd_core_s"] > 0


def test_the_dp_picks_the_best_cp_size(stages, capsys):
    """Rows of the sweep over cp 1 and 2 = per (HBM, recompute) the better of the runs
    on each CP size alone; CP 2 wins somewhere (it halves the activations)."""
    both, one, two = (_place(stages, c, capsys) for c in ((1, 2), (1,), (2,)))
    assert set(both["cp"].dropna()) <= {1, 2}
    assert_best_of(both, [one, two], "cp")
    assert (both["cp"] == 2).any()
    # the tightest HBM only fits with the sequence split (cp 1 runs out of memory)
    tight = (0.9 * GiB, "full")
    assert not one.loc[tight, "feasible"] and both.loc[tight, "feasible"]
    assert both.loc[tight, "cp"] == 2


def test_evaluate_reproduces_the_cp_rows(stages, capsys):
    both = _place(stages, (1, 2), capsys)
    arch = str(pd.read_parquet(stages / "grid.parquet")["arch_id"].iloc[0])
    ok = both[both["feasible"]]
    assert len(ok) >= 4
    flags = ["--model", "gpt2-xl", "--seq", "1024", "--grid", str(stages / "grid.parquet"),
             "--mbs", "1", "--batch", "256", "--optimizer", "adam", "--fused", "--attention",
             "flash", "--network", json.dumps(NET), "--cache", str(stages / "cache")]
    for (hbm, rec), r in ok.iterrows():
        got = evaluate_row(r, arch, hbm, rec, flags, capsys)
        assert got["cp"] == r.cp and got["tokens_per_s"] == pytest.approx(r.tokens_per_s)


def test_cp_comm_type_reaches_the_dp_and_evaluate_reproduces_it(stages, capsys):
    """--cp-comm-type (placement.cp_comm_type) in the sweep's DP: the allgather rows on
    cp 2 are slower than the ring's (their K, V all-gathers are exposed), cp 1 rows are the
    same, and `phaze evaluate --grid --cp-comm-type allgather` gives each row's figures."""
    ring = _place(stages, (2,), capsys)
    ag = _place(stages, (2,), capsys, ("--cp-comm-type", "allgather"))
    ok = ag[ag["feasible"] & ring["feasible"]]
    assert len(ok) >= 2
    assert (ok["time_per_batch_s"] > ring.loc[ok.index, "time_per_batch_s"]).all()
    assert (ag.loc[ok.index, "cp"] == 2).all()
    arch = str(pd.read_parquet(stages / "grid.parquet")["arch_id"].iloc[0])
    flags = ["--model", "gpt2-xl", "--seq", "1024", "--grid", str(stages / "grid.parquet"),
             "--mbs", "1", "--batch", "256", "--optimizer", "adam", "--fused", "--attention",
             "flash", "--network", json.dumps(NET), "--cache", str(stages / "cache"),
             "--cp-comm-type", "allgather"]
    for (hbm, rec), r in ok.iterrows():
        got = evaluate_row(r, arch, hbm, rec, flags, capsys)
        assert got["plan_options"]["cp_comm_type"] == "allgather"


def test_all_gather_is_transformer_engines_spelling_of_allgather(tmp_path, capsys):
    """Transformer Engine's attn_forward_func_with_cp takes "all_gather" (it raises
    "Unsupported communication type" on "allgather"), the spelling Megatron-Core's
    TransformerConfig.cp_comm_type documents and passes through: phaze takes it as
    allgather in PlanOptions, placement.cp_comm_type (check-config) and --cp-comm-type."""
    import yaml

    from phaze.place.plan import PlanOptions
    from phaze.settings import PlacementSettings

    assert PlanOptions(cp_comm_type="all_gather").cp_comm_type == "allgather"
    assert PlacementSettings(cp_comm_type="all_gather").cp_comm_type == "allgather"
    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "default.yaml").read_text())
    cfg["placement"]["cp_comm_type"] = "all_gather"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["check-config", "--config", str(path)]) == 0
    capsys.readouterr()
    base = ["evaluate", "--model", "llama2-7b", "--arch", "h100", "--framework",
            "megatron-core-2024", "--tp", "2", "--pp", "1", "--dp", "1", "--mbs", "1",
            "--batch", "4", "--seq", "8192", "--cp", "2", "--recompute", "selective", "--json"]
    got = {}
    for name in ("allgather", "all_gather"):
        assert main(base + ["--cp-comm-type", name]) == 0
        got[name] = json.loads(capsys.readouterr().out)
    assert got["all_gather"]["plan_options"]["cp_comm_type"] == "allgather"
    assert got["all_gather"]["time_per_batch_s"] == got["allgather"]["time_per_batch_s"]


def test_hierarchical_cp_in_the_sweep_is_its_two_ends(stages, capsys):
    """--cp-comm-type a2a+p2p with --cp-a2a-size A in the sweep's DP: on cp 2 with A = 1 it
    is the p2p ring, row for row, and `phaze evaluate --grid` with the same flags gives
    each row; A = 2 (the all-to-all CP) cannot split gpt2-xl's 25 heads, refused in one line
    as a2a is; check-config refuses a size that does not divide a model's cp, and a2a+p2p
    without one."""
    from phaze.configcheck import semantic_errors

    hier = _place(stages, (2,), capsys, ("--cp-comm-type", "a2a+p2p", "--cp-a2a-size", "1"))
    ref = _place(stages, (2,), capsys, ("--cp-comm-type", "p2p"))
    pd.testing.assert_series_equal(hier["time_per_batch_s"], ref["time_per_batch_s"],
                                   rtol=1e-12)
    args = ["place", "--latency", str(stages / "lat2.parquet"), "--graphs",
            str(stages / "g2.json"), "--grid", str(stages / "grid.parquet"), "--devices", "64",
            "--batch", "256", "--network", json.dumps(NET), "-o", str(stages / "no.parquet"),
            "--cp-comm-type", "a2a+p2p", "--cp-a2a-size", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "must divide the 25 query heads" in err and len(err.strip().splitlines()) == 1
    ok = hier[hier["feasible"]]
    assert len(ok) >= 2
    arch = str(pd.read_parquet(stages / "grid.parquet")["arch_id"].iloc[0])
    flags = ["--model", "gpt2-xl", "--seq", "1024", "--grid", str(stages / "grid.parquet"),
             "--mbs", "1", "--batch", "256", "--optimizer", "adam", "--fused", "--attention",
             "flash", "--network", json.dumps(NET), "--cache", str(stages / "cache"),
             "--cp-comm-type", "a2a+p2p", "--cp-a2a-size", "1"]
    for (hbm, rec), r in ok.iterrows():
        got = evaluate_row(r, arch, hbm, rec, flags, capsys)
        assert got["plan_options"]["cp_a2a_size"] == 1
    cfg = {"models": [{"name": "llama3-8b", "seq": [8192], "tp": [1], "cp": [1, 2, 4]}],
           "graph": {"attention": "flash"},
           "placement": {"cp_comm_type": "a2a+p2p", "cp_a2a_size": 4}}
    err = semantic_errors(cfg, check_grid=False)
    assert [e.split(":")[0] for e in err] == ["field models[0].cp[1]"] and "divide cp = 2" in err[0]
    cfg["placement"] = {"cp_comm_type": "a2a+p2p"}
    assert any("cp_a2a_size" in e for e in semantic_errors(cfg, check_grid=False))


def test_schedule_reproduces_the_cp_latency_rows(stages, capsys):
    """`phaze schedule` is the latency table's second route for a flash, cp 2 graph: the
    same layer times per layer (the ILP cache answers; a review found it could only build
    eager graphs)."""
    lat = pd.read_parquet(stages / "lat2.parquet").set_index("layer_index").sort_index()
    arch = str(lat["arch_id"].iloc[0])
    assert main(["schedule", "--model", "gpt2-xl", "--seq", "1024", "--mbs", "1", "--tp", "1",
                 "--cp", "2", "--attention", "flash", "--fused", "--arch", arch, "--grid",
                 str(stages / "grid.parquet"), "--network", json.dumps(NET), "--cache",
                 str(stages / "cache"), "--time-limit", "2", "--bnb-share", "0.5",
                 "--json"]) == 0
    got = {x["index"]: x for x in json.loads(capsys.readouterr().out)["layers"]}
    assert set(got) == set(lat.index)
    for li, row in lat.iterrows():
        for p in ("fwd_s", "bwd_s", "recompute_s"):
            assert got[li][p] == pytest.approx(row[p], rel=1e-12), (li, p)
