"""Parameters held per device under Megatron's uniform pipeline split, from the operator
graphs: the check behind Korthikanti Figure 1's "parameters + optimizer state" bars."""

from __future__ import annotations

import numpy as np


def params_per_device(graph, pp: int, interleave: int = 1) -> np.ndarray:
    """Parameter count on each of the pp devices of one TP shard: blocks split evenly
    into pp * interleave chunks (chunk c on device c % pp), the prologue (embeddings) with
    the first chunk, the epilogue (final norm, LM head: Megatron's last stage keeps its own
    copy of the tied word embedding) with the last."""
    counts = np.array([lg.param_count for lg in graph.expanded()], dtype=float)
    kinds = [lg.kind for lg in graph.expanded()]
    blocks = [i for i, k in enumerate(kinds) if k not in ("prologue", "epilogue")]
    chunks = pp * interleave
    nb = len(blocks)
    if nb % chunks:
        raise ValueError(f"{nb} blocks do not split evenly into {chunks} chunks")
    per = nb // chunks
    out = np.zeros(pp)
    for i, k in enumerate(kinds):
        if k == "prologue":
            c = 0
        elif k == "epilogue":
            c = chunks - 1
        else:
            c = (i - blocks[0]) // per
        out[c % pp] += counts[i]
    return out
