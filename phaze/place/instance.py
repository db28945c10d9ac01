"""Reference-mode placement instances: the published PHAZE DP's JSON format
(docs/reference.md#placement-dp).

`load_instance(path)` / `parse_instance(dict)` validate the file and return a `RefInstance`
whose layers are renumbered in one topological order shared by every TP width. Units are
whatever the file uses (reference mode does not convert): sizes and communication costs
in bytes, bandwidth in bytes per time unit, latencies in that time unit.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phaze.errors import UserError

_TOP_KEYS = {
    "maxMemoryPerDevice": (int, float),
    "maxDevices": (int,),
    "bandwidth": (int, float),
    "mbsInBatch": (int,),
    "activationRecomputation": (bool,),
    "optimizerAlgorithm": (str,),
    "fixedPP": (int,),
    "fixedTMPC": (int,),
    "fixedDP": (int,),
    "numTransformerLayers": (int,),
    "nodes": (dict,),
    "edges": (dict,),
}
_NODE_NUM_KEYS = ("parameterSize", "activationSize", "optimalLatencyFw", "optimalLatencyBw")


@dataclass(frozen=True)
class WidthTable:
    """All layers of one TP width t, in the shared topological order (index = new number)."""

    t: int
    param: np.ndarray        # parameterSize
    act: np.ndarray          # activationSize
    fw: np.ndarray           # optimalLatencyFw
    bw: np.ndarray           # optimalLatencyBw
    tp: np.ndarray           # isTensorParallelized (bool)
    # edges as (src_index, dst_index, communicationCost), src < dst
    edges: tuple[tuple[int, int, float], ...]

    @property
    def n(self) -> int:
        return len(self.fw)


@dataclass(frozen=True)
class RefInstance:
    max_memory: float
    max_devices: int
    bandwidth: float
    mbs_in_batch: int
    recompute: bool
    adam: bool
    fixed_pp: int
    fixed_tmpc: int
    fixed_dp: int
    num_transformer_layers: int
    ids: tuple                       # original layer ids, in topological order
    widths: dict[int, WidthTable]    # t -> table

    @property
    def n(self) -> int:
        return len(self.ids)

    def is_chain(self) -> bool:
        """True when the edges are exactly i -> i+1 for consecutive layers (a path)."""
        table = next(iter(self.widths.values()))
        n = table.n
        if len(table.edges) != n - 1:
            return False
        return all(s == k and d == k + 1 for k, (s, d, _) in enumerate(sorted(table.edges)))


def load_instance(path: str | Path) -> RefInstance:
    from phaze.files import read_json

    return parse_instance(read_json(path, "--reference-instance", want=None))


def _num(value, field: str) -> float:
    """A number of the instance, finite and of a magnitude whose sums cannot overflow (sizes,
    latencies and bandwidths of any real instance are far below MAX_MAGNITUDE)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"must be a finite number, got {value!r}", field=field,
                        fix="give a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise UserError(f"must be at most {MAX_MAGNITUDE:g} in magnitude, got {value!r}",
                        field=field, fix=f"give a value within +-{MAX_MAGNITUDE:g}")
    return float(value)


MAX_DEVICES = 65536
MAX_MAGNITUDE = 1e30
MAX_MICROBATCHES = 2**31 - 1


def parse_instance(raw: dict) -> RefInstance:
    """A RefInstance from the published JSON (docs/reference.md#placement-dp); UserError
    naming the field for anything the reference rejects or that is out of bounds."""
    if not isinstance(raw, dict):
        raise UserError("the instance must be a JSON object", field="instance",
                        fix="give a JSON object in the published instance format")
    _check_top(raw)
    per_width = {t: _parse_width(t, nlist, elist)
                 for t, (nlist, elist) in sorted(_width_lists(raw).items())}
    ts = sorted(per_width)
    _check_same_sets(per_width)
    ref_edges = set(per_width[ts[0]][1])
    order = _topological_order(per_width[ts[0]][0], ref_edges)
    index = {nid: k for k, nid in enumerate(order)}
    tables = {}
    for t in ts:
        recs, el = per_width[t]
        vals = np.array([recs[nid][1] for nid in order], dtype=float).reshape(len(order), 4)
        tpf = np.array([recs[nid][2] for nid in order], dtype=bool)
        etup = tuple(sorted((index[s], index[d], c) for (s, d), c in el.items()))
        tables[t] = WidthTable(t, vals[:, 0].copy(), vals[:, 1].copy(), vals[:, 2].copy(),
                               vals[:, 3].copy(), tpf, etup)
    return RefInstance(
        max_memory=float(raw["maxMemoryPerDevice"]), max_devices=raw["maxDevices"],
        bandwidth=float(raw["bandwidth"]), mbs_in_batch=raw["mbsInBatch"],
        recompute=raw["activationRecomputation"], adam=(raw["optimizerAlgorithm"] == "Adam"),
        fixed_pp=raw["fixedPP"], fixed_tmpc=raw["fixedTMPC"], fixed_dp=raw["fixedDP"],
        num_transformer_layers=raw["numTransformerLayers"], ids=tuple(order), widths=tables)


