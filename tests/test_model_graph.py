"""Operator graphs against closed forms: Korthikanti's activation memory, Narayanan's Eq. 3,
GEMM FLOPs by hand, Megatron TP/SP structure, DAG validity, fusion invariants."""

import pytest
from hypothesis import given, settings, strategies as st

from phaze.model.graph import build_graph, fuse_epilogues
from phaze.model.spec import ModelSpec
from phaze.model.zoo import ZOO

KORTHIKANTI = ["gpt-22b", "gpt3-175b", "gpt-530b", "gpt-1t"]
TABLE1 = ["gpt-1.7b", "gpt-3.6b", "gpt-7.5b", "gpt-18.4b", "gpt-39.1b", "gpt-76.1b", "gpt-145.6b",
          "gpt-310.1b", "gpt-529.6b", "gpt-1t"]


def _block(g):
    return next(lg for lg in g.layers if lg.kind == "block")


# --- Korthikanti et al. MLSys'23, Sec. 4 (bytes per layer, fp16) ---------------------------
@pytest.mark.parametrize("name", KORTHIKANTI)
@pytest.mark.parametrize("b", [1, 4])
def test_activation_memory_korthikanti(name, b):
    sp, s = ZOO[name], 2048
    h, a, t = sp.hidden, sp.heads, 8
    cases = [
        (1, False, "none", s * b * h * (34 + 5 * a * s / h)),
        (t, False, "none", s * b * h * (10 + 24 / t + 5 * a * s / (h * t))),
        (t, True, "none", s * b * h / t * (34 + 5 * a * s / h)),
        (t, True, "selective", 34 * s * b * h / t),
        (t, False, "selective", s * b * h * (10 + 24 / t)),
        (1, False, "full", 2 * s * b * h),
        (t, False, "full", 2 * s * b * h),
    ]
    for tp, seqp, mode, ref in cases:
        got = _block(build_graph(sp, s, b, tp, seqp)).activation_bytes[mode]
        assert abs(got / ref - 1) < 0.02, (tp, seqp, mode, got, ref)


# --- Narayanan et al. SC'21 Eq. 3 ----------------------------------------------------------
@pytest.mark.parametrize("name", TABLE1)
def test_flops_per_iteration_eq3(name):
    sp, s, B = ZOO[name], 2048, 512
    l, h, V = sp.layers, sp.hidden, sp.vocab
    g = build_graph(sp, s, 1, 1)
    per_mb = g.flops("fwd") + g.flops("bwd")
    recompute = _block(g).flops("fwd") * l  # full recomputation runs every block's forward again
    no_rc = 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))
    rc = 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    assert abs(B * per_mb / no_rc - 1) < 0.02
    assert abs(B * (per_mb + recompute) / rc - 1) < 0.02


def _hand_gemm_flops_fwd(sp, s, b):
    """Forward GEMM FLOPs of one block, written out by hand (2 * m * n * k per GEMM)."""
    h, f, d, a, kv = sp.hidden, sp.ffn, sp.d_head, sp.heads, sp.n_kv_heads
    T = s * b
    proj = 2 * T * h * (a * d + 2 * kv * d) + 2 * T * a * d * h
    attn = 2 * (2 * b * a * s * s * d)
    mlp = (3 if sp.activation == "swiglu" else 2) * 2 * T * h * f
    return proj + attn + mlp


@pytest.mark.parametrize("name", ["bert-large", "gpt2-xl", "opt-350m", "llama2-7b", "llama2-70b"])
def test_block_gemm_flops_and_backward_twice(name):
    sp = ZOO[name]
    s, b = 256, 2
    blk = _block(build_graph(sp, s, b, 1))
    fwd_gemm = sum(o.flops for o in blk.fwd if o.kind == "gemm")
    bwd_gemm = sum(o.flops for o in blk.bwd if o.kind == "gemm")
    assert fwd_gemm == pytest.approx(_hand_gemm_flops_fwd(sp, s, b), rel=1e-12)
    assert bwd_gemm == pytest.approx(2 * fwd_gemm, rel=1e-12)
    # every forward GEMM has an input-gradient and a weight-gradient GEMM with its FLOPs
    bwd = {o.name: o for o in blk.bwd}
    for o in blk.fwd:
        if o.kind == "gemm":
            assert o.flops == o.gemm.flops
            assert bwd[o.name + ".dX"].flops == o.flops == bwd[o.name + ".dW"].flops


