"""Attention dropout inside a fused attention kernel: the graph names it on the fused core
(forward and backward, no mask tensor), and each pass pays one random draw per computed
score element on the VC lanes (phaze.cost.api.flash_dropout_s), closed form here; the
h100 cycles are fitted on whole H200 layers timed with and without dropout
(tests/test_cost_h200_kernels.py holds the fit)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phaze.cost.api import flash_work_fraction, op_latencies
from phaze.cost.params import kernel_params, preset_params
from phaze.hw.presets import get_preset
from phaze.model.graph import build_graph
from phaze.model.ops import is_attention_core
from phaze.model.zoo import resolve_model


def _cores(spec, attention="flash", seq=2048, tp=8):
    g = build_graph(spec, seq=seq, mbs=2, tp=tp, attention=attention)
    return [o for ps in ("fwd", "bwd") for o in g.layers[1].ops(ps) if is_attention_core(o)]


def test_graph_names_dropout_on_the_fused_core_only_with_dropout():
    gpt = resolve_model("gpt3-175b")
    assert gpt.dropout
    fwd, bwd = _cores(gpt)
    assert "dropout" in fwd.fused and "dropout_bwd" in bwd.fused
    for o in _cores(replace(gpt, dropout=False)) + _cores(resolve_model("llama3-8b")):
        assert not {"dropout", "dropout_bwd"} & set(o.fused)
    # the fused kernel keeps no mask: the saved bytes do not move with dropout
    assert fwd.saved_bytes == _cores(replace(gpt, dropout=False))[0].saved_bytes


@pytest.mark.parametrize("preset", ["h100", "a100"])
def test_each_pass_pays_its_band_of_draws(preset):
    arch = get_preset(preset)
    p = replace(kernel_params(preset), flash_causal=True)   # evaluate sets it for causal models
    assert p.flash_dropout_cpe > 0
    gpt = resolve_model("gpt3-175b")
    with_d, without = _cores(gpt), _cores(replace(gpt, dropout=False))
    hz = arch.clock_hz * p.compute_efficiency * p.sustained_clock_fraction
    for a, b in zip(with_d, without):
        la = op_latencies([a], arch, arch.network, tp=8, params=p).lat_all_s[0][0]
        lb = op_latencies([b], arch, arch.network, tp=8, params=p).lat_all_s[0][0]
        scores = a.elements * flash_work_fraction(a, p)   # the causal triangle: half
        assert flash_work_fraction(a, p) == 0.5
        assert la - lb == pytest.approx(scores * p.flash_dropout_cpe
                                        / (arch.n_vc * arch.vc_lanes * hz), rel=1e-9)


def test_no_cost_when_off_or_eager():
    arch = get_preset("h100")
    gpt = resolve_model("gpt3-175b")
    p0 = replace(preset_params("h100"), flash_dropout_cpe=0.0)
    for a, b in zip(_cores(gpt), _cores(replace(gpt, dropout=False))):
        assert (op_latencies([a], arch, arch.network, tp=8, params=p0).lat_all_s[0][0]
                == op_latencies([b], arch, arch.network, tp=8, params=p0).lat_all_s[0][0])
    # eager attention has its own dropout op on the probabilities; its GEMMs carry none
    for o in _cores(gpt, attention="eager"):
        assert "dropout" not in o.fused


def test_gemm_costed_cores_pay_the_draws_only_at_their_cycles():
    # the sweep's mode (no flash efficiency: the core is costed as a GEMM with its vector
    # epilogue): dropout tags are not an epilogue pass; the draws cost flash_dropout_cpe
    # cycles per score, nothing at the default 0
    from phaze.cost.params import CostParams
    arch = get_preset("tpuv4")
    gpt = resolve_model("gpt3-175b")
    hz = arch.clock_hz
    for cpe in (0.0, 5.0):
        p = CostParams(flash_dropout_cpe=cpe)
        for a, b in zip(_cores(gpt), _cores(replace(gpt, dropout=False))):
            la = op_latencies([a], arch, arch.network, tp=8, params=p).lat_all_s[0][0]
            lb = op_latencies([b], arch, arch.network, tp=8, params=p).lat_all_s[0][0]
            assert la - lb == pytest.approx(a.elements * cpe / (arch.n_vc * arch.vc_lanes * hz),
                                            rel=1e-9, abs=1e-15)


def test_attention_dropout_apart_from_the_hidden_dropout(tmp_path):
    # OPT's configs: dropout 0.1, attention_dropout 0.0; BERT's: both 0.1 (the zoo's
    # opt-350m follows its config)
    import json
    from phaze.model.spec import ModelSpec
    opt = resolve_model("opt-350m")
    assert opt.dropout and not opt.attn_dropout
    fwd, bwd = _cores(opt)
    assert not {"dropout", "dropout_bwd"} & set(fwd.fused + bwd.fused)
    g = build_graph(opt, seq=2048, mbs=1, tp=1, attention="eager")
    names = {o.name for o in g.layers[1].ops("fwd")}
    assert "attn.dropout" not in names and "mlp.out_dropout" in names
    cfg = {"model_type": "opt", "hidden_size": 512, "num_hidden_layers": 2,
           "num_attention_heads": 8, "ffn_dim": 2048, "vocab_size": 1000,
           "max_position_embeddings": 256, "dropout": 0.1, "attention_dropout": 0.0}
    for attn, hidden, want in ((0.0, 0.1, (True, False)), (0.1, 0.1, (True, True)),
                               (0.1, 0.0, (False, True)), (0.0, 0.0, (False, False))):
        path = tmp_path / f"opt_{attn}_{hidden}.json"
        path.write_text(json.dumps({**cfg, "attention_dropout": attn, "dropout": hidden}))
        spec = resolve_model(str(path))
        assert (spec.dropout, spec.attn_dropout) == want
        assert ModelSpec.from_dict(spec.to_dict()) == spec
    # a spec without the field keeps its dict (graph files) as before
    assert "attention_dropout" not in resolve_model("gpt3-175b").to_dict()
