"""Megatron-Core's custom pipeline layouts (--pipeline-model-parallel-layout): the parser
against the expansions Megatron-Core documents, its errors, the mapping onto a chain
(megatron_stages(layout=)) and evaluate_model / evaluate_plan with a layout."""

import numpy as np
import pytest

from phaze.place.chain import Chain
from phaze.place.layout import check_layout, parse_layout
from phaze.place.plan import Links, check_stages, evaluate_plan, megatron_stages, uniform_stages


def chain(n=10, f=1.0, b=2.0, P=1e8):
    kinds = ("prologue",) + ("block",) * (n - 2) + ("epilogue",)
    z = np.zeros(n)
    return Chain(t=1, mbs=1, seq=2048, fwd_s=np.full(n, f), bwd_s=np.full(n, b),
                 param_count=np.full(n, P), act_none_bytes=z + 1e6, act_full_bytes=z + 1e5,
                 out_bytes=z + 1e6, kinds=kinds)


def test_deepseek_v3_recipe_layout_expands_to_32_chunks():
    # Megatron-Bridge's DeepSeek-V3 H100 recipe: pp 8 x vp 4, 61 decoder layers + 1 MTP
    c = parse_layout("Et|(tt|)*30mL")
    assert len(c) == 32 and c[0] == "Et" and c[1:31] == ["tt"] * 30 and c[31] == "mL"
    flat = "".join(c)
    assert (flat.count("t"), flat.count("m"), flat.count("E"), flat.count("L")) == (61, 1, 1, 1)
    check_layout(c, 8, 4, 61, 1)


@pytest.mark.parametrize("text, want", [
    ("(tt|)*2", ["tt", "tt", ""]),
    ("Et*3|L", ["Ettt", "L"]),
    ("(ab)*3".replace("a", "t").replace("b", "m"), ["tmtmtm"]),
    # Megatron-Core's own examples (transformer_config.py, pipeline_parallel_layout.md)
    ("E|(tt|)*2,(t|)*4,mL", ["E", "tt", "tt", "t", "t", "t", "t", "mL"]),
    ("Et*3|(tt|)*29,m|L", ["Ettt"] + ["tt"] * 29 + ["m", "L"]),
    ("E|(t|)*3,m|m||L", ["E", "t", "t", "t", "m", "m", "", "L"]),
    ("E|t*3|(t|)*4tm|L", ["E", "ttt", "t", "t", "t", "t", "tm", "L"]),
    ("Et|(tt|)*0L", ["Et", "L"]),
])
def test_repetition_and_commas(text, want):
    assert parse_layout(text) == want


@pytest.mark.parametrize("text, want", [
    ("E(tt|*2L", "unbalanced parentheses"),
    ("Ett)*2|L", "unbalanced parentheses"),
    ("((t|)*2)*2", "nested parentheses"),
    ("E(tt|)L", "needs a repeat count"),
    ("E()*2|L", "empty group"),
    ("Et|x|L", "unknown symbol 'x' in chunk 1"),
    ("Et t|L", "unknown symbol ' '"),
    ("E**3|L", "repeat count"),
    ("", "empty"),
])
def test_parse_errors_name_what_is_wrong(text, want):
    with pytest.raises(ValueError, match=want):
        parse_layout(text)


@pytest.mark.parametrize("text, p, v, nt, nm, want", [
    ("Et|tL", 4, 1, 2, None, r"2 chunks, pp x interleave = 4 x 1 = 4 needed"),
    ("Et|tt|tt|tL", 2, 1, 7, None, r"with pp 2: give interleave 2"),
    ("Et|tL", 1, 1, 2, None, r"give pp 2 x interleave 1\)"),   # interleave needs pp > 1
    ("t|EtL", 2, 1, 2, None, "E .the embedding. must appear once, opening the first chunk"),
    ("Et|Et|tL", 3, 1, 3, None, "E .the embedding. must appear once"),
    ("Et|Lt", 2, 1, 2, None, "L .the loss. must appear once, closing the last chunk"),
    ("Et|ttL", 2, 1, 4, None, r"3 decoder layers \(t\), the model has 4"),
    ("Et|tmL", 2, 1, 2, None, "phaze has no MTP block"),
    ("Et|tmL", 2, 1, 2, 2, r"1 MTP layers \(m\), the model has 2"),
    ("Et|ttL", 2, 1, 3, 1, r"0 MTP layers \(m\), the model has 1"),
    ("Em|ttL", 2, 1, 2, 1, "decoder layers .t. must all come before"),
    ("Et|tm|m|L", 2, 2, 2, 2, "all be in one chunk"),
    ("Et|tm|t|L", 2, 2, 3, 1, "last chunk of their pipeline rank|before the MTP"),
    ("Et|m|t|L", 2, 2, 2, 1, "before the MTP"),
    ("Et|tm|tt|L", 2, 2, 4, 1, "before the MTP"),
])
def test_layout_checks_name_what_is_wrong(text, p, v, nt, nm, want):
    with pytest.raises(ValueError, match=want):
        check_layout(parse_layout(text), p, v, nt, nm)


