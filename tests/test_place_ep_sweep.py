"""Expert parallelism as part of a graph's identity: an MoE graph built for ep groups its
routed-expert GEMMs per local expert (E / ep GEMMs each, Transformer Engine's
GroupedLinear), so its layer times depend on ep. The sweep builds one graph per ep of the
placement's ep axis that divides the experts (ep in sched.table.GRAPH_KEY) and the DP
searches each at its own ep only. Checked by second routes: the sweep's rows (`phaze
place`, the in-process search) against `phaze evaluate --grid --ep` and evaluate_plan on a
chain built with the row's ep; before, every ep was costed with the times of one GEMM of
all experts (ep 0), up to a third larger at ep 1."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from place_util import assert_best_of, evaluate_row

from phaze.cli import main
from phaze.errors import UserError
from phaze.model.graph import build_graph, graph_eps
from phaze.model.zoo import resolve_model

GiB = 2**30
NET = {"devices_per_node": 8, "intra_bw_Bps": 1e11, "inter_bw_Bps": 1.25e10,
       "intra_latency_s": 2e-6, "inter_latency_s": 5e-6}
# a Mixtral-like MoE small enough for exact ILPs in a second: 4 experts, top 2
TINY_MOE = {"model_type": "mixtral", "hidden_size": 512, "num_hidden_layers": 4,
            "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 1024,
            "vocab_size": 2048, "max_position_embeddings": 1024, "hidden_act": "silu",
            "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None,
            "tie_word_embeddings": False}
EPS = (0, 1, 2, 4)          # 0: the graph without ep (one GEMM of all experts)
PLACE = ["--devices", "32", "--batch", "128", "--hbm-gib", "0.05,0.1,32",
         "--recompute", "none,full", "--optimizer", "adam", "--interleave", "1"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """The workflow's commands on the tiny MoE (seq 128, two archs), one graph, scheduling
    shard and merged latency table per ep of EPS."""
    d = tmp_path_factory.mktemp("ep")
    (d / "moe.json").write_text(json.dumps(TINY_MOE))
    assert main(["arch", "grid", "--spec", json.dumps(
        {"n_tc": [1, 2], "n_vc": [2], "tc_rows": [64], "tc_cols": [64], "glb_mib": [8],
         "clock_hz": [1.05e9], "hbm_bw_Bps": [1.2e12],
         "area": {"a_max_mm2": "tpuv4", "min_frac": 0.0, "keep_single_core": "all"}}),
                 "-o", str(d / "grid.parquet")]) == 0
    for ep in EPS:
        g = str(d / f"g{ep}.json")
        assert main(["graph", "--model", str(d / "moe.json"), "--name", "tiny-moe", "--seq",
                     "128", "--mbs", "1", "--tp", "1", "--ep", str(ep), "--fused",
                     "--attention", "flash", "-o", g]) == 0
        assert main(["schedule-batch", "--graphs", g, "--grid", str(d / "grid.parquet"),
                     "--chunk", "0", "--n-chunks", "1", "--network", json.dumps(NET),
                     "--solver", "auto", "--formulation", "compact", "--time-limit", "2",
                     "--bnb-share", "0.5", "--cache", str(d / "cache"),
                     "-o", str(d / f"shard{ep}.parquet")]) == 0
        assert main(["merge-latency", str(d / f"shard{ep}.parquet"), "--grid",
                     str(d / "grid.parquet"), "--n-chunks", "1", "-o",
                     str(d / f"lat{ep}.parquet")]) == 0
    return d


def _place(d, graph_eps_, search_eps, capsys, code=0):
    out = d / f"place{''.join(map(str, graph_eps_))}_{''.join(map(str, search_eps))}.parquet"
    args = ["place", "--latency", *[str(d / f"lat{e}.parquet") for e in graph_eps_],
            "--graphs", *[str(d / f"g{e}.json") for e in graph_eps_],
            "--grid", str(d / "grid.parquet"), *PLACE,
            "--ep", ",".join(map(str, search_eps)), "--network", json.dumps(NET), "-o", str(out)]
    assert main(args) == code
    if code:
        return capsys.readouterr().err
    capsys.readouterr()
    return pd.read_parquet(out).set_index(["arch_id", "hbm_bytes", "recompute"]).sort_index()


def test_graph_eps_of_the_sweep():
    moe, dense = resolve_model("mixtral-8x7b"), resolve_model("bert-large")
    assert graph_eps(dense, (1, 2, 4)) == (0,)
    assert graph_eps(moe, (1, 3, 2, 8, 16)) == (1, 2, 8)       # 3 and 16 do not divide 8
    with pytest.raises(UserError, match="placement.ep: none of the expert-parallel sizes "
                                        r"\[3, 16\] divides mixtral-8x7b's 8") as e:
        graph_eps(moe, (3, 16))
    assert "1, 2, 4, 8" in e.value.fix


def test_ep_is_part_of_the_graph_identity(stages, capsys):
    from phaze.model.serialize import load_graph
    from phaze.sched.layers import graph_identity
    from phaze.sched.table import GRAPH_KEY

    assert "ep" in GRAPH_KEY
    for ep in EPS:
        g = load_graph(stages / f"g{ep}.json")
        assert g.ep == ep and graph_identity(g)["ep"] == ep
        assert (pd.read_parquet(stages / f"lat{ep}.parquet")["ep"] == ep).all()
    # a dense model's graph has no ep, whatever is asked
    assert build_graph(resolve_model("bert-large"), seq=128, ep=4).ep == 0
    # a table written before ep joined the key is refused, naming the column
    old = pd.read_parquet(stages / "lat1.parquet").drop(columns=["ep"])
    old.to_parquet(stages / "old.parquet")
    args = ["place", "--latency", str(stages / "old.parquet"), "--graphs",
            str(stages / "g1.json"), "--grid", str(stages / "grid.parquet"), *PLACE,
            "--network", json.dumps(NET), "-o", str(stages / "never.parquet")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "missing column 'ep'" in err and "regenerate" in err and len(err.splitlines()) == 1
    shard = pd.read_parquet(stages / "shard1.parquet").drop(columns=["ep"])
    shard.to_parquet(stages / "old_shard.parquet")
    assert main(["merge-latency", str(stages / "old_shard.parquet"), "--grid",
                 str(stages / "grid.parquet"), "--n-chunks", "1", "-o",
                 str(stages / "never.parquet")]) == 2
    assert "missing column 'ep'" in capsys.readouterr().err


def test_layer_times_depend_on_ep(stages):
    """What makes the identity matter: one GEMM of all experts (ep 0) is faster than one
    per expert (ep 1), and equal to ep = experts (one local expert)."""
    lat = {ep: pd.read_parquet(stages / f"lat{ep}.parquet").set_index(["arch_id", "layer_index"])
           for ep in EPS}
    block = lat[0]["layer_kind"] == "block"
    assert (lat[1].loc[block, "fwd_s"] > 1.1 * lat[0].loc[block, "fwd_s"]).all()
    assert (lat[4]["fwd_s"] == lat[0]["fwd_s"]).all()
    assert (lat[1].loc[~block, "fwd_s"] == lat[0].loc[~block, "fwd_s"]).all()


def test_the_dp_searches_each_graph_at_its_own_ep(stages, capsys):
    """Rows of the sweep over ep 1, 2, 4 (a graph each) = per (arch, HBM, recompute) the
    best of the runs on each ep's graph alone; each row's ep is its graph's."""
    both = _place(stages, (1, 2, 4), (1, 2, 4), capsys)
    alone = {ep: _place(stages, (ep,), (ep,), capsys) for ep in (1, 2, 4)}
    assert set(both["ep"].dropna()) <= {1, 2, 4}
    assert_best_of(both, list(alone.values()), "ep")
    for ep in (1, 2, 4):
        assert (alone[ep].loc[alone[ep]["feasible"], "ep"] == ep).all()


