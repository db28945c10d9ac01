"""Training operator graphs: ModelSpec + (seq, microbatch, TP width, options) -> ModelGraph.

Each layer kind (prologue, transformer block, epilogue) is first written as a forward
dataflow of nodes (GEMM, vector op, collective, or a node that is the identity in the
forward pass such as Megatron's `f`). The backward pass is derived from that dataflow:

- a GEMM C = A @ B becomes two GEMMs, dA = dC @ B^T (".dX") and dB = A^T @ dC (".dW");
  for a linear layer B is the weight, so ".dW" is the weight gradient;
- a vector op becomes one backward vector op (vclass + "_bwd");
- a collective becomes its Megatron conjugate (Shoeybi et al. 2019, Korthikanti et al.
  2023): all-reduce (g) <-> identity (f), all-gather <-> reduce-scatter;
- a tensor consumed by several ops gets a gradient-accumulation add (".gacc").

Sizes are per device of a tensor-parallel group of width t (Megatron column/row sharding
of attention and MLP, vocabulary-parallel embedding and LM head; with sequence
parallelism the norms, dropouts and residual adds work on s/t tokens).

Saved bytes follow Korthikanti et al. (MLSys 2023, Sec. 4): each op records the tensors
its backward needs (inputs kept in the training dtype, dropout masks at 1 byte/element),
a tensor shared by several ops counted once. A block then keeps
s b h (34 + 5 a s / h) bytes without parallelism.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from phaze.model.ops import GemmDims, LayerGraph, ModelGraph, Op
from phaze.model.spec import ModelSpec

# FLOP per produced element of vector ops (forward, backward). Rough operation counts of
# the usual kernels; they matter only for roofline estimates (GEMMs dominate).
VECTOR_FLOPS = {
    "layernorm": (8, 16), "rmsnorm": (5, 10), "softmax": (5, 4), "dropout": (2, 1),
    "gelu": (10, 14), "relu": (1, 1), "swiglu": (6, 10), "add": (1, 0), "rope": (3, 3),
    "embedding": (1, 1), "cross_entropy": (5, 2), "tanh": (5, 3),
}
# element-wise classes a GEMM can absorb as its epilogue (the reference's TC+VC ops)
FUSABLE = {"gelu", "relu", "swiglu", "dropout", "add", "rope", "tanh",
           "gelu_bwd", "relu_bwd", "swiglu_bwd", "dropout_bwd", "rope_bwd", "tanh_bwd"}
MASK_BYTES = 1      # dropout mask, one byte per element (Korthikanti)
LOGIT_BYTES = 4     # cross-entropy keeps fp32 logits (Korthikanti Sec. 4.3)
TOKEN_ID_BYTES = 8  # int64 token ids


@dataclass
class _Node:
    name: str
    inputs: tuple[str, ...]            # producer node names; "in" = the layer's input
    in_bytes: tuple[float, ...]        # bytes of each input tensor (one device)
    out_bytes: float
    out_elements: int
    kind: str                          # gemm | vector | collective | identity
    bwd: str                           # gemm_linear | gemm_act | vector | pass | pass_leaf | leaf | collective
    vclass: str = ""
    gemm: GemmDims | None = None
    b_bytes: float = 0.0               # bytes of the GEMM's B operand (weight or activation)
    collective: str = ""
    bwd_collective: str = ""           # conjugate collective in backward ("" = identity)
    comm_bytes: float = 0.0
    params_dev: int = 0                # parameters resident on one device
    params_unique: int = 0             # parameters of the whole model this node owns (all shards)
    params_shared: int = 0             # resident parameters that are a copy of another layer's (tied)
    bias_n: int = 0                    # bias length of a linear (its gradient comes out of .dW)
    saved: float = 0.0                 # bytes kept for backward
    selective_drop: float = 0.0        # part of `saved` that selective recomputation drops
    tp_rule: str = "replicated"
    accumulate: bool = True            # several consumers -> a gradient add (False: disjoint slices)
    regather: float = 0.0              # SP: all-gather the input again in backward (bytes) for .dW
    selective: bool = False            # re-run by selective recomputation (attention core)


class _Layer:
    """Forward dataflow of one layer kind, turned into forward and backward op lists."""

    def __init__(self, dt: int, tp: int):
        self.dt = dt
        self.tp = tp
        self.nodes: dict[str, _Node] = {}
        self.out_of: dict[str, float] = {"in": 0.0}

    def add(self, node: _Node) -> str:
        assert node.name not in self.nodes and node.name != "in", node.name
        for p in node.inputs:
            assert p == "in" or p in self.nodes, (node.name, p)
        self.nodes[node.name] = node
        return node.name

    # --- node helpers ------------------------------------------------------------
    def linear(self, name, x, tokens, k, n, *, rule, bias, saved, unique=None, shared=0, regather=0.0):
        """Y[tokens, n] = X[tokens, k] @ W[k, n] (+ bias), k and n already per-device shards."""
        dt = self.dt
        w = k * n
        b = n if bias else 0
        params_dev = w + b
        if unique is None:  # whole model: column/vocab shard weight and bias, row the weight only
            unique = {"column": params_dev * self.tp, "vocab": params_dev * self.tp,
                      "row": w * self.tp + b}.get(rule, params_dev)
        return self.add(_Node(
            name=name, inputs=(x,), in_bytes=(tokens * k * dt,), out_bytes=tokens * n * dt,
            out_elements=tokens * n, kind="gemm", bwd="gemm_linear", gemm=GemmDims(1, tokens, n, k),
            b_bytes=w * dt, params_dev=params_dev, params_unique=unique, params_shared=shared,
            bias_n=b, saved=saved, tp_rule=rule, regather=regather))

    def bmm(self, name, a, b, *, batch, m, n, k, a_bytes, b_bytes, saved, selective_drop=0.0):
        return self.add(_Node(
            name=name, inputs=(a, b), in_bytes=(a_bytes, b_bytes), out_bytes=batch * m * n * self.dt,
            out_elements=batch * m * n, kind="gemm", bwd="gemm_act", gemm=GemmDims(batch, m, n, k),
            b_bytes=b_bytes, saved=saved, selective_drop=selective_drop, tp_rule="column"))

    def vector(self, name, inputs, vclass, elements, *, in_bytes=None, out_bytes=None, saved=0.0,
               rule="replicated", bwd="vector", params=0, unique=None, selective_drop=0.0,
               accumulate=True):
        dt = self.dt
        if in_bytes is None:
            in_bytes = tuple(elements * dt for _ in inputs)
        return self.add(_Node(
            name=name, inputs=tuple(inputs), in_bytes=tuple(in_bytes),
            out_bytes=elements * dt if out_bytes is None else out_bytes, out_elements=elements,
            kind="vector", bwd=bwd, vclass=vclass, params_dev=params,
            params_unique=params if unique is None else unique, saved=saved,
            selective_drop=selective_drop, tp_rule=rule, accumulate=accumulate))

    def collective(self, name, x, coll, bwd_coll, full_bytes, in_b, out_b, rule="replicated"):
        return self.add(_Node(
            name=name, inputs=(x,), in_bytes=(in_b,), out_bytes=out_b, out_elements=int(out_b // self.dt),
            kind="collective", bwd="collective", collective=coll, bwd_collective=bwd_coll,
            comm_bytes=full_bytes, tp_rule=rule))

    def identity(self, name, x, bwd_coll, full_bytes, rule="replicated"):
        """Megatron's f: identity forward, `bwd_coll` (all-reduce) on the gradient."""
        return self.add(_Node(
            name=name, inputs=(x,), in_bytes=(full_bytes,), out_bytes=full_bytes,
            out_elements=int(full_bytes // self.dt), kind="identity", bwd="collective",
            bwd_collective=bwd_coll, comm_bytes=full_bytes, tp_rule=rule))

    # --- passes ---------------------------------------------------------------------
    def forward_ops(self) -> list[Op]:
        ops = []
        for n in self.nodes.values():
            if n.kind == "identity":
                continue
            deps = self._fwd_deps(n)
            common = dict(name=n.name, deps=deps, bytes_read=sum(n.in_bytes) + _wbytes(n, self.dt),
                          bytes_written=n.out_bytes, param_bytes=n.params_dev * self.dt,
                          saved_bytes=n.saved, tp_rule=n.tp_rule,
                          selective_recompute=n.selective)
            if n.kind == "gemm":
                bread = n.in_bytes[0] + n.b_bytes + n.bias_n * self.dt
                ops.append(Op(kind="gemm", flops=n.gemm.flops, gemm=n.gemm,
                              **{**common, "bytes_read": bread}))
            elif n.kind == "vector":
                if n.vclass == "embedding":  # a gather reads only the rows it looks up
                    common["bytes_read"] = sum(n.in_bytes) + n.out_bytes
                ops.append(Op(kind="vector", vclass=n.vclass, elements=n.out_elements,
                              flops=float(VECTOR_FLOPS[n.vclass][0] * n.out_elements), **common))
            else:
                ops.append(Op(kind="collective", collective=n.collective, group="tp",
                              comm_bytes=n.comm_bytes, **common))
        return ops

    def _fwd_deps(self, n: _Node) -> tuple[str, ...]:
        out: list[str] = []
        for p in n.inputs:
            for d in self._resolve(p):
                if d not in out:
                    out.append(d)
        return tuple(out)

    def _resolve(self, p: str) -> list[str]:
        if p == "in":
            return []
        node = self.nodes[p]
        if node.kind == "identity":
            r: list[str] = []
            for q in node.inputs:
                r += self._resolve(q)
            return r
        return [p]

    def backward_ops(self) -> list[Op]:
        dt = self.dt
        ops: list[Op] = []
        contrib: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        names = list(self.nodes)
        regathered: set[str] = set()

        def ready(name: str, elements: int, accumulate: bool) -> tuple[str, ...]:
            cs = contrib.get(name, [])
            if not cs:
                return ()
            if len(cs) == 1:
                return cs[0]
            union: list[str] = []
            for c in cs:
                union += [d for d in c if d not in union]
            if not accumulate:
                return tuple(union)
            g = f"{'input' if name == 'in' else name}.gacc"
            ops.append(Op(name=g, kind="vector", deps=tuple(union), vclass="add", elements=elements,
                          flops=float((len(cs) - 1) * elements), bytes_read=len(cs) * elements * dt,
                          bytes_written=elements * dt))
            return (g,)

        for name in reversed(names):
            n = self.nodes[name]
            gr = ready(name, n.out_elements, n.accumulate)
            per_input: list[tuple[str, ...] | None] = [None] * len(n.inputs)
            if n.bwd == "gemm_linear":
                g = n.gemm
                dx = Op(name=f"{name}.dX", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.m, g.k, g.n),
                        flops=g.flops, bytes_read=n.out_bytes + n.b_bytes, bytes_written=n.in_bytes[0],
                        tp_rule=n.tp_rule)
                wdeps = gr
                if n.regather:  # SP keeps only the shard of the input: gather it again for .dW
                    rg = f"{n.inputs[0]}.regather"
                    if rg not in regathered:
                        regathered.add(rg)
                        ops.append(Op(name=rg, kind="collective", collective="all_gather", group="tp",
                                      comm_bytes=n.regather, bytes_read=n.regather / self.tp,
                                      bytes_written=n.regather, tp_rule="sharded"))
                    wdeps = gr + (rg,)
                dw = Op(name=f"{name}.dW", kind="gemm", deps=wdeps, gemm=GemmDims(g.batch, g.k, g.n, g.m),
                        flops=g.flops, bytes_read=n.in_bytes[0] + n.out_bytes,
                        bytes_written=n.b_bytes + n.bias_n * dt, tp_rule=n.tp_rule)
                ops += [dx, dw]
                per_input[0] = (dx.name,)
            elif n.bwd == "gemm_act":
                g = n.gemm
                da = Op(name=f"{name}.dX", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.m, g.k, g.n),
                        flops=g.flops, bytes_read=n.out_bytes + n.in_bytes[1], bytes_written=n.in_bytes[0],
                        tp_rule=n.tp_rule)
                db = Op(name=f"{name}.dW", kind="gemm", deps=gr, gemm=GemmDims(g.batch, g.k, g.n, g.m),
                        flops=g.flops, bytes_read=n.in_bytes[0] + n.out_bytes, bytes_written=n.in_bytes[1],
                        tp_rule=n.tp_rule)
                ops += [da, db]
                per_input = [(da.name,), (db.name,)]
            elif n.bwd in ("vector", "leaf", "pass_leaf"):
                vc = f"{n.vclass}_bwd"
                bread = n.out_bytes + sum(n.in_bytes) + n.params_dev * dt
                bwritten = (sum(n.in_bytes) if n.bwd == "vector" else 0.0) + n.params_dev * dt
                if n.vclass == "dropout":
                    bread = n.out_bytes + n.out_elements * MASK_BYTES
                elif n.vclass == "embedding":  # scatter-add of the touched rows
                    bread = n.out_bytes + (sum(n.in_bytes) if n.bwd == "leaf" else 0.0)
                    bwritten = n.out_bytes
                op = Op(name=f"{name}.bwd", kind="vector", deps=gr, vclass=vc, elements=n.out_elements,
                        flops=float(VECTOR_FLOPS[n.vclass][1] * n.out_elements), bytes_read=bread,
                        bytes_written=bwritten, tp_rule=n.tp_rule)
                ops.append(op)
                if n.bwd == "vector":
                    per_input = [(op.name,)] * len(n.inputs)
                elif n.bwd == "pass_leaf":
                    per_input = [gr] * len(n.inputs)
            elif n.bwd == "pass":
                per_input = [gr] * len(n.inputs)
            elif n.bwd == "collective":
                if n.bwd_collective:
                    rd, wr = _coll_bytes(n.bwd_collective, n.comm_bytes, self.tp)
                    op = Op(name=f"{name}.bwd", kind="collective", deps=gr, collective=n.bwd_collective,
                            group="tp", comm_bytes=n.comm_bytes, bytes_read=rd, bytes_written=wr,
                            tp_rule=n.tp_rule)
                    ops.append(op)
                    per_input = [(op.name,)]
                else:
                    per_input = [gr]
            else:  # pragma: no cover - builder bug
                raise AssertionError(n.bwd)
            for p, c in zip(n.inputs, per_input):
                if c is not None:
                    contrib[p].append(c)
        # the gradient of the layer input (sent to the previous layer) must be complete
        n_in = self.out_of.get("in_elements", 0)
        ready("in", int(n_in), True)
        return ops


