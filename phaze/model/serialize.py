"""ModelGraph <-> JSON. The file is what `phaze graph -o FILE.json` writes and what the
scheduling and placement stages read back (`load_graph`)."""

from __future__ import annotations

import json
from pathlib import Path

from phaze.atomic import write_text_atomic
from phaze.errors import UserError
from phaze.model.ops import GemmDims, LayerGraph, ModelGraph, Op

FORMAT = "phaze.model_graph/1"


def graph_to_dict(graph: ModelGraph, spec: dict | None = None) -> dict:
    layers = []
    for lg in graph.layers:
        layers.append({
            "kind": lg.kind, "repeat": lg.repeat, "param_count": lg.param_count,
            "param_bytes": lg.param_bytes, "shared_param_bytes": lg.shared_param_bytes,
            "activation_bytes": dict(lg.activation_bytes), "input_bytes": lg.input_bytes,
            "output_bytes": lg.output_bytes,
            "fwd": [o.to_dict() for o in lg.fwd], "bwd": [o.to_dict() for o in lg.bwd],
            # only on sliding-window blocks (files stay as they were for the others)
            **({"attention_window": lg.attention_window} if lg.attention_window else {}),
        })
    d = {"format": FORMAT, "model": graph.model, "seq": graph.seq, "mbs": graph.mbs, "tp": graph.tp,
         "sequence_parallel": graph.sequence_parallel, "fused": graph.fused,
         "dtype_bytes": graph.dtype_bytes, "params_total": graph.params_total,
         "attention": graph.attention, "vocab_pad_multiple": graph.vocab_pad_multiple,
         "unfused_bias": graph.unfused_bias, "apex_layernorm": graph.apex_layernorm,
         "cp": graph.cp, "kv_bytes": graph.kv_bytes,
         "q_bytes": graph.q_bytes, "o_bytes": graph.o_bytes, "expert_tp": graph.expert_tp, "ep": graph.ep,
         "moe_dispatcher": graph.moe_dispatcher, "moe_router_fusion": graph.moe_router_fusion,
         "moe_router_load_balancing_type": graph.moe_router_load_balancing_type,
         "moe_router_force_load_balancing": graph.moe_router_force_load_balancing,
         "moe_expert_capacity_factor": graph.moe_expert_capacity_factor,
         "moe_pad_expert_input_to_capacity": graph.moe_pad_expert_input_to_capacity,
         "moe_model_flops_ratio": graph.moe_model_flops_ratio,
         "moe_experts": graph.moe_experts, "moe_top_k": graph.moe_top_k,
         "layers": layers}
    if spec is not None:
        d["spec"] = spec
    return d


def _op(d: dict) -> Op:
    d = dict(d)
    g = d.pop("gemm", None)
    return Op(gemm=GemmDims(**g) if g else None, deps=tuple(d.pop("deps", ())),
              fused=tuple(d.pop("fused", ())), **d)


def graph_from_dict(d: dict) -> ModelGraph:
    if d.get("format") != FORMAT:
        raise UserError(f"not a phaze model graph (format {d.get('format')!r}, expected {FORMAT!r})",
                        field="graph", fix="regenerate it with `phaze graph ... -o FILE.json`")
    layers = []
    for ld in d["layers"]:
        ld = dict(ld)
        fwd = tuple(_op(o) for o in ld.pop("fwd"))
        bwd = tuple(_op(o) for o in ld.pop("bwd"))
        layers.append(LayerGraph(fwd=fwd, bwd=bwd, **ld))
    return ModelGraph(model=d["model"], seq=d["seq"], mbs=d["mbs"], tp=d["tp"],
                      sequence_parallel=d["sequence_parallel"], fused=d["fused"],
                      dtype_bytes=d["dtype_bytes"], layers=tuple(layers), params_total=d["params_total"],
                      attention=d.get("attention", "eager"),
                      vocab_pad_multiple=d.get("vocab_pad_multiple", 1),
                      unfused_bias=d.get("unfused_bias", False),
                      apex_layernorm=d.get("apex_layernorm", False),
                      cp=d.get("cp", 1), kv_bytes=d.get("kv_bytes", 0.0),
                      q_bytes=d.get("q_bytes", 0.0), o_bytes=d.get("o_bytes", 0.0),
                      expert_tp=d.get("expert_tp", 0), ep=d.get("ep", 0),
                      moe_dispatcher=d.get("moe_dispatcher", "alltoall"),
                      moe_router_fusion=bool(d.get("moe_router_fusion", False)),
                      moe_router_load_balancing_type=d.get("moe_router_load_balancing_type",
                                                           "none"),
                      moe_router_force_load_balancing=bool(
                          d.get("moe_router_force_load_balancing", False)),
                      moe_experts=d.get("moe_experts", 0),
                      moe_top_k=d.get("moe_top_k", 0),
                      # files written before token dropping: dropless
                      moe_expert_capacity_factor=d.get("moe_expert_capacity_factor"),
                      moe_pad_expert_input_to_capacity=bool(
                          d.get("moe_pad_expert_input_to_capacity", False)),
                      moe_model_flops_ratio=float(d.get("moe_model_flops_ratio", 1.0)))


def save_graph(graph: ModelGraph, path: str | Path, spec: dict | None = None) -> None:
    """Write atomically (a killed job leaves no file that looks finished)."""
    write_text_atomic(path, json.dumps(graph_to_dict(graph, spec), separators=(",", ":")))


def load_graph(path: str | Path) -> ModelGraph:
    from phaze.files import read_json

    return graph_from_dict(read_json(path, "graph"))