def test_evaluate_reproduces_the_ep_rows(stages, capsys):
    """`phaze evaluate --grid --ep E` (a graph built for E) gives each row's time and memory,
    at ep 1 and above; the rows of the old route (the ep-0 graph searched at ep 1) do not."""
    rows = pd.concat([_place(stages, (ep,), (ep,), capsys) for ep in (1, 2)])
    old = _place(stages, (0,), (1,), capsys)
    ok = rows[rows["feasible"]]
    assert set(ok["ep"]) == {1, 2} and len(ok) >= 8
    flags = ["--model", str(stages / "moe.json"), "--seq", "128",
             "--grid", str(stages / "grid.parquet"), "--mbs", "1", "--batch", "128",
             "--devices", "32", "--optimizer", "adam", "--fused", "--attention", "flash",
             "--network", json.dumps(NET), "--cache", str(stages / "cache")]
    off = 0
    for (arch, hbm, rec), r in ok.iterrows():
        assert evaluate_row(r, arch, hbm, rec, flags, capsys)["ep"] == r.ep
        if r.ep == 1 and old.loc[(arch, hbm, rec), "feasible"]:
            off += old.loc[(arch, hbm, rec), "time_per_batch_s"] < 0.99 * r.time_per_batch_s
    assert off >= 1, "the ep-0 graph's times should differ: the check could not fail"


