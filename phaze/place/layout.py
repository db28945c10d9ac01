"""Megatron-Core's custom pipeline layouts (--pipeline-model-parallel-layout).

The grammar, as Megatron-Core parses it (megatron/core/transformer/
pipeline_parallel_layer_layout.py, PipelineParallelLayerLayout.parse_str_to_list and
validate_layer_layout): the virtual pipeline stages (chunks) in layer order, separated by
`|`, chunk c on pipeline rank c % pp (pp x vp chunks); in a chunk, `E` the embedding, `t` a
transformer decoder layer, `m` a multi-token-prediction layer, `L` the output layer and
loss; `x*n` repeats one symbol (or a `|`), `(...)*n` a group (one level: no nesting);
commas are cosmetic. A chunk may be empty. E opens the first chunk and L closes the last,
each exactly once; the t's number the model's decoder layers, the m's its MTP layers, all
after the last t, in one chunk, which is the last chunk of its rank.

Example (the DeepSeek-V3 H100 recipe of Megatron-Bridge, pp 8 x vp 4): `Et|(tt|)*30mL`
is the 32 chunks Et, tt (30 times), mL.
"""

from __future__ import annotations

import re

SYMBOLS = {"E": "embedding", "t": "decoder layer", "m": "MTP layer", "L": "loss"}


def parse_layout(layout: str) -> list[str]:
    """The chunks of a layout string, each a string of E / t / m / L in order (repetitions
    unrolled, commas dropped). Raises ValueError naming what is wrong: a parenthesis not
    closed or not opened, a nested or empty group, a group without its `*n`, a `*` not
    after a symbol or a group, an unknown symbol."""
    if not isinstance(layout, str) or not layout.strip():
        raise ValueError("pipeline layout: empty; give the chunks separated by '|', "
                         "e.g. 'Et|(tt|)*30mL'")
    s = layout.replace(",", "")
    depth, opened = 0, -1
    for i, ch in enumerate(s):
        if ch == "(":
            if depth:
                raise ValueError(f"pipeline layout {layout!r}: nested parentheses (Megatron-Core "
                                 f"unrolls one level of (...)*n)")
            depth, opened = 1, i
        elif ch == ")":
            if not depth:
                raise ValueError(f"pipeline layout {layout!r}: unbalanced parentheses "
                                 f"(a ')' without its '(')")
            if i == opened + 1:
                raise ValueError(f"pipeline layout {layout!r}: an empty group '()'")
            if not re.match(r"\*\d+", s[i + 1:]):
                raise ValueError(f"pipeline layout {layout!r}: the group "
                                 f"{s[opened:i + 1]!r} needs a repeat count, e.g. (tt|)*30")
            depth = 0
    if depth:
        raise ValueError(f"pipeline layout {layout!r}: unbalanced parentheses (a '(' not "
                         f"closed)")
    # Megatron-Core's two substitutions, in its order
    s = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    chunks = s.split("|")
    for c, chunk in enumerate(chunks):
        for ch in chunk:
            if ch in "*0123456789":
                raise ValueError(f"pipeline layout {layout!r}: a repeat count '*n' must follow "
                                 f"a symbol or a (...) group")
            if ch not in SYMBOLS:
                known = ", ".join(f"{k} ({v})" for k, v in SYMBOLS.items())
                raise ValueError(f"pipeline layout {layout!r}: unknown symbol {ch!r} in chunk "
                                 f"{c} (known: {known}; '|' separates chunks)")
    return chunks


def check_layout(chunks: list[str], p: int, interleave: int, decoder_layers: int,
                 mtp_layers: int | None = None, layout: str = "") -> None:
    """ValueError unless `chunks` (parse_layout) is a layout Megatron-Core runs on p ranks x
    `interleave` chunks each for a model of `decoder_layers` decoder layers and `mtp_layers`
    MTP layers (None: the model has no MTP layers, and the caller no stand-in for them)."""
    name = f"pipeline layout {layout!r}" if layout else "pipeline layout"
    n = p * interleave
    if len(chunks) != n:
        k = len(chunks)
        # the pp x interleave pairs that give k chunks (interleave > 1 needs pp > 1)
        pairs = [f"pp {q} x interleave {k // q}" for q in range(2, k + 1)
                 if k % q == 0 and (k // q == 1 or q > 1)]
        if p > 1 and k % p == 0:
            hint = f" (with pp {p}: give interleave {k // p})"
        elif pairs:
            hint = f" (give {' or '.join(pairs[:3])})"
        else:
            hint = ""
        raise ValueError(f"{name}: {len(chunks)} chunks, pp x interleave = {p} x {interleave} "
                         f"= {n} needed{hint}")
    flat = "".join(chunks)
    if flat.count("E") != 1 or not chunks[0].startswith("E"):
        raise ValueError(f"{name}: E (the embedding) must appear once, opening the first chunk")
    if flat.count("L") != 1 or not chunks[-1].endswith("L"):
        raise ValueError(f"{name}: L (the loss) must appear once, closing the last chunk")
    nt, nm = flat.count("t"), flat.count("m")
    if nm and mtp_layers is None:
        raise ValueError(f"{name}: {nm} MTP layers (m), but phaze has no MTP block: give "
                         f"mtp_layers (that many extra blocks stand for them)")
    if nt != decoder_layers:
        raise ValueError(f"{name}: {nt} decoder layers (t), the model has {decoder_layers}")
    if nm != (mtp_layers or 0):
        raise ValueError(f"{name}: {nm} MTP layers (m), the model has {mtp_layers or 0}")
    if nm:
        where = [c for c, chunk in enumerate(chunks) if "m" in chunk]
        if len(where) > 1:
            raise ValueError(f"{name}: the MTP layers (m) must all be in one chunk")
        c = where[0]
        if "t" in flat[flat.index("m"):]:
            raise ValueError(f"{name}: the decoder layers (t) must all come before the MTP "
                             f"layers (m)")
        if c < n - p:
            raise ValueError(f"{name}: the MTP layers (m) must be in the last chunk of their "
                             f"pipeline rank (chunk {c} is not)")
