"""The h100 preset's kernel model against kernels timed on an H200 (benchmarks/data/h200_*;
benchmarks/bench_h200_kernels.py prints the whole comparison). The H200 is the H100's die
with faster HBM, so only compute-bound kernels are compared, and the same-shape check below
is what allows that."""

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_h200_kernels.py"


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("bench_h200_kernels", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with contextlib.redirect_stdout(io.StringIO()):
        return mod.main()


def test_compute_bound_kernels_match_the_h100(figures):
    # large GEMMs and fused attention run at the H100's speed on the H200; memory-bound
    # kernels (vector, small GEMMs) do not, and are not compared
    assert 0.9 < figures["same_shapes"]["gemm (>= 2^33 MNK)"] < 1.1
    assert 0.85 < figures["same_shapes"]["attention"] < 1.1
    assert figures["same_shapes"]["vector"] < 0.8


def test_bf16_kernels_and_cudnn_attention(figures):
    k = figures["kernels"]
    assert k["gemm bf16"][0] < 0.08
    assert k["attention (cudnn)"][0] < 0.15
    assert k["attention_bwd (cudnn)"][0] < 0.20
    assert figures["expert_loops"]["bf16"][0] < 0.25


def test_a_whole_layer_at_boost_clock(figures):
    # Llama-3-8B layer, forward + backward through autograd: the sum of the model's kernel
    # times (no training-run derating) against the measured step in its first 0.15 s
    ratio = figures["sustained"]["layer model / measured (kernel parameters)"]
    assert abs(ratio - 1) < 0.05


def test_whole_layers_of_the_h100_tables(figures):
    # the Megatron-LM README's GPT layers (1.7B-177B, one TP rank, with and without
    # dropout) and a Llama-3-8B layer: what the README fit leaves to the training-run
    # factor is not in the kernels
    ratios = figures["layers"]
    assert len(ratios) >= 10
    assert all(abs(r - 1) < 0.06 for r in ratios.values()), ratios


def test_attention_dropout_cycles_are_the_fit_on_the_layer_pairs(figures):
    # what dropout adds to a whole layer (measured with minus without) decides the h100
    # preset's flash_dropout_cpe: the shipped value is the least-squares one, and every
    # pair comes within 15 % with it (without the in-kernel term the model gave 31-83 %
    # of what dropout adds)
    d = figures["dropout"]
    assert d["shipped"] == pytest.approx(d["fitted"], abs=0.5)
    assert len(d["pairs"]) == 5
    assert all(abs(r - 1) < 0.15 for r in d["pairs"].values()), d["pairs"]
