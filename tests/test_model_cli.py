"""`phaze models` / `phaze graph` through the real CLI, and graph JSON round trips."""

import json
import subprocess
import sys

import pytest

from phaze.cli import main
from phaze.model.graph import build_graph
from phaze.model.serialize import load_graph, save_graph
from phaze.model.zoo import ZOO

KEYS = {"params", "flops_fwd", "flops_bwd", "activation_bytes_per_layer"}


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_models_lists_zoo(capsys):
    rc, out, _ = _run(["models", "--json"], capsys)
    assert rc == 0
    names = [m["name"] for m in json.loads(out)["models"]]
    assert names == list(ZOO)
    rc, out, _ = _run(["models"], capsys)
    assert rc == 0 and "llama2-70b" in out


def test_graph_json_keys_and_values(capsys):
    rc, out, _ = _run(["graph", "--model", "gpt3-175b", "--seq", "2048", "--mbs", "1", "--tp", "8",
                       "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert KEYS <= set(d)
    s, h, a, l, V, t = 2048, 12288, 96, 96, 51200, 8
    # Korthikanti TP formula for one block on one device, no recomputation
    ref = s * h * (10 + 24 / t + 5 * a * s / (h * t))
    assert abs(d["activation_bytes_per_layer"] / ref - 1) < 0.02
    assert abs(d["params"] / 174.6e9 - 1) < 0.01
    # forward FLOPs of the whole model (all shards): 24 s l h^2 (1 + s/(6h)) + 2 s h V
    ref_fwd = 24 * s * l * h * h * (1 + s / (6 * h)) + 2 * s * h * V
    assert abs(d["flops_fwd"] / ref_fwd - 1) < 0.02
    assert abs(d["flops_bwd"] / (2 * ref_fwd) - 1) < 0.02
    assert [x["kind"] for x in d["layers"]] == ["prologue", "block", "epilogue"]


def test_graph_table_and_output_roundtrip(tmp_path, capsys):
    f = tmp_path / "g" / "s512_b2_t2.json"
    rc, out, _ = _run(["graph", "--model", "llama2-7b", "--seq", "512", "--mbs", "2", "--tp", "2",
                       "--sequence-parallel", "--fused", "-o", str(f)], capsys)
    assert rc == 0 and "attn.q" in out and "total" in out
    g = load_graph(f)
    assert g == build_graph(ZOO["llama2-7b"], 512, 2, 2, True, True)
    assert json.loads(f.read_text())["spec"]["name"] == "llama2-7b"


@pytest.mark.parametrize("name", ["bert-large", "opt-350m", "llama2-70b"])
def test_save_load_roundtrip(tmp_path, name):
    g = build_graph(ZOO[name], 256, 1, 2 if name != "bert-large" else 1)
    save_graph(g, tmp_path / "x.json")
    assert load_graph(tmp_path / "x.json") == g
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_hf_config_via_cli(tmp_path, capsys):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25,
                             "vocab_size": 50257, "n_positions": 1024}))
    rc, out, _ = _run(["graph", "--model", str(f), "--json"], capsys)
    assert rc == 0 and abs(json.loads(out)["params"] / 1.558e9 - 1) < 0.01