def _check_top(raw: dict) -> None:
    """The top-level keys: present, typed, in range."""
    for key, types in _TOP_KEYS.items():
        if key not in raw:
            raise UserError("missing key", field=key, fix="write the published instance format")
        v = raw[key]
        if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
            raise UserError(f"wrong type {type(v).__name__}", field=key,
                            fix=f"give {key} as " + " or ".join(t.__name__ for t in types))
    if raw["maxDevices"] < 1:
        raise UserError("must be >= 1", field="maxDevices", fix="give maxDevices >= 1")
    if raw["mbsInBatch"] < 1:
        raise UserError("must be >= 1", field="mbsInBatch", fix="give mbsInBatch >= 1")
    if _num(raw["bandwidth"], "bandwidth") <= 0:
        raise UserError("must be > 0", field="bandwidth", fix="give bandwidth > 0")
    if _num(raw["maxMemoryPerDevice"], "maxMemoryPerDevice") < 0:
        raise UserError("must be >= 0 (a negative size)", field="maxMemoryPerDevice",
                        fix="give maxMemoryPerDevice >= 0")
    opt = raw["optimizerAlgorithm"]
    if opt not in ("SGD", "Adam"):
        raise UserError(f"must be SGD or Adam, got {opt!r}", field="optimizerAlgorithm",
                        fix="use SGD or Adam")
    # bounds that keep the DP's loops (over d up to min(maxDevices, mbsInBatch), over the
    # fixed strategy's stages) to seconds; far beyond any published instance
    if raw["maxDevices"] > MAX_DEVICES:
        raise UserError(f"must be <= {MAX_DEVICES}, got {raw['maxDevices']}", field="maxDevices",
                        fix=f"give maxDevices <= {MAX_DEVICES}")
    if raw["mbsInBatch"] > MAX_MICROBATCHES:
        raise UserError(f"must be <= {MAX_MICROBATCHES}, got {raw['mbsInBatch']}",
                        field="mbsInBatch", fix=f"give mbsInBatch <= {MAX_MICROBATCHES}")
    for key in ("fixedPP", "fixedTMPC", "fixedDP", "numTransformerLayers"):
        if raw[key] < 1:
            raise UserError("must be >= 1", field=key, fix=f"give {key} >= 1")
        if raw[key] > MAX_DEVICES:
            raise UserError(f"must be <= {MAX_DEVICES}, got {raw[key]}", field=key,
                            fix=f"give {key} <= {MAX_DEVICES}")


def _width_lists(raw: dict) -> dict[int, tuple[list, list]]:
    """{t: (node list, edge list)} with the width keys checked."""
    nodes, edges = raw["nodes"], raw["edges"]
    if not nodes:
        raise UserError("no TP width given", field="nodes",
                        fix="give nodes at least one TP width, e.g. {\"1\": [...]}")
    if set(nodes) != set(edges):
        raise UserError(f"widths differ between nodes {sorted(nodes)} and edges {sorted(edges)}",
                        field="edges", fix="give nodes and edges the same width keys")
    widths: dict[int, tuple[list, list]] = {}
    for key in nodes:
        try:
            t = int(key)
        except ValueError:
            raise UserError(f"width key {key!r} is not an integer", field="nodes",
                            fix="use positive integer width keys such as \"1\", \"2\"") from None
        if t < 1 or str(t) != key.strip():
            raise UserError(f"width key {key!r} must be a positive integer", field="nodes",
                            fix="use positive integer width keys such as \"1\", \"2\"")
        if not isinstance(nodes[key], list) or not isinstance(edges[key], list):
            raise UserError("must be a list", field=f"nodes/edges[{key}]",
                            fix="give the nodes and edges of each width as lists")
        widths[t] = (nodes[key], edges[key])
    return widths


