"""Megatron-Core's MoE token dropping (--moe-expert-capacity-factor CF,
--moe-pad-expert-input-to-capacity) in the graph, the plan and the CLI, against closed forms.

Under balanced routing a device's router, seeing `n` tokens, gives each of the E experts
n k / E slots; the capacity is ceil(n k / E x CF) (moe_utils.get_capacity). Padded, the
alltoall dispatcher permutes, sends and computes E x capacity slots; unpadded, the slots
kept: min(n k, E x capacity) = n k min(1, CF) up to rounding. n is T in `_moe` (t = 1),
T / t in `_moe_alltoall` (t > 1 with sequence parallelism; the TP group's experts see t of
those) and in `_moe_folded` (expert TP et != t; et of those after the expert-TP gather)."""

import json
import math

import pytest

from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.serialize import graph_from_dict, graph_to_dict
from phaze.model.spec import ModelSpec

MOE = ModelSpec(name="moe32", hidden=1024, layers=2, heads=16, kv_heads=8, ffn=2048, vocab=4096,
                seq=1024, activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                tied_embeddings=False, dropout=False, experts=32, top_k=4, moe_ffn=512)
E, K, H, DT = MOE.experts, MOE.top_k, MOE.hidden, 2
T = MOE.seq                 # tokens of one microbatch (mbs 1)