def _wbytes(n: _Node, dt: int) -> float:
    return n.params_dev * dt if n.kind == "vector" else 0.0


def _coll_bytes(coll: str, full: float, t: int) -> tuple[float, float]:
    """(bytes read, bytes written) on one device for a collective of `full` bytes."""
    if coll == "all_gather":
        return full / t, full
    if coll == "reduce_scatter":
        return full, full / t
    return full, full


# --- fusion ---------------------------------------------------------------------------
def fuse_epilogues(ops: list[Op]) -> list[Op]:
    """Merge element-wise ops into the GEMM that produces their input when that GEMM has
    no other consumer: the fused op keeps the GEMM's name, `flops` (== gemm.flops) and
    dims, lists the absorbed vector classes in `fused`, and `elements` counts the
    elements its vector epilogue produces. The intermediate tensor is neither written nor
    read again."""
    ops = list(ops)
    changed = True
    while changed:
        changed = False
        consumers: dict[str, list[str]] = defaultdict(list)
        for o in ops:
            for d in o.deps:
                consumers[d].append(o.name)
        by_name = {o.name: o for o in ops}
        for v in ops:
            if v.kind != "vector" or v.vclass not in FUSABLE:
                continue
            gs = [by_name[d] for d in v.deps if by_name[d].kind == "gemm" and consumers[d] == [v.name]]
            if not gs:
                continue
            g = gs[0]
            deps = list(g.deps) + [d for d in v.deps if d != g.name and d not in g.deps]
            merged = replace(g, deps=tuple(deps), fused=g.fused + (v.vclass,), elements=v.elements,
                             bytes_read=g.bytes_read + v.bytes_read - g.bytes_written,
                             bytes_written=v.bytes_written, saved_bytes=g.saved_bytes + v.saved_bytes,
                             param_bytes=g.param_bytes + v.param_bytes)
            out = []
            for o in ops:
                if o.name == v.name:
                    continue
                if o.name == g.name:
                    o = merged
                elif v.name in o.deps:
                    o = replace(o, deps=tuple(dict.fromkeys(g.name if d == v.name else d for d in o.deps)))
                out.append(o)
            # the fused op must sit after all its deps in list order
            ops = _topo(out)
            changed = True
            break
    return ops