def _check_dag(ops):
    seen = set()
    names = [o.name for o in ops]
    assert len(names) == len(set(names))
    for o in ops:
        assert all(d in seen for d in o.deps), (o.name, o.deps)  # listed in topological order
        seen.add(o.name)
        assert (o.gemm is not None) == (o.kind == "gemm")
        if o.kind == "collective":
            assert o.collective in ("all_reduce", "reduce_scatter", "all_gather") and o.group == "tp"
            assert o.comm_bytes > 0
        assert o.bytes_read >= 0 and o.bytes_written >= 0


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["bert-large", "opt-350m", "llama2-70b", "gpt-22b", "megatron-gpt2-72"]),
       t=st.sampled_from([1, 2, 4, 8]), seqp=st.booleans(), fused=st.booleans(), b=st.integers(1, 3))
def test_tp_sharding_properties(name, t, seqp, fused, b):
    sp, s = ZOO[name], 128
    g1 = build_graph(sp, s, b, 1, fused=fused)
    gt = build_graph(sp, s, b, t, seqp, fused=fused)
    for lg in gt.layers:
        _check_dag(lg.fwd)
        _check_dag(lg.bwd)
    assert gt.params_total == g1.params_total
    blk1, blkt = _block(g1), _block(gt)
    for p in ("fwd", "bwd"):
        # block GEMMs are all sharded t ways
        assert sum(o.flops for o in blkt.ops(p) if o.kind == "gemm") * t == pytest.approx(
            sum(o.flops for o in blk1.ops(p) if o.kind == "gemm"), rel=1e-12)
    colls = [o for o in blkt.fwd if o.kind == "collective"]
    bcolls = [o for o in blkt.bwd if o.kind == "collective"]
    full = s * b * sp.hidden * 2
    if t == 1:
        assert not colls and not bcolls
    elif gt.sequence_parallel:
        assert sorted(o.collective for o in colls) == ["all_gather"] * 2 + ["reduce_scatter"] * 2
        # conjugates (2 RS + 2 AG) plus the all-gathers of the inputs for the weight gradients
        assert sorted(o.collective for o in bcolls) == ["all_gather"] * 4 + ["reduce_scatter"] * 2
        assert all(o.comm_bytes == full for o in colls + bcolls)
    else:
        assert [o.collective for o in colls] == ["all_reduce"] * 2
        assert [o.collective for o in bcolls] == ["all_reduce"] * 2
        assert all(o.comm_bytes == full for o in colls + bcolls)
    # per-device parameters: sharded GEMM weights / t, the rest replicated
    assert blkt.param_count * t >= blk1.param_count >= blkt.param_count


def test_vocab_parallel_embedding_and_head():
    sp = ZOO["gpt3-175b"]
    g = build_graph(sp, 2048, 1, 8)
    pro, epi = g.layers[0], g.layers[-1]
    assert [o.collective for o in pro.fwd if o.kind == "collective"] == ["all_reduce"]
    head = next(o for o in epi.fwd if o.name == "lm_head")
    assert head.gemm.n == sp.vocab // 8 and head.tp_rule == "vocab"
    assert any(o.collective == "all_reduce" for o in epi.bwd)  # f's backward on the head input
    # tied embeddings: the head's weight is a copy of the embedding's
    assert epi.shared_param_bytes == head.param_bytes == sp.vocab // 8 * sp.hidden * 2


def test_fusion_keeps_gemms_and_dag():
    sp = ZOO["gpt2-xl"]
    plain = _block(build_graph(sp, 512, 1))
    fused = _block(build_graph(sp, 512, 1, fused=True))
    for p in ("fwd", "bwd"):
        a, b = plain.ops(p), fused.ops(p)
        assert len(b) < len(a)
        assert sorted((o.name, o.flops) for o in a if o.kind == "gemm") == \
            sorted((o.name, o.flops) for o in b if o.kind == "gemm")
        _check_dag(b)
        assert sum(o.saved_bytes for o in a) == sum(o.saved_bytes for o in b)
    fc1 = next(o for o in fused.fwd if o.name == "mlp.fc1")
    assert fc1.fused == ("gelu",) and fc1.core_class == "tc+vc"
    assert fc1.bytes_written == next(o for o in plain.fwd if o.name == "mlp.act").bytes_written
    # softmax and norms never fuse
    assert {o.vclass for o in fused.fwd if o.kind == "vector"} == {"layernorm", "softmax", "dropout"}