# (layer, graph kwargs, tokens one router sees, devices whose slots the experts compute,
#  expert FFN width per device)
PATHS = {
    "_moe": (dict(tp=1), T, 1, MOE.moe_ffn),
    "_moe_alltoall": (dict(tp=2, sequence_parallel=True), T // 2, 2, MOE.moe_ffn // 2),
    "_moe_folded": (dict(tp=4, sequence_parallel=True, expert_tp=2), T // 4, 2, MOE.moe_ffn // 2),
}
# CF 0.7 and 1.3 make the capacity round up (n k / E x CF not whole)
SETTINGS = [(0.5, False), (0.5, True), (0.7, False), (0.7, True), (1.0, True), (1.3, False),
            (1.3, True)]


def own_slots(n: int, cf: float | None, pad: bool) -> int:
    """Closed form: the slots one device's dispatch sends for the n tokens its router sees."""
    if cf is None:
        return n * K
    cap = math.ceil(n * K / E * cf)
    return E * cap if pad else min(n * K, E * cap)


def _block(g):
    return next(lg for lg in g.layers if lg.kind.startswith("block"))


def _graph(path, cf=None, pad=False, **kw):
    gk = PATHS[path][0]
    return build_graph(MOE, mbs=1, attention="flash", moe_expert_capacity_factor=cf,
                       moe_pad_expert_input_to_capacity=pad, **gk, **kw)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("cf,pad", SETTINGS)
def test_routed_slots_closed_forms(path, cf, pad):
    """Expert GEMM FLOPs (gate, up, down: 3 x 2 x slots x h x width), the dispatch's bytes
    (= the chain's a2a_bytes per MoE layer), the combine's saved bytes and the expert
    input kept: every one of them at the closed-form slot count."""
    from phaze.place.chain import chain_from_graph

    _, n, width_group, w = PATHS[path]
    g = _graph(path, cf, pad)
    assert g.moe_expert_capacity_factor == cf and g.moe_pad_expert_input_to_capacity == pad
    own = own_slots(n, cf, pad)
    slots = width_group * own                 # what the device's experts compute
    if not pad:                               # n k min(1, CF), up to the capacity's rounding
        assert abs(own - n * K * min(1.0, cf)) < E
    blk = _block(g)
    experts = [o for o in blk.fwd if o.experts and o.kind == "gemm"]
    assert len(experts) == 3
    assert sum(o.flops for o in experts) == 3 * 2 * slots * H * w
    assert {o.gemm.m for o in experts} == {slots}
    disp = next(o for o in blk.fwd if o.name == "moe.dispatch")
    assert disp.bytes_written == own * H * DT
    ch = chain_from_graph(g, layer_latency={i: (1.0, 2.0, 0.0) for i in range(len(g.layers))})
    assert set(ch.a2a_bytes[ch.a2a_bytes > 0]) == {own * H * DT}
    comb = next(o for o in blk.fwd if o.name == "moe.combine")
    probs = own if path == "_moe_folded" else slots   # routing weights the combine keeps
    assert comb.saved_bytes == own * H * DT + probs * DT
    first = next(o for o in experts if o.name.endswith((".gate", ".fc1")))
    assert first.saved_bytes == slots * H * DT


@pytest.mark.parametrize("path", sorted(PATHS))
def test_capacity_factor_one_padded_is_dropless_under_balance(path):
    """CF 1 with padding: the capacity is the balanced share (n k / E whole here), so
    every op of the graph is the dropless one (FLOPs, bytes, saved); CF >= 1 unpadded
    drops nothing either. Padding to a larger capacity costs more, CF < 1 less."""
    ref, g1, big = _graph(path), _graph(path, 1.0, True), _graph(path, 1.3, False)
    for g in (g1, big):
        for a, b in zip(ref.layers, g.layers):
            for ps in ("fwd", "bwd"):
                assert [(o.name, o.flops, o.bytes_read, o.bytes_written, o.saved_bytes)
                        for o in a.ops(ps)] == \
                    [(o.name, o.flops, o.bytes_read, o.bytes_written, o.saved_bytes)
                     for o in b.ops(ps)]
            assert a.activation_bytes == b.activation_bytes
    assert _graph(path, 1.3, True).flops("fwd") > ref.flops("fwd") > _graph(path, 0.5).flops("fwd")


def test_alltoall_capacity_is_per_device_not_per_tp_group():
    """Under TP with sequence parallelism each device's router sees T / t tokens and takes
    its own capacity (current Megatron-Core's MoEAlltoAllTokenDispatcher.preprocess):
    t x E x ceil(T / t k / E x CF), not E x ceil(T k / E x CF) (core_r0.8's gathered
    logits) where the rounding differs."""
    g = _graph("_moe_alltoall", 1.3, True)
    up = next(o for o in _block(g).fwd if o.name == "moe.expert.up")
    assert up.gemm.m == 2 * E * math.ceil(T // 2 * K / E * 1.3) == 5376
    assert E * math.ceil(T * K / E * 1.3) == 5344


def test_ep_a2a_time_follows_the_slots():
    """expert_parallel_chain charges the all-to-alls of the chain's a2a_bytes: half the
    slots (CF 0.5), half the bytes of each all-to-all; the chain records what it was built
    for and a plan with other token dropping refuses it (check_built_for)."""
    from phaze.hw.presets import get_preset
    from phaze.place.chain import chain_from_graph
    from phaze.place.plan import Links, PlanOptions, evaluate_plan, expert_parallel_chain

    lat = {i: (1e-3, 2e-3, 0.0) for i in range(3)}
    links = Links.of(get_preset("h100").network)
    ch = {cf: chain_from_graph(build_graph(MOE, mbs=1, ep=8, moe_expert_capacity_factor=cf),
                               layer_latency=lat) for cf in (None, 0.5)}
    assert ch[0.5].a2a_bytes.sum() * 2 == ch[None].a2a_bytes.sum() > 0
    assert ch[0.5].extra["moe_expert_capacity_factor"] == 0.5
    assert ch[None].extra["moe_expert_capacity_factor"] is None
    ep = {cf: expert_parallel_chain(c, 8, links, PlanOptions(ep=8)).extra["ep_a2a_s"].sum()
          for cf, c in ch.items()}
    assert 0 < ep[0.5] < ep[None]
    for c, opts in ((ch[None], PlanOptions(ep=8, moe_expert_capacity_factor=0.5)),
                    (ch[0.5], PlanOptions(ep=8)),
                    (ch[0.5], PlanOptions(ep=8, moe_expert_capacity_factor=0.5,
                                          moe_pad_expert_input_to_capacity=True))):
        with pytest.raises(ValueError, match="token dropping"):
            evaluate_plan(c, 1, 8, 64, links=links, options=opts)
    ok = evaluate_plan(ch[0.5], 1, 8, 64, links=links,
                       options=PlanOptions(ep=8, moe_expert_capacity_factor=0.5))
    assert ok["time_per_batch_s"] > 0


def test_serialize_round_trip_and_old_files():
    g = _graph("_moe_folded", 0.7, True)
    back = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    assert back == g
    assert (back.moe_expert_capacity_factor, back.moe_pad_expert_input_to_capacity) == (0.7, True)
    old = graph_to_dict(_graph("_moe"))       # a file written before token dropping
    del old["moe_expert_capacity_factor"], old["moe_pad_expert_input_to_capacity"]
    back = graph_from_dict(old)
    assert (back.moe_expert_capacity_factor, back.moe_pad_expert_input_to_capacity) == (None, False)


def test_schedule_tables_refuse_token_drop_graphs():
    """The latency tables key graphs by GRAPH_KEY, which has no token dropping: the sweep
    builds dropless graphs, and a token-drop graph (phaze graph) is refused there."""
    from phaze.sched.layers import graph_identity

    assert graph_identity(_graph("_moe"))["model"] == "moe32"
    with pytest.raises(UserError, match="token dropping"):
        graph_identity(_graph("_moe", 1.0, True))


@pytest.mark.parametrize("kw,field", [
    (dict(moe_expert_capacity_factor=0.0), "moe_expert_capacity_factor"),
    (dict(moe_expert_capacity_factor=-1.0), "moe_expert_capacity_factor"),
    (dict(moe_expert_capacity_factor=float("nan")), "moe_expert_capacity_factor"),
    (dict(moe_pad_expert_input_to_capacity=True), "moe_pad_expert_input_to_capacity"),
    (dict(moe_expert_capacity_factor=1.0, moe_dispatcher="flex"), "moe_expert_capacity_factor"),
])
def test_build_graph_refusals(kw, field):
    with pytest.raises(UserError) as e:
        build_graph(MOE, mbs=1, **kw)
    assert e.value.field == field and e.value.fix
    dense = MOE.with_(experts=0, top_k=0, moe_ffn=0)
    with pytest.raises(UserError, match="dense model"):
        build_graph(dense, mbs=1, moe_expert_capacity_factor=1.0)


EVAL = ["evaluate", "--model", "qwen3-30b-a3b", "--arch", "h100", "--framework", "nemo-2024",
        "--tp", "1", "--pp", "2", "--dp", "8", "--ep", "8", "--mbs", "1", "--batch", "64",
        "--seq", "4096", "--interleave", "12", "--recompute", "full"]


def _run(args, capsys):
    from phaze.cli import main

    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_evaluate_cli_flags(capsys):
    """--moe-expert-capacity-factor / --moe-pad-expert-input-to-capacity reach the graph:
    CF 1 padded times as dropless (the balanced share), CF 0.5 faster, 1.5 padded slower;
    JSON plan_options and the text line say what ran."""
    times = {}
    for extra in ([], ["--moe-expert-capacity-factor", "1", "--moe-pad-expert-input-to-capacity"],
                  ["--moe-expert-capacity-factor", "0.5"],
                  ["--moe-expert-capacity-factor", "1.5", "--moe-pad-expert-input-to-capacity"]):
        rc, out, _ = _run(EVAL + extra + ["--json"], capsys)
        assert rc == 0
        d = json.loads(out)
        po = d["plan_options"]
        key = (po["moe_expert_capacity_factor"], po["moe_pad_expert_input_to_capacity"])
        times[key] = d["time_per_batch_s"]
    assert set(times) == {(None, False), (1.0, True), (0.5, False), (1.5, True)}
    assert times[(1.0, True)] == pytest.approx(times[(None, False)], rel=1e-12)
    assert times[(0.5, False)] < times[(None, False)] < times[(1.5, True)]
    rc, out, _ = _run(EVAL + ["--moe-expert-capacity-factor", "1.25",
                              "--moe-pad-expert-input-to-capacity"], capsys)
    assert rc == 0 and "token drop capacity factor 1.25, padded" in out.splitlines()[1]


@pytest.mark.parametrize("args,field", [
    (EVAL + ["--moe-expert-capacity-factor", "0"], "--moe-expert-capacity-factor"),
    (EVAL + ["--moe-expert-capacity-factor", "-1"], "--moe-expert-capacity-factor"),
    (EVAL + ["--moe-pad-expert-input-to-capacity"], "--moe-pad-expert-input-to-capacity"),
    (EVAL + ["--moe-expert-capacity-factor", "1", "--moe-token-dispatcher", "flex"],
     "--moe-expert-capacity-factor"),
    (["evaluate", "--model", "llama3-8b", "--arch", "h100", "--tp", "1", "--pp", "1", "--dp",
      "8", "--mbs", "1", "--moe-expert-capacity-factor", "1"], "--moe-expert-capacity-factor"),
    (["evaluate", "--model", "qwen3-30b-a3b", "--grid", "none.parquet", "--arch", "a", "--tp",
      "1", "--pp", "1", "--dp", "8", "--mbs", "1", "--moe-expert-capacity-factor", "1"],
     "--moe-expert-capacity-factor"),
    (["graph", "--model", "qwen3-30b-a3b", "--seq", "512", "--moe-pad-expert-input-to-capacity"],
     "--moe-pad-expert-input-to-capacity"),
    (["graph", "--model", "llama3-8b", "--seq", "512", "--moe-expert-capacity-factor", "1"],
     "--moe-expert-capacity-factor"),
])
def test_cli_refusals_are_one_line_naming_the_flag(args, field, capsys):
    rc, out, err = _run(args, capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"phaze: error: {field}: ") and "fix: " in lines[0]


def test_graph_cli_flags(capsys, tmp_path):
    """`phaze graph` builds and writes the token-drop graph; its JSON summary says so."""
    from phaze.model.serialize import load_graph

    out_file = tmp_path / "g.json"
    rc, out, _ = _run(["graph", "--model", "qwen3-30b-a3b", "--seq", "512", "--ep", "8",
                       "--moe-expert-capacity-factor", "0.5", "--json", "-o", str(out_file)], capsys)
    assert rc == 0
    s = json.loads(out)
    assert (s["moe_expert_capacity_factor"], s["moe_pad_expert_input_to_capacity"]) == (0.5, False)
    assert load_graph(out_file).moe_expert_capacity_factor == 0.5
    rc, out, _ = _run(["graph", "--model", "qwen3-30b-a3b", "--seq", "512", "--json"], capsys)
    assert json.loads(out)["flops_fwd"] > s["flops_fwd"]


def test_model_flops_count_the_model_slots_whatever_token_dropping_computes(capsys):
    """MFU takes Megatron's model FLOPs (num_floating_point_operations: T x top_k routed
    slots): padding to capacity computes 4x the slots and dropping half of them half, yet
    neither changes the model's work, so model FLOPs stay equal and a slower plan never
    shows a higher MFU; HFU follows what the hardware computes."""
    from phaze.cli import main

    base = ["evaluate", "--model", "mixtral-8x7b", "--arch", "h100", "--framework",
            "megatron-core-2024", "--tp", "2", "--pp", "4", "--dp", "8", "--ep", "8", "--mbs", "1",
            "--batch", "256", "--seq", "4096", "--sequence-parallel", "--json"]
    runs = {}
    for name, extra in (("dropless", []), ("pad", ["--moe-expert-capacity-factor", "4",
                                                   "--moe-pad-expert-input-to-capacity"]),
                        ("drop", ["--moe-expert-capacity-factor", "0.5"])):
        assert main(base + extra) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    flops = {k: r["model_flops"] for k, r in runs.items()}
    assert flops["pad"] == pytest.approx(flops["dropless"], rel=1e-12)
    assert flops["drop"] == pytest.approx(flops["dropless"], rel=1e-12)
    t = {k: r["time_per_batch_s"] for k, r in runs.items()}
    assert t["pad"] > t["dropless"] > t["drop"]
    assert runs["pad"]["mfu"] < runs["dropless"]["mfu"] < runs["drop"]["mfu"]
    hw = {k: r["hfu"] * r["time_per_batch_s"] for k, r in runs.items()}   # hardware FLOPs
    assert hw["pad"] > hw["dropless"] > hw["drop"]