def test_a_chain_runs_only_its_own_ep(stages, capsys):
    """evaluate_plan and the DP refuse an ep other than the one the chain's graph was built
    for (ep 0: any); `phaze place` refuses a graph of an ep it does not search."""
    from phaze.model.serialize import load_graph
    from phaze.place.chain import chain_from_graph
    from phaze.place.dp import best_plans
    from phaze.place.plan import PlanOptions, evaluate_plan

    def chain(ep):
        g = load_graph(stages / f"g{ep}.json")
        return chain_from_graph(g, layer_latency={li: (1e-3, 2e-3, 0.0)
                                                  for li in range(len(g.layers))})

    two = chain(2)
    assert two.extra["ep"] == 2 and chain(0).extra["ep"] == 0
    assert evaluate_plan(two, 2, 4, 64, options=PlanOptions(ep=2))["feasible"]
    with pytest.raises(ValueError, match="chain built with ep 2 .* options say ep 1"):
        evaluate_plan(two, 2, 4, 64, options=PlanOptions(ep=1))
    with pytest.raises(ValueError, match="chain built with ep 2 .* options say ep 4"):
        evaluate_plan(two, 1, 2, 64, options=PlanOptions(ep=4))   # an infeasible grid too
    for ep in (1, 2, 4):
        assert evaluate_plan(chain(0), 2, 4, 64, options=PlanOptions(ep=ep))["feasible"]
    with pytest.raises(ValueError, match="chain built with ep 2, the search tries ep"):
        best_plans(two, 8, 64, [32 * GiB], eps=(1, 4))
    got = best_plans(two, 8, 64, [32 * GiB], eps=(1, 2, 4))[(32.0 * GiB, "none")]
    assert got["ep"] == 2
    err = _place(stages, (2,), (1, 4), capsys, code=2)
    assert "--graphs" in err and "expert-parallel size 2" in err and "add 2 to --ep" in err


