"""Per-block mixer and FFN kinds (spec.mixer_types / ffn_types): hybrid models' one-branch
blocks and partly dense MoE models, checked against models whose blocks are all alike."""

import pytest

from phaze.errors import UserError
from phaze.model.graph import build_graph
from phaze.model.spec import ModelSpec

BASE = ModelSpec(name="kinds", hidden=512, layers=4, heads=8, ffn=1536, vocab=1000, seq=256,
                 activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                 tied_embeddings=False, dropout=False)
MOE = BASE.with_(experts=8, top_k=2, moe_ffn=384)


def _blocks(g):
    return [lg for lg in g.layers if lg.kind.startswith("block")]


def _sum(g, what):
    return sum(getattr(lg, what) * lg.repeat if what != "flops" else lg.flops("fwd") * lg.repeat
               for lg in _blocks(g))


@pytest.mark.parametrize("tp,sp", [(1, False), (2, True), (2, False)])
def test_split_blocks_equal_whole_blocks(tp, sp):
    """2L one-branch blocks (attention only, FFN only, alternating) are the same ops as L
    whole pre-norm blocks: same FLOPs, parameters and saved activations."""
    whole = build_graph(BASE, mbs=2, tp=tp, sequence_parallel=sp)
    split = BASE.with_(layers=8, mixer_types=("attention", "none") * 4, ffn_types=("none", "dense") * 4)
    g = build_graph(split, mbs=2, tp=tp, sequence_parallel=sp)
    assert [lg.kind for lg in _blocks(g)] == ["block.none_ffn", "block.none"] * 4
    assert g.params_total == whole.params_total
    for what in ("flops", "param_count"):
        assert _sum(g, what) == pytest.approx(_sum(whole, what), rel=1e-12), what
    for mode in ("none", "selective"):
        got = sum(lg.activation_bytes[mode] * lg.repeat for lg in _blocks(g))
        ref = sum(lg.activation_bytes[mode] * lg.repeat for lg in _blocks(whole))
        assert got == pytest.approx(ref, rel=1e-12), mode


@pytest.mark.parametrize("tp,sp", [(1, False), (2, True)])
def test_dense_blocks_of_a_moe_model(tp, sp):
    """DeepSeek-V3's first dense layers: a dense block of an MoE model is the dense
    model's block, its MoE blocks the MoE model's; the runs are grouped in order."""
    mixed = MOE.with_(ffn_types=("dense",) * 1 + ("moe",) * 3)
    g = build_graph(mixed, tp=tp, sequence_parallel=sp)
    kinds = [(lg.kind, lg.repeat) for lg in _blocks(g)]
    assert kinds == [("block.dense_ffn", 1), ("block", 3)]
    dense = _blocks(build_graph(BASE, tp=tp, sequence_parallel=sp))[0]
    moe = _blocks(build_graph(MOE, tp=tp, sequence_parallel=sp))[0]
    got = _blocks(g)
    assert got[0].flops("fwd") == pytest.approx(dense.flops("fwd"))
    assert got[0].param_count == dense.param_count
    assert got[1].flops("fwd") == pytest.approx(moe.flops("fwd"))
    assert got[1].param_count == moe.param_count


def test_block_kind_errors():
    with pytest.raises(UserError, match="ffn_types"):
        BASE.with_(ffn_types=("dense",) * 3).validate()
    with pytest.raises(UserError, match="experts"):
        BASE.with_(ffn_types=("moe",) * 4).validate()
    with pytest.raises(UserError, match="mixer or an FFN"):
        BASE.with_(mixer_types=("none",) * 4, ffn_types=("none",) * 4).validate()
    with pytest.raises(UserError, match="pre-norm"):
        BASE.with_(parallel_block=True, ffn_types=("none", "dense") * 2).validate()
    with pytest.raises(UserError, match="mixer_types"):
        BASE.with_(mixer_types=("rwkv",) * 4).validate()
    with pytest.raises(UserError, match="mamba_num_heads"):   # Mamba layers need their sizes
        BASE.with_(mixer_types=("mamba",) * 4).validate()


def test_tp_widths_follow_the_block_kinds():
    """Only the widths some block splits constrain tp: a dense ffn of 1004 in an MoE model
    with dense blocks, none when every block is MoE."""
    odd = MOE.with_(ffn=1004)
    odd.check_tp(8)                     # ffn 1004 unused: every block routes
    with pytest.raises(UserError, match="ffn"):
        odd.with_(ffn_types=("dense",) + ("moe",) * 3).check_tp(8)
