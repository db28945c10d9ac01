"""The report's runnable exports against the row they come from (review of 2026-11-30):
the Megatron arguments and NeMo keys describe the row's own split and ZeRO stage, and the
report states the network the sweep costed (a network with levels overrides the two-level
fields a copy of configs/default.yaml merges in beside them)."""

from __future__ import annotations

import json
import shlex

import pytest

from phaze.place.plan import megatron_stages
from phaze.place.synthetic import gpt_chain
from phaze.report.runnable import megatron_args, nemo_yaml, pipeline_layout

ROW = {"t": 1, "p": 2, "d": 4, "interleave": 2, "mbs": 1, "seq": 1024, "recompute": "none",
       "sequence_parallel": False, "ep": 1, "cp": 1, "zero_stage": 0}


def _flags(text: str) -> dict:
    out = {}
    for ln in text.splitlines():
        if ln.startswith("--"):
            k, *v = shlex.split(ln)
            out[k] = v[0] if v else True
    return out


@pytest.mark.parametrize("p,v,stages", [
    (2, 2, [[0, 2], [2, 5], [5, 8], [8, 10]]),                 # interleaved, uneven ends
    (4, 1, [[0, 3], [3, 5], [5, 8], [8, 10]]),                 # uneven middle
    (4, 1, [[0, 2], [2, 6], [6, 9], [9, 10]]),                 # a chunk of the head alone
])
def test_uneven_splits_export_as_the_rows_layout(p, v, stages):
    """An uneven split (middle chunks differ, or any uneven split interleaved) is exported as
    Megatron-Core's --pipeline-model-parallel-layout (and NeMo's pipeline_model_parallel_
    layout), which phaze's own reading of Megatron (megatron_stages) turns back into the
    row's stages; before, the export said "cannot express" or, interleaved, gave first/last
    rank flags of the first chunk's blocks (another split, or none)."""
    row = dict(ROW, p=p, interleave=v, stages=json.dumps(stages))
    a = _flags(megatron_args(row, 64))
    layout = a["--pipeline-model-parallel-layout"]
    assert layout == pipeline_layout(stages, 10)
    assert "--decoder-first-pipeline-num-layers" not in a
    assert "--num-layers-per-virtual-pipeline-stage" not in a
    chain = gpt_chain(layers=8)
    assert [list(s) for s in megatron_stages(chain, p, v, layout=layout)] == stages
    y = nemo_yaml(row, 64, 8)
    assert f'pipeline_model_parallel_layout: "{layout}"' in y
    # Megatron-Core's TransformerConfig derives the virtual pipeline size from a layout and
    # refuses a different one beside it (transformer_config.py, "conflicts with"): the
    # NeMo export's must be the layout's chunks per rank
    from phaze.place.layout import parse_layout
    vpp = len(parse_layout(layout)) // p
    assert f"virtual_pipeline_model_parallel_size: {vpp if vpp > 1 else 'null'}" in y
    assert vpp == v


def test_uneven_ends_reach_nemo_and_even_splits_stay_plain():
    ends = dict(ROW, p=3, interleave=1, stages=json.dumps([[0, 3], [3, 6], [6, 10]]))
    a = _flags(megatron_args(ends, 64))
    assert (a["--decoder-first-pipeline-num-layers"], a["--decoder-last-pipeline-num-layers"]) \
        == ("2", "3")
    y = nemo_yaml(ends, 64, 8)
    assert "num_layers_in_first_pipeline_stage: 2" in y
    assert "num_layers_in_last_pipeline_stage: 3" in y
    even = dict(ROW, stages=json.dumps([[0, 3], [3, 5], [5, 7], [7, 10]]))
    a = _flags(megatron_args(even, 64))
    assert a["--num-layers-per-virtual-pipeline-stage"] == "2"
    assert "layout" not in megatron_args(even, 64) + nemo_yaml(even, 64, 8)


@pytest.mark.parametrize("zero,fsdp,optim", [(0, None, "fused_adam"),
                                             (1, None, "distributed_fused_adam"),
                                             (2, "grad", "fused_adam"),
                                             (3, "full", "fused_adam")])
def test_nemo_names_the_rows_zero_stage(zero, fsdp, optim):
    """A ZeRO-2/3 row was exported to NeMo as ZeRO-1 (distributed_fused_adam, nothing
    else): NeMo's torch FSDP (fsdp_sharding_strategy grad / full) is the row's stage."""
    row = dict(ROW, interleave=1, zero_stage=zero, stages="[[0,5],[5,10]]")
    y = nemo_yaml(row, 64, 8)
    assert f"name: {optim}" in y
    if fsdp:
        assert "fsdp: true" in y and f"fsdp_sharding_strategy: {fsdp}" in y
    else:
        assert "fsdp" not in y