def test_sizes_that_do_not_split_the_experts_and_dense_chains(stages):
    """An ep that does not divide the routed experts runs nowhere, also on a chain built
    without ep (evaluate_plan refuses it, the DP skips it, and refuses a list of only such
    sizes); a dense chain is searched at ep 1 whatever the list (EP changes nothing there;
    it used to be skipped when 1 was missing: no plan at all)."""
    from phaze.model.serialize import load_graph
    from phaze.place.chain import chain_from_graph
    from phaze.place.dp import best_plans
    from phaze.place.plan import PlanOptions, evaluate_plan

    lat = lambda g: {li: (1e-3, 2e-3, 0.0) for li in range(len(g.layers))}   # noqa: E731
    g0 = load_graph(stages / "g0.json")
    moe = chain_from_graph(g0, layer_latency=lat(g0))
    with pytest.raises(ValueError, match="ep = 3 must divide"):
        evaluate_plan(moe, 1, 3, 48, options=PlanOptions(ep=3))
    with pytest.raises(ValueError, match="divides the 4 routed experts"):
        best_plans(moe, 24, 96, [32 * GiB], eps=(3,))
    only1 = best_plans(moe, 24, 96, [32 * GiB], eps=(1,))[(32.0 * GiB, "none")]
    got = best_plans(moe, 24, 96, [32 * GiB], eps=(1, 3))[(32.0 * GiB, "none")]
    assert got["ep"] == 1 and got["time_per_batch_s"] == only1["time_per_batch_s"]
    dense_g = build_graph(resolve_model("gpt2-xl").with_(layers=2), seq=128, mbs=1)
    dense = chain_from_graph(dense_g, layer_latency=lat(dense_g))
    at1 = best_plans(dense, 8, 64, [32 * GiB], eps=(1,))[(32.0 * GiB, "none")]
    at2 = best_plans(dense, 8, 64, [32 * GiB], eps=(2,))[(32.0 * GiB, "none")]
    assert at2 is not None and at2["ep"] == 1
    assert at2["time_per_batch_s"] == at1["time_per_batch_s"]


# ---------------------------------------------------------------- the in-process search
def _moe_sweep(tmp_path, eps, source=None):
    from dataclasses import replace

    from phaze.hw.grid import enumerate_grid
    from phaze.search.pipeline import SweepProblem, SweepSpec
    from phaze.settings import GraphSettings, PlacementSettings, SweepSettings

    if source is None:
        source = tmp_path / "moe.json"
        source.write_text(json.dumps(TINY_MOE))
    grid = enumerate_grid({"n_tc": [1, 4], "n_vc": [1, 4], "tc_rows": [32, 128],
                           "tc_cols": [128], "glb_mib": [32],
                           "area": {"min_frac": 0.0, "keep_single_core": "all"}})
    st = replace(SweepSettings(), microbatch_sizes=(1, 2), graph=GraphSettings(attention="flash"),
                 placement=PlacementSettings(devices=32, global_batch=128, hbm_gib=(0.1, 32.0),
                                             recompute=("none", "full"), optimizer="adam",
                                             ep=eps))
    return SweepProblem(SweepSpec(model="tiny-moe", source=str(source), seq=128, tp=(1, 2),
                                  settings=st), grid)


def test_search_graphs_are_one_per_dividing_ep(tmp_path):
    sp = _moe_sweep(tmp_path, (1, 2, 3))
    assert {k[4] for k in sp.graphs} == {1, 2}          # 3 does not divide 4 experts
    assert all(g.ep == k[4] for k, g in sp.graphs.items())
    assert len(sp.graphs) == 2 * 2 * 2                  # mbs x tp x ep
    with pytest.raises(UserError, match="placement.ep"):
        _moe_sweep(tmp_path, (3,))