def test_fusion_rule_on_hand_graph():
    from phaze.model.ops import GemmDims, Op
    g = Op(name="g", kind="gemm", gemm=GemmDims(1, 2, 2, 2), flops=16, bytes_read=10, bytes_written=8)
    h = Op(name="h", kind="gemm", deps=("g",), gemm=GemmDims(1, 2, 2, 2), flops=16, bytes_read=10,
           bytes_written=8)
    v = Op(name="v", kind="vector", deps=("g",), vclass="gelu", elements=4, bytes_read=8, bytes_written=8)
    w = Op(name="w", kind="vector", deps=("v",), vclass="layernorm", elements=4)
    # g has two consumers (h and v): nothing fuses
    assert fuse_epilogues([g, h, v, w]) == [g, h, v, w]
    out = fuse_epilogues([g, v, w])
    assert [o.name for o in out] == ["g", "w"] and out[0].fused == ("gelu",) and out[1].deps == ("g",)
    assert out[0].bytes_read == 10 and out[0].bytes_written == 8


def test_causal_and_encoder_softmax_present():
    for name in ("bert-large", "gpt2-xl"):
        blk = _block(build_graph(ZOO[name], 128))
        sm = next(o for o in blk.fwd if o.vclass == "softmax")
        assert sm.elements == ZOO[name].heads * 128 * 128


def test_gqa_shapes():
    sp = ZOO["llama2-70b"]
    blk = _block(build_graph(sp, 256, 1, 8))
    ops = {o.name: o for o in blk.fwd}
    assert ops["attn.k"].gemm.n == sp.n_kv_heads // 8 * sp.d_head
    assert ops["attn.q"].gemm.n == sp.hidden // 8
    assert ops["attn.scores"].gemm.batch == sp.heads // 8
    assert "attn.rope" in ops and ops["mlp.act"].vclass == "swiglu"


def test_model_graph_totals_consistent():
    sp = ZOO["llama3-8b"]
    g = build_graph(sp, 1024, 2, 4, True)
    assert g.n_layers == sp.layers + 2
    assert len(g.expanded()) == g.n_layers
    pdev = sum(lg.param_count * lg.repeat for lg in g.layers) - sum(
        lg.shared_param_bytes / 2 for lg in g.layers)
    # per-device parameters times t bounds the whole model (replicated norms counted t times)
    assert pdev * 4 >= g.params_total


def test_small_spec_brute_force_saved_bytes():
    # brute force: list every tensor a GPT block keeps for backward (Korthikanti's accounting)
    s, b, h, a = 16, 2, 8, 2
    sp = ModelSpec(name="tiny", hidden=h, layers=1, heads=a, ffn=4 * h, vocab=32, seq=s)
    T = s * b
    kept = {
        "ln1 input": 2 * T * h, "qkv input": 2 * T * h, "q": 2 * T * h, "k": 2 * T * h,
        "softmax output": 2 * b * a * s * s, "attn dropout mask": b * a * s * s,
        "attn dropout output": 2 * b * a * s * s, "v": 2 * T * h, "proj input": 2 * T * h,
        "attn out dropout mask": T * h, "ln2 input": 2 * T * h, "fc1 input": 2 * T * h,
        "gelu input": 2 * T * 4 * h, "fc2 input": 2 * T * 4 * h, "mlp out dropout mask": T * h,
    }
    blk = _block(build_graph(sp, s, b))
    assert blk.activation_bytes["none"] == sum(kept.values())
    assert sum(o.saved_bytes for o in blk.fwd) == sum(kept.values())


def test_dropout_forward_writes_its_mask():
    # a dropout reads x and writes y and the 1-byte mask its backward reads
    g = build_graph(ZOO["gpt-1.7b"], seq=2048, mbs=2, tp=1)
    drops = [o for o in g.layers[1].fwd if o.vclass == "dropout"]
    assert drops
    for o in drops:
        assert o.bytes_written == pytest.approx(o.elements * (2 + 1))
        assert o.bytes_read == pytest.approx(o.elements * 2)


