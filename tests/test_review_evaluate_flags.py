"""`phaze evaluate`'s two routes and `phaze validate`'s rows (review of 2026-11-30): a flag
of the sweep route is refused on the GPU-preset route instead of being ignored, and a
validate row's JSON says enough to recompute it with `phaze evaluate --arch PRESET`."""

from __future__ import annotations

import json

import pytest

from phaze.cli import main

PRESET = ["evaluate", "--model", "gpt-1.7b", "--arch", "a100", "--tp", "1", "--pp", "1",
          "--dp", "8", "--mbs", "1", "--batch", "64", "--recompute", "full", "--json"]


@pytest.mark.parametrize("flag", [["--no-fused"], ["--fused"], ["--solver", "highs"],
                                  ["--time-limit", "3"], ["--cache", "/nonexistent"]])
def test_preset_route_refuses_sweep_flags(flag, capsys):
    """These flags changed nothing on the preset route (same time, exit 0): it builds the
    graph as --framework runs it and schedules no ILP."""
    assert main([*PRESET, *flag]) == 2
    err = capsys.readouterr().err
    assert flag[0].split("/")[0] in err and "--grid" in err


def _argv(r: dict) -> list[str] | None:
    """`phaze evaluate` flags from one validate JSON row alone (None: a non-zoo shape the
    inline GPT flags cannot give)."""
    argv = ["evaluate", "--arch", r["arch"]]
    shape = r["model_shape"]
    if r["model"]:
        argv += ["--model", r["model"], "--mtp-layers", str(r["mtp_layers"])]
    elif shape["family"] == "gpt" and shape["tied_embeddings"] and shape["dropout"] \
            and shape["ffn"] == 4 * shape["hidden"] and shape["kv_heads"] == shape["heads"]:
        argv += ["--hidden", str(shape["hidden"]), "--heads", str(shape["heads"]),
                 "--layers", str(shape["layers"]), "--vocab", str(shape["vocab"])]
    else:
        return None
    for k in ("tp", "pp", "dp", "cp", "ep", "mbs", "interleave", "batch", "seq"):
        argv += ["--" + k, str(r[k])]
    argv += ["--recompute", r["recompute"], "--ddp-impl", r["ddp_impl"], "--json",
             "--allow-infeasible"]
    if r["framework"]:
        argv += ["--framework", r["framework"]]
    for key, flag in (("sequence_parallel", "--sequence-parallel"),
                      ("cross_entropy_fusion", "--cross-entropy-fusion"),
                      ("account_embedding", "--account-for-embedding-in-pipeline-split"),
                      ("account_loss", "--account-for-loss-in-pipeline-split"),
                      ("moe_router_fusion", "--moe-router-fusion")):
        if r[key]:
            argv.append(flag)
    if r["fp8"]:
        argv += ["--fp8", "--fp8-recipe", r["fp8_recipe"]]
    if r["tp_comm_overlap"] is not None:
        argv += ["--overlap" if r["tp_comm_overlap"] else "--no-overlap", "tp_comm"]
    if r["expert_tp"]:
        argv += ["--expert-tp", str(r["expert_tp"])]
    if r["recompute_modules"]:
        argv += ["--recompute-modules", ",".join(r["recompute_modules"])]
    if r["moe_expert_capacity_factor"] is not None:
        argv += ["--moe-expert-capacity-factor", str(r["moe_expert_capacity_factor"])]
    if r["moe_pad_expert_input_to_capacity"]:
        argv.append("--moe-pad-expert-input-to-capacity")
    if r["moe_router_load_balancing_type"] != "none":
        argv += ["--moe-router-load-balancing-type", r["moe_router_load_balancing_type"]]
    if r["moe_router_force_load_balancing"]:
        argv.append("--moe-router-force-load-balancing")
    if r["pipeline_layout"]:
        argv += ["--pipeline-layout", r["pipeline_layout"]]
    po = dict(r["plan_options"])
    if po.pop("grad_bytes", None) == 2.0:
        argv += ["--grad-sync-dtype", "bf16"]
        po.pop("dp_reduce_bytes", None)
    if po.pop("adam_state_bytes", None) == 6.0:
        argv += ["--optimizer-state-dtype", "bf16"]
    po.pop("optimizer_bytes_per_param", None)
    if po.pop("moe_token_dispatcher", "alltoall") == "flex":
        argv += ["--moe-token-dispatcher", "flex"]
    if po.pop("overlap_grad_reduce", True) is False:
        argv += ["--no-overlap", "grad_reduce"]
    if po.pop("overlap_moe_expert_parallel_comm", False):
        argv += ["--overlap", "moe_ep_comm"]
    assert not po, po
    return argv


def test_validate_rows_recompute_from_their_json(capsys):
    """Before, a row's JSON lacked the FP8 recipe, sequence length, expert TP, recompute
    modules, pipeline layout, MTP layers, fusion and overlap switches and the model's shape:
    e.g. the DeepSeek-V3 row (tensorwise FP8, layout Et|(tt|)*30mL) could not be recomputed."""
    assert main(["validate", "--table", "both", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["phaze_version"]
    rows = both["rows"][:3]
    assert main(["validate", "--table", "bridge", "--json"]) == 0
    bridge = json.loads(capsys.readouterr().out)["rows"]
    rows += [r for r in bridge if r["name"] in ("DSV3/25.09", "L3-70B/25.09")
             or r["moe_expert_capacity_factor"] is not None][:4]
    assert any(r.get("pipeline_layout") for r in rows) and any(r["fp8"] for r in rows)
    for r in rows:
        argv = _argv(r)
        assert argv is not None, r["name"]
        assert main(argv) == 0, (r["name"], capsys.readouterr().err)
        got = json.loads(capsys.readouterr().out)
        assert got["time_per_batch_s"] == pytest.approx(r["time_per_batch_s"], rel=1e-12), r["name"]