@pytest.mark.parametrize("eps", [(1,), (2,), (1, 2, 4)])
def test_search_plans_are_evaluate_plans(tmp_path, eps):
    """The in-process search's best plan (SweepProblem.place on the archs' lower-bound
    layer times) has the time evaluate_plan gives on a chain built from a graph of the
    plan's ep with those layer times; the pruned search's floor stays above its DP."""
    from phaze.place.chain import chain_from_graph
    from phaze.place.evaluate import plan_options
    from phaze.place.plan import Links, evaluate_plan
    from phaze.sched.adapter import SCHED_PASSES
    from phaze.search.plan_floor import PlanFloor

    sp = _moe_sweep(tmp_path, eps)
    floor = PlanFloor(sp)
    pl = sp.spec.settings.placement
    seen = set()
    for arch_id, _area in sp.archs():
        times = sp.lower_times(arch_id)
        sp._peak = sp._peak_of(arch_id)
        best = sp.place(times)
        if best["samples_per_s"] != best["samples_per_s"]:      # nothing fits
            continue
        seen.add(int(best["ep"]))
        key = (best["mbs"], best["t"], bool(best["sequence_parallel"]), 1, int(best["ep"]))
        g = sp.graphs[key]
        ch = chain_from_graph(g, layer_latency={li: tuple(times[(*key, li, ps)]
                                                          for ps in SCHED_PASSES)
                                                for li in range(len(g.layers))})
        ev = evaluate_plan(ch, int(best["p"]), int(best["d"]), pl.global_batch,
                           best["recompute"], int(best["interleave"]),
                           stages=[tuple(s) for s in best["stages"]],
                           hbm_bytes=best["hbm_bytes"], links=Links.of(sp.net),
                           options=plan_options(pl, sp.net, int(best["ep"]),
                                                int(best["zero_stage"])),
                           peak_flops=sp._peak)
        assert ev["time_per_batch_s"] == pytest.approx(best["time_per_batch_s"], rel=1e-12)
        fl = floor.samples_per_s(times)
        for mbs in sp.spec.settings.microbatch_sizes:
            b = sp.bound_of(times, sp._peak, (mbs,))
            assert not b > fl[mbs] * (1 + 1e-12), (arch_id, mbs)
    assert seen and seen <= set(eps)


def test_moe_config_without_a_dividing_ep_is_refused(tmp_path, capsys):
    """check-config and `phaze search` name the field and the fix; a fixed plan needs ep 1."""
    from phaze.configcheck import semantic_errors

    cfg = {"models": [{"name": "mixtral-8x7b", "seq": [128], "tp": [1]}],
           "placement": {"ep": [3, 5]}, "arch": {"n_tc": [1]}}
    errs = semantic_errors(cfg, check_grid=False)
    assert any(e.startswith("field placement.ep: none of the expert-parallel sizes [3, 5] "
                            "divides mixtral-8x7b's 8 routed experts") for e in errs), errs
    cfg["placement"]["ep"] = [3, 2]
    assert semantic_errors(cfg, check_grid=False) == []        # 3 skipped, 2 runs it
    cfg["models"][0]["fixed_plan"] = "4x8x1"
    errs = semantic_errors(cfg, check_grid=False)
    assert any("placement.ep" in e and "without expert parallelism" in e for e in errs), errs
    cfg["placement"]["ep"] = [1, 2]
    assert semantic_errors(cfg, check_grid=False) == []
    (tmp_path / "grid.parquet").write_bytes(b"")
    assert main(["search", "--model", "mixtral-8x7b", "--seq", "128", "--ep", "3",
                 "--grid", str(tmp_path / "grid.parquet")]) == 2
    err = capsys.readouterr().err
    assert "--ep: none of the expert-parallel sizes [3]" in err and "fix: add a divisor" in err
    assert main(["search", "--model", "mixtral-8x7b", "--seq", "128", "--ep", "2,4",
                 "--fixed", "4x8x1", "--grid", str(tmp_path / "grid.parquet")]) == 2
    assert "--ep: the fixed baseline 4x8x1" in capsys.readouterr().err


def test_reference_dp_builds_only_the_graphs_it_places(tmp_path):
    """--dp reference places the plain graphs (ep 1, no SP, cp 1): the sweep builds and
    schedules no others, and places every arch as it did with all of them built."""
    from dataclasses import replace

    sp = _moe_sweep(tmp_path, (1, 2))                    # every variant, ep 1 and 2
    slim = type(sp)(replace(sp.spec, dp="reference"), sp.grid)
    assert {k[4] for k in slim.graphs} == {1} and len(slim.graphs) == 2 * 2   # mbs x tp
    assert slim.n_problems() < sp.n_problems()
    placed = 0
    for arch_id, _ in sp.archs()[:3]:
        full, few = sp.lower_times(arch_id), slim.lower_times(arch_id)
        assert few.items() <= full.items()
        a, b = sp.place_reference(full), slim.place_reference(few)
        assert a == pytest.approx(b, nan_ok=True)
        placed += a["samples_per_s"] > 0
    assert placed