def _topo(ops: list[Op]) -> list[Op]:
    done: set[str] = set()
    out: list[Op] = []
    pending = list(ops)
    while pending:
        rest = []
        for o in pending:
            if all(d in done for d in o.deps):
                out.append(o)
                done.add(o.name)
            else:
                rest.append(o)
        if len(rest) == len(pending):  # pragma: no cover - builder bug
            raise AssertionError("cycle in op graph")
        pending = rest
    return out


# --- the model ------------------------------------------------------------------------
@dataclass
class _Ctx:
    spec: ModelSpec
    s: int
    b: int
    t: int
    sp: bool
    dt: int

    @property
    def T(self) -> int:          # tokens of one microbatch
        return self.s * self.b

    @property
    def Ts(self) -> int:         # tokens one device holds outside the TP regions
        return self.T // self.t if self.sp else self.T

    @property
    def vt(self) -> int:         # vocabulary shard (Megatron pads V to a multiple of t)
        return -(-self.spec.vocab // self.t)


def build_graph(spec: ModelSpec, seq: int | None = None, mbs: int = 1, tp: int = 1,
                sequence_parallel: bool = False, fused: bool = False, dtype_bytes: int = 2) -> ModelGraph:
    """The training operator graph of `spec` for one microbatch on one device of a TP group."""
    seq = spec.seq if seq is None else seq
    spec.check_run(seq, mbs, tp, sequence_parallel)
    if tp == 1:
        sequence_parallel = False
    c = _Ctx(spec, seq, mbs, tp, sequence_parallel, dtype_bytes)
    layers, uniques = [], 0
    for kind, fn, rep in (("prologue", _prologue, 1), ("block", _block, spec.layers),
                          ("epilogue", _epilogue, 1)):
        lg, unique = _finish(kind, rep, fn(c), c, fused)
        layers.append(lg)
        uniques += unique * rep
    return ModelGraph(model=spec.name, seq=seq, mbs=mbs, tp=tp, sequence_parallel=sequence_parallel,
                      fused=fused, dtype_bytes=dtype_bytes, layers=tuple(layers), params_total=uniques)


def _finish(kind: str, repeat: int, built, c: _Ctx, fused: bool) -> tuple[LayerGraph, int]:
    L, in_bytes, out_bytes, full_bytes = built
    fwd, bwd = L.forward_ops(), L.backward_ops()
    if fused:
        fwd, bwd = fuse_epilogues(fwd), fuse_epilogues(bwd)
    nodes = L.nodes.values()
    saved = sum(n.saved for n in nodes)
    drop = sum(n.selective_drop for n in nodes)
    # blocks under full recomputation keep only their input; prologue and epilogue are
    # never recomputed (Megatron), so their three figures are equal
    acts = {"none": float(saved), "selective": float(saved - drop),
            "full": float(full_bytes if full_bytes else saved - drop)}
    pdev = sum(n.params_dev for n in nodes)
    lg = LayerGraph(kind=kind, repeat=repeat, fwd=tuple(fwd), bwd=tuple(bwd), param_count=pdev,
                    param_bytes=float(pdev * c.dt), activation_bytes=acts, input_bytes=in_bytes,
                    output_bytes=out_bytes)
    shared = sum(n.params_shared for n in nodes)
    if shared and hasattr(lg, "shared_param_bytes"):
        lg = replace(lg, shared_param_bytes=float(shared * c.dt))
    return lg, sum(n.params_unique for n in nodes)


def _enter_tp(L: _Layer, c: _Ctx, x: str, prefix: str, width: int) -> tuple[str, float]:
    """Enter a column-parallel region: returns (node, regather bytes for .dW under SP)."""
    full = c.T * width * c.dt
    if c.t == 1:
        return x, 0.0
    if c.sp:
        return L.collective(f"{prefix}.all_gather", x, "all_gather", "reduce_scatter", full,
                            full / c.t, full, rule="sharded"), full
    return L.identity(f"{prefix}.f", x, "all_reduce", full), 0.0


def _exit_tp(L: _Layer, c: _Ctx, x: str, prefix: str, width: int) -> str:
    full = c.T * width * c.dt
    if c.t == 1:
        return x
    if c.sp:
        return L.collective(f"{prefix}.reduce_scatter", x, "reduce_scatter", "all_gather", full,
                            full, full / c.t, rule="sharded")
    return L.collective(f"{prefix}.all_reduce", x, "all_reduce", "", full, full, full)


def _norm(L: _Layer, c: _Ctx, name: str, x: str, width: int | None = None) -> str:
    sp = c.spec
    w = width or sp.hidden
    n_params = w * (2 if sp.norm == "layernorm" else 1)
    el = c.Ts * w
    return L.vector(name, (x,), sp.norm, el, saved=el * c.dt, params=n_params,
                    rule="sharded" if c.sp else "replicated")


def _dropout(L: _Layer, c: _Ctx, name: str, x: str, elements: int, rule: str, selective=False) -> str:
    if not c.spec.dropout:
        return x
    saved = elements * MASK_BYTES
    return L.vector(name, (x,), "dropout", elements, saved=saved, rule=rule,
                    selective_drop=saved if selective else 0.0)


def _block(c: _Ctx):
    sp, L, dt, t = c.spec, _Layer(c.dt, c.t), c.dt, c.t
    h, T, Ts, s, b = sp.hidden, c.T, c.Ts, c.s, c.b
    d, a, kv = sp.d_head, sp.heads // t, sp.n_kv_heads // t
    srule = "sharded" if c.sp else "replicated"
    L.out_of["in_elements"] = Ts * h

    def attention(x: str) -> str:
        xin, regather = _enter_tp(L, c, x, "attn", h)
        bias = sp.bias
        if sp.fused_qkv:
            n_out = (a + 2 * kv) * d
            qkv = L.linear("attn.qkv", xin, T, h, n_out, rule="column", bias=bias,
                           saved=Ts * h * dt, regather=regather)
            q = k = v = qkv
        else:
            q = L.linear("attn.q", xin, T, h, a * d, rule="column", bias=bias,
                         saved=Ts * h * dt, regather=regather)
            k = L.linear("attn.k", xin, T, h, kv * d, rule="column", bias=bias,
                         saved=0.0, regather=regather)
            v = L.linear("attn.v", xin, T, h, kv * d, rule="column", bias=bias,
                         saved=0.0, regather=regather)
        if sp.position == "rope":
            ins = (q,) if q == k else (q, k)
            el = T * (a + kv) * d
            rope = L.vector("attn.rope", ins, "rope", el, in_bytes=tuple(T * n * d * dt for n in
                            ((a + 2 * kv,) if q == k else (a, kv))), rule="column", accumulate=False)
            q = k = rope
        if sp.fused_qkv:
            L.nodes["attn.qkv"].accumulate = False  # q, k, v are slices of one tensor
        qk_bytes = T * (a + kv) * d * dt
        scores = L.bmm("attn.scores", q, k, batch=b * a, m=s, n=s, k=d, a_bytes=T * a * d * dt,
                       b_bytes=T * kv * d * dt, saved=qk_bytes)
        p_el = b * a * s * s
        probs = L.vector("attn.softmax", (scores,), "softmax", p_el, saved=p_el * dt, rule="column",
                         selective_drop=p_el * dt)
        probs = _dropout(L, c, "attn.dropout", probs, p_el, "column", selective=True)
        ctx = L.bmm("attn.context", probs, v, batch=b * a, m=s, n=d, k=s, a_bytes=p_el * dt,
                    b_bytes=T * kv * d * dt, saved=p_el * dt + T * kv * d * dt, selective_drop=p_el * dt)
        for core in {scores, probs, ctx, "attn.softmax"}:   # what selective recompute re-runs
            L.nodes[core].selective = True
        proj = L.linear("attn.proj", ctx, T, a * d, h, rule="row", bias=sp.bias,
                        saved=T * a * d * dt)
        return _exit_tp(L, c, proj, "attn", h)

    def mlp(x: str) -> str:
        xin, regather = _enter_tp(L, c, x, "mlp", h)
        f = sp.ffn // t
        if sp.activation == "swiglu":
            gate = L.linear("mlp.gate", xin, T, h, f, rule="column", bias=sp.bias,
                            saved=Ts * h * dt, regather=regather)
            up = L.linear("mlp.up", xin, T, h, f, rule="column", bias=sp.bias,
                          saved=0.0, regather=regather)
            act = L.vector("mlp.act", (gate, up), "swiglu", T * f, saved=2 * T * f * dt, rule="column")
        else:
            fc1 = L.linear("mlp.fc1", xin, T, h, f, rule="column", bias=sp.bias,
                           saved=Ts * h * dt, regather=regather)
            act = L.vector("mlp.act", (fc1,), sp.activation, T * f, saved=T * f * dt, rule="column")
        fc2 = L.linear("mlp.fc2", act, T, f, h, rule="row", bias=sp.bias,
                       saved=T * f * dt)
        return _exit_tp(L, c, fc2, "mlp", h)

    x = "in"
    if sp.pre_norm:
        y = attention(_norm(L, c, "ln1", x))
        y = _dropout(L, c, "attn.out_dropout", y, Ts * h, srule)
        r1 = L.vector("residual1", (y, x), "add", Ts * h, rule=srule, bwd="pass")
        y = mlp(_norm(L, c, "ln2", r1))
        y = _dropout(L, c, "mlp.out_dropout", y, Ts * h, srule)
        L.vector("residual2", (y, r1), "add", Ts * h, rule=srule, bwd="pass")
    else:
        y = attention(x)
        y = _dropout(L, c, "attn.out_dropout", y, Ts * h, srule)
        r1 = L.vector("residual1", (y, x), "add", Ts * h, rule=srule, bwd="pass")
        n1 = _norm(L, c, "ln1", r1)
        y = mlp(n1)
        y = _dropout(L, c, "mlp.out_dropout", y, Ts * h, srule)
        r2 = L.vector("residual2", (y, n1), "add", Ts * h, rule=srule, bwd="pass")
        _norm(L, c, "ln2", r2)
    io = Ts * h * dt
    return L, io, io, io


def _prologue(c: _Ctx):
    sp, L, dt = c.spec, _Layer(c.dt, c.t), c.dt
    h, e, T, Ts = sp.hidden, sp.embed_dim, c.T, c.Ts
    srule = "sharded" if c.sp else "replicated"
    L.out_of["in_elements"] = 0
    # vocabulary-parallel lookup: each device holds ceil(V/t) rows, masked partial sums
    x = L.vector("embed.word", ("in",), "embedding", T * e, in_bytes=(T * TOKEN_ID_BYTES,),
                 saved=T * TOKEN_ID_BYTES, rule="vocab", bwd="leaf", params=c.vt * e,
                 unique=sp.vocab * e)
    if c.t > 1:
        full = T * e * dt
        if c.sp:
            x = L.collective("embed.reduce_scatter", x, "reduce_scatter", "all_gather", full, full,
                             full / c.t, rule="sharded")
        else:
            x = L.collective("embed.all_reduce", x, "all_reduce", "", full, full, full)
    if sp.embed_proj_dim:
        x = L.linear("embed.project_in", x, Ts, e, h, rule="replicated", bias=False,
                     saved=Ts * e * dt)
    if sp.position == "learned":
        x = L.vector("embed.position", (x,), "embedding", Ts * h, rule=srule, bwd="pass_leaf",
                     params=sp.position_rows * h)
    if sp.token_types:
        x = L.vector("embed.token_type", (x,), "embedding", Ts * h, rule=srule, bwd="pass_leaf",
                     params=sp.token_types * h)
    if sp.embed_norm:
        x = _norm(L, c, "embed.norm", x)
    x = _dropout(L, c, "embed.dropout", x, Ts * h, srule)
    return L, T * TOKEN_ID_BYTES, Ts * h * dt, 0.0


def _epilogue(c: _Ctx):
    sp, L, dt = c.spec, _Layer(c.dt, c.t), c.dt
    h, e, T, Ts = sp.hidden, sp.embed_dim, c.T, c.Ts
    srule = "sharded" if c.sp else "replicated"
    L.out_of["in_elements"] = Ts * h
    x = "in"
    if sp.pooler:  # BERT pooler: dense + tanh on the first token of each sequence
        p = L.linear("pooler.dense", x, c.b, h, h, rule="replicated", bias=True,
                     saved=c.b * h * dt)
        L.vector("pooler.tanh", (p,), "tanh", c.b * h, saved=c.b * h * dt)
    if sp.final_norm:
        x = _norm(L, c, "final_norm", x)
    if sp.mlm_head:
        x = L.linear("mlm.dense", x, Ts, h, h, rule=srule, bias=True,
                     saved=Ts * h * dt)
        x = L.vector("mlm.act", (x,), "gelu", Ts * h, saved=Ts * h * dt, rule=srule)
        x = _norm(L, c, "mlm.norm", x)
    if sp.embed_proj_dim:
        x = L.linear("embed.project_out", x, Ts, h, e, rule=srule, bias=False,
                     saved=Ts * h * dt)
    xin, regather = _enter_tp(L, c, x, "lm_head", e)
    tied = sp.tied_embeddings
    bias = sp.mlm_head  # BERT's decoder has an output bias
    vt = c.vt
    logits = L.linear("lm_head", xin, T, e, vt, rule="vocab", bias=bias,
                      saved=Ts * e * dt, regather=regather,
                      unique=(sp.vocab if bias else 0) + (0 if tied else sp.vocab * e),
                      shared=e * vt if tied else 0)
    loss = L.vector("loss", (logits,), "cross_entropy", T * vt, saved=T * vt * LOGIT_BYTES, rule="vocab")
    if c.t > 1:  # vocab-parallel cross entropy: all-reduce max, sum of exp and target logit (fp32)
        stats = 3 * T * 4
        L.collective("loss.all_reduce", loss, "all_reduce", "", stats, stats, stats)
    return L, Ts * h * dt, 0.0, 0.0