BAD = [
    (["graph", "--model", "gpt-5"], "unknown model 'gpt-5'"),
    (["graph", "--model", "gpt2-xl", "--tp", "2"], "does not divide the 25 attention heads"),
    (["graph", "--model", "llama2-70b", "--tp", "16"], "does not divide the 8 key/value heads"),
    (["graph", "--model", "gpt-1.7b", "--mbs", "0"], "mbs: must be a positive integer"),
    (["graph", "--model", "gpt-1.7b", "--seq", "-4"], "seq: must be a positive integer"),
    (["graph", "--model", "gpt-1.7b", "--tp", "0"], "tp: must be a positive integer"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, msg):
    out_file = tmp_path / "o.json"
    rc, out, err = _run(argv + ["-o", str(out_file)], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], err
    assert not out_file.exists()


def test_bad_config_files(tmp_path, capsys):
    missing = tmp_path / "missing" / "config.json"
    missing.parent.mkdir()
    missing.write_text(json.dumps({"model_type": "bert", "hidden_size": 1024, "num_hidden_layers": 24,
                                   "num_attention_heads": 16, "vocab_size": 30522,
                                   "max_position_embeddings": 512}))
    rc, _, err = _run(["graph", "--model", str(missing)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "missing field 'intermediate_size'" in err
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"model_type": "gpt2", "n_embd": 0, "n_layer": 2, "n_head": 2,
                                "vocab_size": 10, "n_positions": 8}))
    rc, _, err = _run(["graph", "--model", str(zero)], capsys)
    assert rc == 2 and f"n_embd: {zero}: must be a positive integer" in err


def test_subprocess_exit_code():
    r = subprocess.run([sys.executable, "-m", "phaze", "graph", "--model", "nope"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_graph_per_device_params_divide_the_routed_experts_by_ep(capsys):
    """`phaze graph --ep E` reports per device what the placement charges a device: the
    routed experts divided by E (Chain: param_count - expert_param_count (1 - 1/E)), the
    rest whole; without --ep every expert. Mixtral 8x7B at ep 8: one expert per device."""
    from phaze.place.chain import chain_from_graph

    per = {}
    for ep in (0, 8):
        rc, out, _ = _run(["graph", "--model", "mixtral-8x7b", "--seq", "512", "--json"]
                          + (["--ep", str(ep)] if ep else []), capsys)
        assert rc == 0
        per[ep] = json.loads(out)
    g = build_graph(ZOO["mixtral-8x7b"], seq=512)
    ch = chain_from_graph(g, op_latency_s=lambda o: 1e-6)
    whole = float(ch.param_count.sum()) * 2
    experts = float(ch.expert_param_count.sum()) * 2
    assert per[0]["param_bytes_per_device"] == pytest.approx(whole, rel=1e-12)
    assert per[8]["param_bytes_per_device"] == pytest.approx(whole - experts * 7 / 8, rel=1e-9)
    blk = next(x for x in per[8]["layers"] if x["kind"] == "block")
    assert blk["param_bytes_per_device"] == pytest.approx(
        blk["param_bytes"] - blk["expert_param_bytes"] * 7 / 8)
    assert blk["expert_param_bytes"] > 0.8 * blk["param_bytes"]


def test_graph_router_flags_reach_the_graph_and_its_file(tmp_path, capsys):
    """`phaze graph`'s Megatron-Core router flags build the graph `phaze evaluate` builds
    with them (build_graph's options), are reported and survive the JSON file; on a dense
    model they are refused, naming the flag."""
    flags = ["--moe-router-fusion", "--moe-router-load-balancing-type", "seq_aux_loss",
             "--moe-router-force-load-balancing"]
    out = tmp_path / "g.json"
    rc, text, _ = _run(["graph", "--model", "mixtral-8x7b", "--seq", "256", "--ep", "4",
                        "--json", "-o", str(out)] + flags, capsys)
    assert rc == 0
    s = json.loads(text)
    assert (s["moe_router_fusion"], s["moe_router_load_balancing_type"],
            s["moe_router_force_load_balancing"]) == (True, "seq_aux_loss", True)
    g = build_graph(ZOO["mixtral-8x7b"], seq=256, ep=4, fused=True, moe_router_fusion=True,
                    moe_router_load_balancing_type="seq_aux_loss",
                    moe_router_force_load_balancing=True)
    assert load_graph(out) == g
    rc, _, err = _run(["graph", "--model", "llama2-7b", "--moe-router-fusion"], capsys)
    assert rc == 2 and "--moe-router-fusion" in err and "no routed experts" in err