def test_mtp_must_sit_in_the_last_chunk_of_its_rank():
    # p 2, v 2: chunks 0, 2 on rank 0 and 1, 3 on rank 1; m in chunk 1 (rank 1, first vp)
    with pytest.raises(ValueError, match="last chunk of their pipeline rank .chunk 1"):
        check_layout(["Et", "m", "", "L"], 2, 2, 1, 1)
    check_layout(["Et", "t", "m", "L"], 2, 2, 2, 1)     # m in chunk 2: rank 0's last chunk


def test_layout_maps_onto_the_chain():
    c = chain(n=12)                                   # prologue, 10 blocks, epilogue
    assert megatron_stages(c, 2, layout="Ettttt|tttttL") == uniform_stages(c, 2)
    assert megatron_stages(c, 4, layout="Et|tttt|tttt|tL") == [(0, 2), (2, 6), (6, 10), (10, 12)]
    # an embedding-only chunk, an empty chunk, a loss-only chunk (Megatron-Core allows each)
    st = megatron_stages(c, 3, 2, layout="E|ttt|ttt||tttt|L")
    assert st == [(0, 1), (1, 4), (4, 7), (7, 7), (7, 11), (11, 12)]
    with pytest.raises(ValueError, match="is empty"):
        check_stages(st, 6, 12)
    check_stages(st, 6, 12, allow_empty=True)
    # m: the last mtp_layers blocks
    assert megatron_stages(c, 2, 2, layout="Ett|ttt|tttt|mL", mtp_layers=1) == \
        [(0, 3), (3, 6), (6, 10), (10, 12)]
    with pytest.raises(ValueError, match="no MTP block"):
        megatron_stages(c, 2, 2, layout="Ett|ttt|tttt|mL")
    with pytest.raises(ValueError, match="cannot be combined"):
        megatron_stages(c, 2, layout="Ettttt|tttttL", account_loss=True)


def test_layout_spelling_out_the_account_switches_is_those_switches():
    c = chain(n=128)                                  # 126 blocks + E + L = 64 x 2
    want = megatron_stages(c, 8, 8, account_embedding=True, account_loss=True)
    assert megatron_stages(c, 8, 8, layout="Et|(tt|)*62tL") == want


def test_uneven_layout_slowest_rank_decides():
    """p 2: rank 0 holds the prologue and 2 blocks, rank 1 holds 8 blocks and the epilogue:
    rank 1's load is the max, and the time is M * that load + (p - 1) * that load (the
    1F1B closed form, no DP)."""
    c = chain(n=12)
    st = megatron_stages(c, 2, layout="Ett|ttttttttL")
    r = evaluate_plan(c, 2, 1, 8, stages=st, links=Links(), allow_empty_stages=True)
    assert r["stages"] == [[0, 3], [3, 12]]
    F, B = 1.0, 2.0                                   # per layer
    hop = r["p2p_s"] / r["M"]
    load1 = 9 * (F + B) + hop
    assert r["compute_s"] == pytest.approx(r["M"] * 9 * (F + B))
    assert r["time_per_batch_s"] == pytest.approx(r["M"] * load1 + load1)
    even = evaluate_plan(c, 2, 1, 8, links=Links())
    assert r["time_per_batch_s"] > even["time_per_batch_s"]


def test_empty_chunk_costs_its_hops_only():
    c = chain(n=12)
    st = megatron_stages(c, 2, 2, layout="Ettttt|ttttt||L")
    r = evaluate_plan(c, 2, 1, 8, interleave=2, stages=st, links=Links(),
                      allow_empty_stages=True)
    assert r["stages"][2] == [11, 11] and np.isfinite(r["time_per_batch_s"])
    with pytest.raises(ValueError, match="is empty"):
        evaluate_plan(c, 2, 1, 8, interleave=2, stages=st, links=Links())


def _model(**kw):
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model

    r = evaluate_model(get_model("gpt2-xl"), get_preset("a100"), tp=1, pp=4, dp=2, mbs=1,
                       batch=16, **kw)
    r.pop("pipeline_layout")
    return r


def test_evaluate_model_layout_equivalences():
    # gpt2-xl: 48 blocks; pp 4 x vp 2 = 8 chunks of 6 (uniform) or, accounting E and L,
    # 50 / ... does not divide: pp 2 x vp 1 accounting: 50 / 2 = 25 -> E + 24, 24 + L
    assert _model(interleave=2, pipeline_layout="Et*6|(t*6|)*6t*6L") == _model(interleave=2)
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import get_model
    from phaze.place.evaluate import evaluate_model
    kw = dict(tp=1, pp=2, dp=2, mbs=1, batch=16)
    spec, arch = get_model("gpt2-xl"), get_preset("a100")
    a = evaluate_model(spec, arch, account_embedding=True, account_loss=True, **kw)
    b = evaluate_model(spec, arch, pipeline_layout="Et*24|t*24L", **kw)
    assert b.pop("pipeline_layout") == "Et*24|t*24L" and a.pop("pipeline_layout") is None
    assert a == b and a["stages"] == [[0, 25], [25, 50]]
    with pytest.raises(ValueError, match="cannot be combined"):
        evaluate_model(spec, arch, pipeline_layout="Et*24|t*24L", account_loss=True, **kw)
