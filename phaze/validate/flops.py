"""Narayanan et al. (SC'21) Eq. 3: FLOP per training iteration of a GPT model,
F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), which counts the forward pass twice (full
activation recomputation) and the backward pass as twice the forward. Table 1's TFLOP/s
per GPU are F / (iteration time x GPUs); phaze reports its predictions the same way."""

from __future__ import annotations


def eq3_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    b, s, l, h, v = float(batch), float(seq), float(layers), float(hidden), float(vocab)
    return 96.0 * b * s * l * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * l * h))


def eq3_tflops_per_gpu(time_per_iteration_s: float, gpus: int, batch: int, seq: int,
                       layers: int, hidden: int, vocab: int) -> float:
    return eq3_flops(batch, seq, layers, hidden, vocab) / (time_per_iteration_s * gpus) / 1e12


def eq3_time_s(tflops_per_gpu: float, gpus: int, batch: int, seq: int, layers: int,
               hidden: int, vocab: int) -> float:
    """Iteration time implied by a TFLOP/s-per-GPU figure (inverse of the above)."""
    return eq3_flops(batch, seq, layers, hidden, vocab) / (tflops_per_gpu * 1e12 * gpus)