def _parse_width(t: int, nlist: list, elist: list) -> tuple[dict, dict]:
    """({node id: (list position, [param, act, fw, bw], isTensorParallelized)},
    {(src id, dst id): communicationCost}) of one width, validated."""
    fld = f"nodes[{t}]"
    if not nlist:
        raise UserError("no layers", field=fld, fix="give this width at least one layer")
    recs = {}
    for k, nd in enumerate(nlist):
        if not isinstance(nd, dict) or "id" not in nd:
            raise UserError(f"node {k} has no id", field=fld, fix="give every node an id")
        nid = nd["id"]
        if not isinstance(nid, (int, str)) or isinstance(nid, bool):
            raise UserError(f"node {k} id must be an int or a string", field=fld,
                            fix="give an integer or string id")
        if nid in recs:
            raise UserError(f"duplicate node id {nid!r}", field=fld,
                            fix="give each node a unique id")
        vals = []
        for key in _NODE_NUM_KEYS:
            if key not in nd:
                raise UserError(f"node {nid!r} lacks {key}", field=fld,
                                fix=f"give {key} on every node")
            v = _num(nd[key], f"{fld}.{nid}.{key}")
            if v < 0:
                raise UserError(f"node {nid!r} has a negative {key} ({v})", field=fld,
                                fix="sizes and latencies must be >= 0")
            vals.append(v)
        tpf = nd.get("isTensorParallelized", False)
        if not isinstance(tpf, bool):
            raise UserError(f"node {nid!r} isTensorParallelized must be true/false", field=fld,
                            fix="give true or false")
        if tpf and t == 1:
            raise UserError(f"node {nid!r} is tensor-parallelised at t = 1", field=fld,
                            fix="set isTensorParallelized to false for width 1")
        recs[nid] = (k, vals, tpf)
    efld = f"edges[{t}]"
    edges = {}
    for e in elist:
        if not isinstance(e, dict) or not {"sourceId", "destId", "communicationCost"} <= set(e):
            raise UserError("every edge needs sourceId, destId, communicationCost", field=efld,
                            fix="give sourceId, destId and communicationCost on every edge")
        s, d = e["sourceId"], e["destId"]
        if s not in recs or d not in recs:
            raise UserError(f"edge {s!r}->{d!r} names an unknown node", field=efld,
                            fix="give edges between node ids of this width")
        if s == d:
            raise UserError(f"self-loop on {s!r}", field=efld, fix="drop the self-loop")
        if (s, d) in edges:
            raise UserError(f"parallel edges {s!r}->{d!r}", field=efld,
                            fix="keep one edge per pair")
        c = _num(e["communicationCost"], f"{efld}.{s}->{d}")
        if c < 0:
            raise UserError(f"edge {s!r}->{d!r} has a negative communicationCost", field=efld,
                            fix="give communicationCost >= 0")
        edges[(s, d)] = c
    return recs, edges


def _check_same_sets(per_width: dict) -> None:
    """Every width lists the same layer ids and the same edges (the reference's rule)."""
    ts = sorted(per_width)
    ref_nodes, ref_edges = set(per_width[ts[0]][0]), set(per_width[ts[0]][1])
    for t in ts[1:]:
        if set(per_width[t][0]) != ref_nodes:
            raise UserError(f"node set of width {t} differs from width {ts[0]}", field="nodes",
                            fix="every width must list the same layer ids")
        if set(per_width[t][1]) != ref_edges:
            raise UserError(f"edge set of width {t} differs from width {ts[0]}", field="edges",
                            fix="every width must list the same edges")


def _topological_order(recs: dict, edges: set) -> list:
    """Kahn's algorithm; among ready layers the one listed first (smallest list position)
    goes first, so a file listed in topological order keeps its order."""
    succ: dict = {nid: [] for nid in recs}
    indeg = {nid: 0 for nid in recs}
    for s, d in edges:
        succ[s].append(d)
        indeg[d] += 1
    heap = [(recs[nid][0], nid) for nid in recs if indeg[nid] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, nid = heapq.heappop(heap)
        order.append(nid)
        for d in succ[nid]:
            indeg[d] -= 1
            if indeg[d] == 0:
                heapq.heappush(heap, (recs[d][0], d))
    if len(order) != len(recs):
        raise UserError("the layer graph has a cycle (not a DAG)", field="edges",
                        fix="remove the back edge")
    return order
