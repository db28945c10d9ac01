"""`phaze evaluate` and the Narayanan Eq. 3 FLOP count."""

from __future__ import annotations

import json

import pytest

from phaze.place.evaluate import narayanan_flops


def test_narayanan_eq3_decomposition():
    # per block and sample: 24 s h^2 (1 + s/6h) FLOP forward; x3 training, x4 with recompute;
    # logits 2 s h V forward, x3 always (never recomputed)
    B, s, l, h, V = 8, 2048, 96, 12288, 51200
    block_fwd = 24 * B * s * h * h * (1 + s / (6 * h))
    logit = 6 * B * s * h * V
    assert narayanan_flops(B, s, l, h, V, True) == pytest.approx(4 * l * block_fwd + logit, rel=1e-12)
    assert narayanan_flops(B, s, l, h, V, False) == pytest.approx(3 * l * block_fwd + logit, rel=1e-12)


def test_evaluate_cli_json(capsys):
    from phaze.cli import main

    argv = ["evaluate", "--model", "gpt-1.7b", "--arch", "a100", "--tp", "1", "--pp", "2",
            "--dp", "4", "--mbs", "1", "--batch", "32", "--recompute", "full", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    for k in ("time_per_batch_s", "tflops_per_gpu_eq3", "memory_per_device_bytes", "compute_s",
              "bubble_s", "p2p_s", "dp_sync_s", "tp_s", "mfu"):
        assert k in out
    F = narayanan_flops(32, 2048, 24, 2304, 51200, True)
    assert out["tflops_per_gpu_eq3"] == pytest.approx(F / out["time_per_batch_s"] / 8 / 1e12)
    parts = sum(out[k] for k in ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s",
                                 "optimizer_s"))
    assert parts == pytest.approx(out["time_per_batch_s"])
    # pp that does not divide the 24 blocks -> one-line user error, exit 2
    assert main(argv[:8] + ["5"] + argv[9:]) == 2