def test_report_states_the_network_it_costed():
    """configs/default.yaml's two-level fields merged beside a copy's levels: the costs use
    the levels (Network), so the report's network line and NeMo's devices per node must
    too (they showed 64 devices per node, 100 GB/s where 8 and 450 GB/s were costed)."""
    from phaze.report.context import sweep_context, sweep_network

    import pandas as pd

    cfg = {"network": {"devices_per_node": 64, "intra_bw_Bps": 1e11, "inter_bw_Bps": 5e10,
                       "intra_latency_s": 1e-6, "inter_latency_s": 3e-6,
                       "levels": [[8, 4.5e11, 3e-6], [64, 5e10, 6e-6], [0, 2.5e10, 9e-6]]},
           "placement": {"optimizer": "adam", "zero1": True, "zero_stage": [0, 3],
                         "devices": 256, "global_batch": 512, "hbm_gib": [32]}}
    net = sweep_network(cfg)
    assert net["devices_per_node"] == 8 and net["intra_bw_Bps"] == 4.5e11
    grid = pd.DataFrame({"area_mm2": [1.0], "n_tc": [1]})
    ctx = dict(sweep_context(cfg, grid, pd.DataFrame(), None))
    assert "8: 450 GB/s" in ctx["network"] and "64 devices per node" not in ctx["network"]
    assert ctx["optimizer"] == "adam, ZeRO stages 0, 3"
    assert "devices: 8" in nemo_yaml(dict(ROW, interleave=1, stages="[[0,10]]", p=1, d=256),
                                     512, net["devices_per_node"])


def test_report_refuses_a_repeated_table_and_foreign_latency_rows(tmp_path, capsys):
    """`phaze report` joined a placement table given twice (every row duplicated: the
    context's row and DP-time counts doubled) and latency rows of archs outside the grid
    (another sweep's: a Spotlight pick outside the grid, a solver section certifying the
    ranking from another grid's ILPs); both are refused now, naming the file."""
    from report_synth import latency_frame, make_grid, make_place

    from phaze.cli import main

    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet", index=False)
    make_place(grid).to_parquet(tmp_path / "place.parquet", index=False)
    place, g = str(tmp_path / "place.parquet"), str(tmp_path / "grid.parquet")
    assert main(["report", "--place", place, "--grid", g]) == 0
    capsys.readouterr()
    assert main(["report", "--place", place, place, "--grid", g]) == 2
    assert "given twice" in capsys.readouterr().err
    ids = list(grid["arch_id"][:2])
    rows = [{"arch_id": a, "layer_index": i, "layer_repeat": 1 if i == 0 else 24,
             "fwd_s": 1e-3, "bwd_s": 2e-3} for a in ids for i in (0, 1)]
    latency_frame(rows, "bert-large", 512, 1).to_parquet(tmp_path / "lat.parquet", index=False)
    foreign = [dict(r, arch_id="0123456789abcdef") for r in rows]
    latency_frame(foreign, "bert-large", 512, 1).to_parquet(tmp_path / "lat2.parquet",
                                                            index=False)
    lat, lat2 = str(tmp_path / "lat.parquet"), str(tmp_path / "lat2.parquet")
    assert main(["report", "--place", place, "--grid", g, "--latency", lat]) == 0
    capsys.readouterr()
    assert main(["report", "--place", place, "--grid", g, "--latency", lat2]) == 2
    assert "0123456789abcdef" in capsys.readouterr().err
    assert main(["report", "--place", place, "--grid", g, "--latency", lat, lat]) == 2
    assert "repeats the row" in capsys.readouterr().err


@pytest.mark.parametrize("pad,attention,backend", [(1, "eager", "local"), (64, "flash", "flash")])
def test_exports_carry_the_graphs_vocab_padding_and_attention(pad, attention, backend):
    """The row's layer times were costed with the sweep's graph settings: Megatron's default
    --make-vocab-size-divisible-by 128 and its default attention backend would run another
    model, so both exports say them."""
    row = dict(ROW, interleave=1, stages="[[0,5],[5,10]]")
    a = _flags(megatron_args(row, 64, vocab_pad_multiple=pad, attention=attention))
    assert a["--make-vocab-size-divisible-by"] == str(pad)
    assert a["--attention-backend"] == backend
    y = nemo_yaml(row, 64, 8, vocab_pad_multiple=pad, attention=attention)
    assert f"make_vocab_size_divisible_by: {pad}" in y and f"attention_backend: {backend}" in y