@pytest.mark.parametrize("t,sp", [(1, False), (8, False), (8, True)])
def test_unfused_bias_kernels_as_megatron_runs_them(t, sp):
    # eager linears: QKV adds its bias in a kernel of its own (its consumers are GEMMs);
    # fc1 (bias-GELU), proj and fc2 (bias-dropout-add) leave it to their jit consumer; every
    # biased linear's backward sums dY over the tokens in a reduction (.dbias) and its dW
    # no longer writes the bias. GEMMs and FLOPs are unchanged.
    spec = ZOO["gpt-1.7b"]
    plain = build_graph(spec, seq=2048, mbs=2, tp=t, sequence_parallel=sp)
    eager = build_graph(spec, seq=2048, mbs=2, tp=t, sequence_parallel=sp, unfused_bias=True)
    assert eager.unfused_bias and not plain.unfused_bias
    blk, blk0 = eager.layers[1], plain.layers[1]
    fwd = {o.name: o for o in blk.fwd}
    assert [o.name for o in blk.fwd if o.vclass == "bias"] == ["attn.qkv.bias"]
    qkv = fwd["attn.qkv"]
    b = fwd["attn.qkv.bias"]
    assert b.deps == ("attn.qkv",)
    assert b.bytes_written == qkv.bytes_written and b.elements == qkv.gemm.m * qkv.gemm.n
    # the attention core now reads the biased tensor
    assert all("attn.qkv.bias" in o.deps for o in blk.fwd if o.name in ("attn.scores",))
    dbias = sorted(o.name for o in blk.bwd if o.vclass == "bias_bwd")
    assert dbias == sorted(f"{n}.dbias" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    for o in blk.bwd:
        if o.name.endswith(".dbias"):
            lin = {x.name: x for x in blk0.fwd}[o.name[:-len(".dbias")]]
            assert o.bytes_read == lin.bytes_written            # reads dY once
            assert o.bytes_written == lin.gemm.n * 2             # writes the bias gradient
    dw = {o.name: o for o in blk.bwd if o.name.endswith(".dW")}
    dw0 = {o.name: o for o in blk0.bwd if o.name.endswith(".dW")}
    assert dw["mlp.fc1.dW"].bytes_written == dw0["mlp.fc1.dW"].bytes_written - 4 * spec.hidden // t * 2
    gemm_flops = [sum(o.flops for layer in g.layers for o in layer.fwd + layer.bwd
                      if o.kind == "gemm") for g in (plain, eager)]
    assert gemm_flops[0] == gemm_flops[1]
    # a model without biases is unchanged
    ll = ZOO["llama2-7b"]
    assert build_graph(ll, seq=512, mbs=1, tp=t, unfused_bias=True).layers[1].bwd == \
        build_graph(ll, seq=512, mbs=1, tp=t).layers[1].bwd


def test_unfused_bias_survives_serialisation(tmp_path):
    from phaze.model.serialize import load_graph, save_graph

    g = build_graph(ZOO["gpt-1.7b"], seq=256, mbs=1, tp=2, unfused_bias=True)
    save_graph(g, tmp_path / "g.json")
    assert load_graph(tmp_path / "g.json") == g


def test_row_parallel_bias_goes_after_its_collective():
    # a biased row-parallel linear whose consumer does not absorb the bias (post-norm
    # sandwich, no dropout): Megatron adds the bias after the all-reduce / reduce-scatter,
    # on that collective's output (the 1/t shard under SP)
    from dataclasses import replace

    spec = replace(ZOO["gemma2-9b"], bias=True, out_bias=True, mlp_bias=True)
    for sp in (False, True):
        g = build_graph(spec, seq=256, mbs=1, tp=4, sequence_parallel=sp, unfused_bias=True)
        fwd = {o.name: o for o in g.layers[1].fwd}
        order = [o.name for o in g.layers[1].fwd]
        b = fwd["attn.proj.bias"]
        (coll,) = b.deps
        assert fwd[coll].kind == "collective" and order.index(coll) < order.index(b.name)
        assert b.elements == (256 * spec.hidden // 4 if sp else 256 * spec.hidden)
        # what consumed the reduced output now reads the biased one
        assert not any(coll in o.deps for o in g.layers[1].fwd if o is not b)
        assert any(b.name in o.deps for o in g.layers[1].fwd)


def test_apex_layernorm_backward_runs_its_two_passes_in_order():
    g = build_graph(ZOO["gpt-1.7b"], seq=256, mbs=1, tp=1, apex_layernorm=True)
    bwd = {o.name: o for o in g.layers[1].bwd}
    plain = {o.name: o for o in build_graph(ZOO["gpt-1.7b"], seq=256, mbs=1, tp=1).layers[1].bwd}
    for ln in ("ln1", "ln2"):
        dg, dx = bwd[f"{ln}.bwd.dgamma"], bwd[f"{ln}.bwd"]
        assert dg.name in dx.deps                                    # one stream, in order
        assert dg.bytes_read == 2 * dx.elements * 2                  # dy and x again
        assert dg.bytes_written + dx.bytes_written == plain[f"{ln}.bwd"].bytes_written


def test_fused_gate_up_is_one_gemm_of_the_same_work():
    """Megatron-Core's linear_fc1 of a gated MLP (fused_gate_up): gate and up as one GEMM of
    width 2 ffn. Same parameters, same GEMM FLOPs and saved activations as two GEMMs; one
    GEMM fewer and the input read once."""
    from phaze.model.zoo import resolve_model

    spec = resolve_model("llama3-8b")
    two = build_graph(spec, seq=512, mbs=1, tp=2, sequence_parallel=True)
    one = build_graph(spec.with_(fused_gate_up=True), seq=512, mbs=1, tp=2, sequence_parallel=True)
    assert one.params_total == two.params_total
    a, b = two.layers[1], one.layers[1]
    gemm = lambda L, ps: sum(o.flops for o in getattr(L, ps) if o.kind == "gemm")  # noqa: E731
    for ps in ("fwd", "bwd"):
        assert gemm(a, ps) == gemm(b, ps)
    assert a.activation_bytes == b.activation_bytes
    names = [o.name for o in b.fwd]
    assert "mlp.fc1" in names and "mlp.gate" not in names and "mlp.up" not in names
    read = lambda L: sum(o.bytes_read for o in L.fwd if o.name.startswith("mlp."))  # noqa: E731
    x = 512 * spec.hidden * 2            # the MLP input, bf16, gathered over the TP group
    assert read(a) - read(b) == pytest.approx(x)


def test_evaluate_runs_megatron_linears_whatever_the_checkpoint_layout():
    """`phaze evaluate` (every Megatron-family profile) builds one QKV and one gate+up GEMM:
    the Hugging Face Llama (separate q, k, v, gate, up) and a spec already fused give the
    same plan time (two routes to one model)."""
    from phaze.hw.presets import get_preset
    from phaze.model.zoo import resolve_model
    from phaze.place.evaluate import evaluate_model

    hf = resolve_model("llama3-8b")
    assert not hf.fused_qkv and not hf.fused_gate_up
    kw = dict(tp=2, pp=1, dp=4, mbs=1, batch=32, recompute="none", seq=2048,
              sequence_parallel=True, framework="megatron-core-2024")
    a = evaluate_model(hf, get_preset("h100"), **kw)
    b = evaluate_model(hf.with_(fused_qkv=True, fused_gate_up=True), get_preset("h100"), **kw)
    assert a["time_per_batch_s"] == b["time_per_batch_s"]


@pytest.mark.parametrize("t", [2, 4])
def test_moe_under_tp_runs_megatron_core_alltoall_dispatcher(t):
    """MoE with TP t and sequence parallelism (Megatron-Core's MoEAlltoAllTokenDispatcher,
    core_r0.8): the router on the device's T / t tokens, an all-to-all inside TP from the
    sequence shard to a hidden shard (T / t x h per device), EP dispatch of T k slots of
    h / t, an all-gather of the hidden dimension over TP (T k h) before the experts and a
    reduce-scatter after, the inverse all-to-all. Summed over the TP group the GEMM FLOPs
    and the parameters are the t = 1 graph's."""
    from phaze.model.zoo import resolve_model
    from phaze.place.chain import chain_from_graph

    spec = resolve_model("mixtral-8x7b")
    s, h, k, dt = 256, spec.hidden, spec.top_k, 2
    one = build_graph(spec, seq=s, mbs=1, tp=1)
    g = build_graph(spec, seq=s, mbs=1, tp=t, sequence_parallel=True)
    assert g.params_total == one.params_total
    gemm = lambda g, ps: sum(o.flops * L.repeat for L in g.layers  # noqa: E731
                             for o in getattr(L, ps) if o.kind == "gemm")
    for ps in ("fwd", "bwd"):
        assert gemm(g, ps) * t == pytest.approx(gemm(one, ps), rel=1e-12)
    moe = next(L for L in g.layers if any(o.experts for o in L.fwd))
    ops = {o.name: o for o in moe.fwd}
    assert "mlp.all_gather" not in ops and "mlp.reduce_scatter" not in ops
    assert ops["moe.sp2hp"].collective == ops["moe.hp2sp"].collective == "all_to_all"
    assert ops["moe.sp2hp"].comm_bytes == s // t * h * dt
    assert ops["moe.all_gather"].comm_bytes == ops["moe.reduce_scatter"].comm_bytes == s * k * h * dt
    ch = chain_from_graph(g, layer_latency={li: (1.0, 1.0, 0.0) for li in range(len(g.layers))})
    assert ch.a2a_bytes.max() == s * k * h * dt / t      # the EP all-to-all: h / t per slot
