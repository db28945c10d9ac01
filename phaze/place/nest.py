"""NEST compatibility mode: the placement DP of NEST (MLSys 2026, the successor of PHAZE's
DP) on NEST's own instance format, with its semantics and its flaws (docs/nest.md).

Like reference mode for PHAZE, this is a compatibility mode: the numbers are NEST's
(latencies in its estimator's unit, communication in seconds, added as they are). Phaze's
default mode does not share the flaws listed in docs/nest.md.

Semantics, for each TP width t of the instance (ascending; the best time wins, ties keep the
smaller t):
  * layers renumbered in the topological order of a stack-based Kahn walk; the instance must
    be a chain (every consecutive pair joined by an edge; extra forward edges are allowed);
  * a stage uses a = t * ep * cp devices; stages are placed from the end of the chain on
    consecutive device blocks, block q = devices [q a, (q+1) a);
  * the level of a hop = the first network level whose group (product of devices_per_level
    up to it) holds both devices (C integer division, so device -1 counts as device 0);
  * transfer over level i: bytes / bw_i + lat_i at level 0, 2 (bytes / bw_i + lat_i) above,
    where bw_i = min(bws[0..i]) (the "pipeline" bandwidths);
  * stage loads per (forward level f, backward level b): fw_f = in-transfer + sum Fw;
    without recompute + out-transfer + sum Bw; with recompute + max(sum Bw, out-transfer)
    + sum Bw (the recomputed forward costed with Bw: a NEST flaw);
  * memory: 2P + (6P if Adam) + A + (s-1) stash (stash = incoming edge bytes with
    recomputation, else A), feasible positions up to maxDevices;
  * DP over (level, suffix, devices k, stages s) with NEST's update rule (an entry is
    updated when the new candidate beats the current level-0 value against the worst-level
    candidate, or when it improves the sum over levels), keeping the device skeleton of
    the last accepted update;
  * final round over d = 1..min(maxDevices, mbsInBatch), K = maxDevices // d,
    M = ceil(mbsInBatch / d): max(rest, first stage load at levels (0, 0)) (M + s - 1)
    + hierarchical all-reduce of the FIRST stage's parameters only;
  * the plan is rebuilt by NEST's reconstruction, and the time reported is NEST's
    re-evaluation of that plan on the final skeleton (first/last node lookups clamped).
ZeRO in NEST is only tried when the last layer alone fits on no device; its time then comes
from an external network simulator, so such instances are refused (one line, exit 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phaze.errors import UserError

INFTY = 1e30          # NEST's "infinity" for DP entries
FIELD = "--nest-instance"


@dataclass(frozen=True)
class NestWidth:
    t: int
    fw: tuple[float, ...]
    bw: tuple[float, ...]
    param: tuple[float, ...]
    act: tuple[float, ...]
    incoming: tuple[tuple[tuple[int, float], ...], ...]   # v -> ((u, bytes), ...)
    outgoing: tuple[tuple[tuple[int, float], ...], ...]


@dataclass(frozen=True)
class NestInstance:
    max_memory: float
    max_devices: int
    mbs_in_batch: int
    recompute: bool
    adam: bool
    bws_pp: tuple[float, ...]       # bandwidths of pipeline hops (prefix minimum)
    bws_dp: tuple[float, ...]       # bandwidths of the all-reduce (as given)
    latency: tuple[float, ...]
    devices_per_level: tuple[int, ...]
    ep: int
    cp: int
    ids: tuple[int, ...]            # original ids in the renumbered order
    widths: dict[int, NestWidth]

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def levels(self) -> int:
        return len(self.bws_pp)


# --------------------------------------------------------------------------- reading

def load_nest_instance(path: str | Path) -> NestInstance:
    from phaze.files import read_json

    return parse_nest_instance(read_json(path, FIELD, want=None))


def _number(raw: dict, key: str, positive: bool = False) -> float:
    if key not in raw:
        raise UserError("missing key", field=key, fix="write NEST's instance format")
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UserError(f"must be a finite number, got {v!r}", field=key,
                        fix="give a finite number")
    if v < 0 or (positive and v <= 0):
        raise UserError(f"must be {'> 0' if positive else '>= 0'}, got {v!r}", field=key,
                        fix=f"give {key} {'> 0' if positive else '>= 0'}")
    return float(v)


def _numbers(raw: dict, key: str, positive: bool) -> list[float]:
    v = raw.get(key)
    if not isinstance(v, list) or not v:
        raise UserError("must be a non-empty list of numbers", field=key,
                        fix="give a non-empty list of numbers")
    return [_number({key: x}, key, positive) for x in v]


def _int(raw: dict, key: str, default=None) -> int:
    if key not in raw and default is not None:
        return default
    x = _number(raw, key, positive=True)
    if x != int(x) and key != "mbsInBatch":
        raise UserError(f"must be an integer, got {raw[key]!r}", field=key,
                        fix=f"give {key} as a whole number")
    return int(x)          # NEST reads mbsInBatch (a float in its files) as an int


def parse_nest_instance(raw) -> NestInstance:
    if not isinstance(raw, dict):
        raise UserError("the instance must be a JSON object", field=FIELD,
                        fix="give a JSON object in NEST's instance format")
    max_memory = _number(raw, "maxMemoryPerDevice", positive=True)
    max_devices = _int(raw, "maxDevices")
    mbs = _int(raw, "mbsInBatch")
    bws = _numbers(raw, "bws", positive=True)
    lat = _numbers(raw, "latency_per_level", positive=False)
    dpl = _numbers(raw, "devices_per_level", positive=True)
    if any(x != int(x) for x in dpl):
        raise UserError("must be integers", field="devices_per_level",
                        fix="give whole device counts")
    if not (len(bws) == len(lat) == len(dpl)):
        raise UserError(f"bws, latency_per_level and devices_per_level differ in length "
                        f"({len(bws)}, {len(lat)}, {len(dpl)})", field="bws",
                        fix="give the three lists one entry per network level each")
    if len(bws) < 3:
        raise UserError(f"NEST's DP needs at least 3 network levels, got {len(bws)}",
                        field="bws", fix="pad the network with levels (e.g. a 1-wide spine)")
    for key in ("activationRecomputation",):
        if not isinstance(raw.get(key), bool):
            raise UserError("must be true or false", field=key, fix="give true or false")
    opt = raw.get("optimizerAlgorithm")
    if opt not in ("SGD", "Adam"):
        raise UserError(f"must be SGD or Adam, got {opt!r}", field="optimizerAlgorithm",
                        fix="use SGD or Adam")
    ep, cp = _int(raw, "ep_degree", 1), _int(raw, "cp_degree", 1)
    nodes, edges = raw.get("nodes"), raw.get("edges")
    if not isinstance(nodes, dict) or not nodes:
        raise UserError("must be an object {t: [layers]}", field="nodes",
                        fix="give nodes as {\"1\": [layers], ...}")
    if not isinstance(edges, dict) or set(edges) != set(nodes):
        raise UserError("must be an object with the same widths as nodes", field="edges",
                        fix="give edges the same width keys as nodes")
    widths_raw = {}
    for key in nodes:
        try:
            t = int(key)
        except ValueError:
            raise UserError(f"width {key!r} is not an integer", field="nodes",
                            fix="use integer width keys such as \"1\", \"2\"") from None
        if t < 1:
            raise UserError(f"width {t} < 1", field="nodes", fix="give widths >= 1")
        widths_raw[t] = (nodes[key], edges[key])
    order = sorted(widths_raw)
    ids, widths = None, {}
    for t in order:
        layers, elist = widths_raw[t]
        if ids is None:
            ids = _topological_ids(layers, elist, t)
        widths[t] = _width(t, layers, elist, ids)
    return NestInstance(max_memory, max_devices, mbs, raw["activationRecomputation"],
                        opt == "Adam", tuple(_prefix_min(bws)), tuple(bws), tuple(lat),
                        tuple(int(x) for x in dpl), ep, cp, tuple(ids), widths)


def _prefix_min(xs: list[float]) -> list[float]:
    out = list(xs)
    for i in range(1, len(out)):
        out[i] = min(out[i], out[i - 1])
    return out


def _layer_list(layers, t: int) -> list[dict]:
    if not isinstance(layers, list) or not layers:
        raise UserError("must be a non-empty list of layers", field=f"nodes.{t}",
                        fix="give at least one layer")
    for k, n in enumerate(layers):
        f = f"nodes.{t}[{k}]"
        if not isinstance(n, dict):
            raise UserError("must be an object", field=f,
                            fix="give each layer as an object with an integer id")
        if not isinstance(n.get("id"), int) or isinstance(n.get("id"), bool):
            raise UserError("id must be an integer", field=f, fix="give an integer id")
        for key in ("parameterSize", "activationSize", "optimalLatencyFw", "optimalLatencyBw"):
            _number(n, key)
    return layers


def _edge_list(elist, t: int, known: set) -> list[tuple[int, int, float]]:
    if not isinstance(elist, list):
        raise UserError("must be a list of edges", field=f"edges.{t}",
                        fix="give the edges of each width as a list")
    out, seen = [], set()
    for k, e in enumerate(elist):
        f = f"edges.{t}[{k}]"
        if not isinstance(e, dict):
            raise UserError("must be an object", field=f,
                            fix="give each edge as an object with sourceId and destId")
        u, v = e.get("sourceId"), e.get("destId")
        if u not in known or v not in known:
            raise UserError(f"unknown layer id in ({u!r}, {v!r})", field=f,
                            fix="give layer ids listed under nodes")
        if u == v or (u, v) in seen:
            raise UserError(f"self-loop or parallel edge ({u}, {v})", field=f,
                            fix="drop the self-loop or the repeated edge")
        seen.add((u, v))
        out.append((u, v, _number(e, "communicationCost")))
    return out


def _topological_ids(layers, elist, t: int) -> list[int]:
    """NEST's renumbering: Kahn's walk with a stack (sources in file order, last popped
    first); the result must be a chain (consecutive layers joined by an edge)."""
    layers = _layer_list(layers, t)
    file_ids = [n["id"] for n in layers]
    if len(set(file_ids)) != len(file_ids):
        raise UserError("layer ids are not unique", field=f"nodes.{t}",
                        fix="give each layer a unique id")
    edges = _edge_list(elist, t, set(file_ids))
    indeg = {i: 0 for i in file_ids}
    out: dict[int, list[int]] = {i: [] for i in file_ids}
    for u, v, _ in edges:
        indeg[v] += 1
        out[u].append(v)
    stack = [i for i in file_ids if indeg[i] == 0]
    order = []
    while stack:
        v = stack.pop()
        order.append(v)
        for w in out[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                stack.append(w)
    if len(order) != len(file_ids):
        raise UserError("the layer graph has a cycle", field=f"edges.{t}",
                        fix="give a layer graph without a cycle (a chain)")
    pairs = {(u, v) for u, v, _ in edges}
    for a, b in zip(order, order[1:]):
        if (a, b) not in pairs:
            raise UserError(f"layers {a} and {b} are consecutive but not joined by an edge: "
                            "NEST's DP handles chains only", field=f"edges.{t}",
                            fix="join consecutive layers by an edge (a chain)")
    return order


def _width(t: int, layers, elist, ids: list[int]) -> NestWidth:
    layers = _layer_list(layers, t)
    new = {old: k for k, old in enumerate(ids)}
    if sorted(n["id"] for n in layers) != sorted(ids):
        raise UserError("layer ids differ from the other widths'", field=f"nodes.{t}",
                        fix="give every width the same layer ids")
    by = {new[n["id"]]: n for n in layers}
    edges = _edge_list(elist, t, set(ids))
    n = len(ids)
    inc: list[list] = [[] for _ in range(n)]
    outg: list[list] = [[] for _ in range(n)]
    for u, v, c in edges:
        inc[new[v]].append((new[u], c))
        outg[new[u]].append((new[v], c))
    col = lambda key: tuple(float(by[k][key]) for k in range(n))  # noqa: E731
    return NestWidth(t, col("optimalLatencyFw"), col("optimalLatencyBw"), col("parameterSize"),
                     col("activationSize"), tuple(tuple(x) for x in inc),
                     tuple(tuple(x) for x in outg))


# --------------------------------------------------------------------------- stage costs

@dataclass(frozen=True)
class StageLoad:
    wo: np.ndarray       # [f, b] load without recomputation
    rec: np.ndarray      # [f, b] load with recomputation
    param: float
    max_s: int           # largest feasible position (0: never fits)


def _xfer(inst: NestInstance, c: float, level: int) -> float:
    x = c / inst.bws_pp[level] + inst.latency[level]
    return x if level == 0 else 2 * x


def stage_load(inst: NestInstance, w: NestWidth, lo: int, hi: int) -> StageLoad:
    """Loads of the stage of layers lo..hi-1 (new numbering) for every (fw level, bw level)."""
    L = inst.levels
    nodes = range(lo, hi)
    fw, bw, fwbw = [], [], []
    for lv in range(L):
        fin: dict[int, float] = {}
        for v in nodes:
            start = 0.0
            for u, c in w.incoming[v]:
                start = max(start, fin[u] if u in fin else _xfer(inst, c, lv))
            fin[v] = start + w.fw[v]
        fw.append(fin[hi - 1])
        fin = {}
        for v in reversed(nodes):
            start = 0.0
            for u, c in w.outgoing[v]:
                start = max(start, fin[u] if u in fin else _xfer(inst, c, lv))
            fin[v] = start + w.bw[v]
        bw.append(fin[lo])
        fin = {}
        for v in nodes:                      # the recomputed forward, costed with Bw
            start = 0.0
            for u, _c in w.incoming[v]:
                if u in fin:
                    start = max(start, fin[u])
            fin[v] = start + w.bw[v]
        fw_part = fin[hi - 1]
        fin = {}
        for v in reversed(nodes):
            start = fw_part
            for u, c in w.outgoing[v]:
                start = max(start, fin[u] if u in fin else _xfer(inst, c, lv))
            fin[v] = start + w.bw[v]
        fwbw.append(fin[lo])
    wo = np.array([[fw[f] + bw[b] for b in range(L)] for f in range(L)])
    rec = np.array([[fw[f] + fwbw[b] for b in range(L)] for f in range(L)])
    param = 0.0
    act = 0.0
    for v in nodes:
        param += w.param[v]
    for v in nodes:
        act += w.act[v]
    opt = (2 * param + 2 * param + 2 * param) if inst.adam else 0.0
    const = 2 * param + opt + act
    if inst.recompute:
        stash = 0.0
        for v in nodes:
            for u, c in w.incoming[v]:
                if not (lo <= u < hi):
                    stash += c
    else:
        stash = act
    return StageLoad(wo, rec, param, _max_s(inst, const, stash))


def _max_s(inst: NestInstance, const: float, stash: float) -> int:
    if const + (inst.max_devices - 1) * stash <= inst.max_memory:
        return inst.max_devices
    if const > inst.max_memory:
        return 0
    return 1 + math.floor((inst.max_memory - const) / stash)


def _zero_would_fit(inst: NestInstance, w: NestWidth, a: int, bound: int) -> bool:
    """Whether NEST's ZeRO fallback finds a memory-feasible (degree, stage) for the last
    layer alone (its time would then come from NEST's external network simulator)."""
    lo, hi = inst.n - 1, inst.n
    ld = stage_load(inst, w, lo, hi)
    act = w.act[lo]
    opt = 6 * ld.param if inst.adam else 0.0
    stash = sum(c for _u, c in w.incoming[lo]) if inst.recompute else act
    zd = 2
    while a * zd <= inst.max_devices:
        for zt in (1, 2, 3):
            p = ld.param
            const = {1: 2 * p + opt / zd + act, 2: p + p / zd + opt / zd + act,
                     3: 2 * (p / zd) + opt / zd + act}[zt]
            if _max_s(inst, const, stash) >= bound:
                return True
        zd *= 2
    return False


# --------------------------------------------------------------------------- network

def _level(inst: NestInstance, x: int, y: int) -> int:
    """First level whose group holds devices x and y (C truncating division); -1: none."""
    for i, g in enumerate(inst.devices_per_level):
        x, y = int(x / g), int(y / g)
        if x == y:
            return i
    return -1


def _checked_level(inst: NestInstance, x: int, y: int) -> int:
    lv = _level(inst, x, y)
    if lv < 0:
        raise UserError(f"devices {x} and {y} share no network level (NEST's DP would read "
                        "out of bounds)", field="devices_per_level",
                        fix="make the product of devices_per_level at least maxDevices")
    return lv


def hierarchical_allreduce(inst: NestInstance, d: int, data: float, stride: int) -> float:
    """NEST's all-reduce of `data` bytes over d replicas whose first devices are `stride`
    apart: halving-doubling at level 0 then up and down every level below the common one."""
    ids = [i * stride for i in range(d)]
    dims = list(inst.devices_per_level)
    source_level = -1
    per = [ids]
    cur = ids
    for j in range(len(dims)):
        cur = [int(x / dims[j]) for x in cur]
        per.append(cur)
    for j in range(len(dims)):
        if len(set(per[j + 1])) == 1:
            source_level = j + 1
            break
    if source_level < 0:
        raise UserError(f"{d} pipelines of {stride} devices do not fit the network's levels",
                        field="devices_per_level",
                        fix=f"give devices_per_level whose product is at least {d * stride}")
    alpha = inst.latency[:source_level]
    beta = [1 / b for b in inst.bws_dp[:source_level]]
    total = 0.0
    for i in range(int(math.log2(d))):
        total += alpha[0] + beta[0] * (data / 2.0 ** i)
    lower = 0.0
    for lv in range(1, source_level):
        total += (2 * (alpha[lv] + beta[lv] * data)) + lower
        lower += total
    return total


# --------------------------------------------------------------------------- the DP

@dataclass
class _WidthResult:
    t: int
    time: float
    d: int
    stages: list[tuple[int, int, int]]      # (lo, hi, devices), first stage first
    skeleton: dict[int, list[int]]          # device -> new layer ids


class _Graph:
    def __init__(self, inst: NestInstance, w: NestWidth):
        self.inst, self.w = inst, w
        self.n = inst.n
        self.a = w.t * inst.ep * inst.cp
        self.bound = min(inst.max_devices, self.n)
        self._loads: dict[tuple[int, int], StageLoad] = {}

    def load(self, lo: int, hi: int) -> StageLoad:
        key = (lo, hi)
        if key not in self._loads:
            self._loads[key] = stage_load(self.inst, self.w, lo, hi)
        return self._loads[key]

    # downset id k = layers [n - k, n); stage (id, sub) = layers [n - id, n - sub)
    def stage(self, id_: int, sub: int) -> StageLoad:
        return self.load(self.n - id_, self.n - sub)

    def run(self, zero_state: list[bool]) -> _WidthResult:
        inst, n, a, L = self.inst, self.n, self.a, self.inst.levels
        K, S = inst.max_devices, self.bound
        last = self.stage(1, 0)
        if last.max_s == 0:
            if zero_state[0] and _zero_would_fit(inst, self.w, a, S):
                raise UserError("the last layer fits on no device without ZeRO, which NEST "
                                "costs with its external network simulator: not reproducible",
                                field=FIELD,
                                fix="raise maxMemoryPerDevice so that the last layer fits without ZeRO")
            raise UserError(f"t={self.w.t}: memory usage too high even for ZeRO (NEST's DP "
                            "stops)", field=FIELD, fix="raise maxMemoryPerDevice")
        zero_state[0] = False
        dp = np.full((L, n + 1, K + 1, S + 1), INFTY)
        dp[:, 0, :, 0] = 0.0
        ptr = np.full((n + 1, K + 1, S + 1), -1, dtype=np.int32)  # sub of the skeleton
        # level of the hop from a new stage at position s to the stage after it
        blevel = [0] * (S + 1)
        for s in range(1, S + 1):
            acc = (s - 2) * a if s >= 2 else -1
            blevel[s] = _level(inst, acc, (s - 1) * a)
        if a > K:
            raise UserError(f"a stage needs {a} devices, more than maxDevices", field=FIELD,
                            fix=f"raise maxDevices to {a} or more")
        ks = np.arange(a, K + 1)
        for id_ in range(1, n):
            for sub in range(id_ - 1, -1, -1):
                ld = self.stage(id_, sub)
                max_s = min(ld.max_s, S)
                for s in range(1, max_s + 1):
                    b = blevel[s]
                    if b < 0:
                        if (dp[0, sub, ks - a, s - 1] < INFTY / 2).any():
                            _checked_level(inst, (s - 2) * a, (s - 1) * a)   # raises
                        continue
                    table = ld.rec if (inst.recompute and s > 1) else ld.wo
                    prev = dp[:, sub, ks - a, s - 1]                    # (L, len(ks))
                    cur = dp[:, id_, ks, s]
                    new = np.maximum(prev[b][None, :], table[:, b][:, None])
                    cond1 = cur[0] > np.maximum(prev[2], table[L - 1, L - 1])
                    diff = np.zeros(len(ks))
                    for j in range(L):
                        diff = diff + (cur[j] - new[j])
                    cond = cond1 | (diff > 0)
                    if cond.any():
                        dp[:, id_, ks, s] = np.where(cond[None, :], np.minimum(cur, new), cur)
                        ptr[id_, ks, s] = np.where(cond, sub, ptr[id_, ks, s])
        return self._final(dp, ptr)

    def _skeleton(self, ptr, id_: int, k: int, s: int) -> list[tuple[int, int]]:
        """Stages (lo, hi) of the skeleton stored at dp[.][id][k][s], in chain order."""
        out = []
        while id_ != 0:
            sub = int(ptr[id_, k, s])
            out.append((self.n - id_, self.n - sub))
            id_, k, s = sub, k - self.a, s - 1
        return out

    def _final(self, dp, ptr) -> _WidthResult:
        inst, n, a = self.inst, self.n, self.a
        best = (INFTY, -1, -1, -1)
        for d in range(1, min(inst.max_devices, inst.mbs_in_batch) + 1):
            npp = inst.max_devices // d
            if npp < a:
                continue
            m = -(-inst.mbs_in_batch // d)
            for sub in range(n - 1, -1, -1):
                ld = self.stage(n, sub)
                max_s = min(ld.max_s, self.bound)
                if max_s < 1:
                    continue
                cost = hierarchical_allreduce(inst, d, ld.param, npp)
                for s in range(1, max_s + 1):
                    rest = dp[0, sub, npp - a, s - 1]
                    if rest > INFTY / 2:
                        continue
                    load = ld.rec[0, 0] if (inst.recompute and s > 1) else ld.wo[0, 0]
                    tpb = max(rest, load) * (m + s - 1) + cost
                    if tpb < best[0]:
                        best = (tpb, d, s, sub)
        if best[1] < 0:
            raise UserError(f"t={self.w.t}: no feasible plan (NEST's DP stops: memory usage "
                            "too high for pipeline parallelism)", field=FIELD,
                            fix="raise maxMemoryPerDevice")
        _, d, s_fin, sub_fin = best
        npp = inst.max_devices // d
        # skeleton: later stages on blocks 0.., the first stage on block s_fin - 1
        later = self._skeleton(ptr, sub_fin, npp - a, s_fin - 1)
        blocks = [(0, n - sub_fin)] + later              # first stage first
        node_dev = {}
        skeleton: dict[int, list[int]] = {}
        for q, (lo, hi) in enumerate(reversed(blocks)):   # q = block index
            for dev in range(q * a, (q + 1) * a):
                skeleton[dev] = list(range(lo, hi))
            for v in range(lo, hi):
                node_dev[v] = q * a                      # lowest device of the block
        stages = self._reconstruct(dp, sub_fin, s_fin, npp, node_dev)
        time = self._evaluate(stages, d, node_dev)
        return _WidthResult(self.w.t, time, d, stages, skeleton)

    def _lookup(self, node_dev, x: int, y: int) -> int:
        return _checked_level(self.inst, node_dev.get(x, -1), node_dev.get(y, -1))

    def _reconstruct(self, dp, sub_fin, s_fin, npp, node_dev) -> list[tuple[int, int, int]]:
        inst, n, a = self.inst, self.n, self.a
        stages = [(0, n - sub_fin, a)]
        cur, s, k = sub_fin, s_fin - 1, npp - a
        while cur != 0:
            found = False
            for sub in range(cur - 1, -1, -1):
                lo, hi = n - cur, n - sub
                ld = self.stage(cur, sub)
                f = self._lookup(node_dev, lo - 1, lo)
                b = self._lookup(node_dev, hi - 1, hi)
                if ld.max_s < s or k < a:
                    continue
                table = ld.rec if (inst.recompute and s > 1) else ld.wo
                load = table[f, b]
                if abs(dp[f, cur, k, s] - max(dp[b, sub, k - a, s - 1], load)) < 1e-9:
                    stages.append((lo, hi, a))
                    cur, s, k = sub, s - 1, k - a
                    found = True
                    break
            if not found:
                raise UserError("NEST's reconstruction finds no step (NEST fails here too)",
                                field=FIELD)
        return stages

    def _evaluate(self, stages, d: int, node_dev) -> float:
        inst, n = self.inst, self.n
        S = len(stages)
        max_load, first_param = 0.0, 0.0
        for q, (lo, hi, a) in enumerate(stages):
            s = S - q
            ld = self.load(lo, hi)
            if ld.max_s < s - 1 or s > ld.max_s:
                raise UserError("NEST's re-evaluation finds the plan out of memory",
                                field=FIELD)
            if q == 0:
                first_param = ld.param
            first, last = lo, hi - 1
            if first == 0:
                first = 1
            if last == n - 1:
                last = n - 2
            f = self._lookup(node_dev, first - 1, first)
            b = self._lookup(node_dev, last, last + 1)
            table = ld.rec if (inst.recompute and s > 1) else ld.wo
            max_load = max(max_load, table[f, b])
        used = sum(a for _lo, _hi, a in stages)
        m = -(-inst.mbs_in_batch // d)
        return float(max_load * (m + S - 1)
                     + hierarchical_allreduce(inst, d, first_param, used))


def solve_nest(inst: NestInstance) -> dict:
    """NEST's optimum: {stages: [{nodes: [original ids], devicesForStage}],
    dataParallelDegree, tensorParallelDegree, finalTimePerBatch, networkSkeleton, method}."""
    zero_state = [True]          # NEST's global "isZero", carried from width to width
    best = None
    for t in sorted(inst.widths):
        r = _Graph(inst, inst.widths[t]).run(zero_state)
        if best is None or r.time < best.time:
            best = r
    return {
        "stages": [{"nodes": [inst.ids[v] for v in range(lo, hi)], "devicesForStage": a}
                   for lo, hi, a in best.stages],
        "dataParallelDegree": best.d,
        "tensorParallelDegree": best.t,
        "finalTimePerBatch": best.time,
        "networkSkeleton": [[dev, nodes] for dev, nodes in sorted(best.skeleton.items())],
        "method": "nest-compat: NEST's device-placement DP semantics (docs/nest.md)",
    }
