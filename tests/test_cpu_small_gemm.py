"""The bf16 small-rows linear (engine/cpu_small_gemm.py) gives a float32 matmul's result rounded once
to bf16, as oneDNN's bf16 GEMM does (its sum adds in another order, so a value may land one bf16
step away); PrepackedLinear routes a bf16 decode-sized input to it and everything else to oneDNN."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import cpu_small_gemm
from engine.cpu_gemm import PrepackedLinear

pytestmark = pytest.mark.skipif(not cpu_small_gemm.available(),
                                reason="the kernel needs cc and a CPU with AVX-512 BF16")


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x.float() @ weight.float().T).bfloat16()


def assert_within_a_bf16_step(out: torch.Tensor, expected: torch.Tensor) -> None:
    # one bf16 step of the value, or of the row's largest value where float32's cancellation leaves
    # a small value whose last bits depend on the order of the sum
    tolerance = torch.maximum(expected.float().abs() * 2**-7, expected.float().abs().amax(-1, keepdim=True) * 2**-12)
    assert ((out.float() - expected.float()).abs() <= tolerance).all()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, cpu_small_gemm.MAX_ROWS), blocks=st.integers(1, 13), half_k=st.integers(1, 300),
       row_pad=st.integers(0, 5), seed=st.integers(0, 2**31 - 1))
def test_it_equals_a_float32_matmul_rounded_once(rows, blocks, half_k, row_pad, seed):
    """Every tile shape (1-6 rows, 1-4 blocks of 16 columns), rows strided as a slice of a wider activation."""
    gen = torch.Generator().manual_seed(seed)
    n, k = 16 * blocks, 2 * half_k
    weight = (torch.randn(n, k, generator=gen) * 0.05).bfloat16()
    x = torch.randn(rows, k + row_pad, generator=gen).bfloat16()[:, :k]
    out = cpu_small_gemm.SmallGemmWeight(weight).matmul(x)
    assert out is not None and out.shape == (rows, n)
    assert_within_a_bf16_step(out, reference(x, weight))


def test_a_wrong_answer_is_caught():
    """The tolerance above fails a kernel that drops one input pair or swaps the pair's halves."""
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(64, 576, generator=gen) * 0.05).bfloat16()
    x = torch.randn(8, 576, generator=gen).bfloat16()
    expected = reference(x, weight)
    dropped = x.clone()
    dropped[:, 300:302] = 0
    swapped = x.view(8, 288, 2).flip(-1).reshape(8, 576)
    for wrong in (dropped, swapped):
        with pytest.raises(AssertionError):
            assert_within_a_bf16_step(cpu_small_gemm.SmallGemmWeight(weight).matmul(wrong), expected)


def test_it_declines_what_it_does_not_compute():
    weight = torch.randn(64, 32).bfloat16()
    small = cpu_small_gemm.SmallGemmWeight(weight)
    assert small.matmul(torch.randn(cpu_small_gemm.MAX_ROWS + 1, 32).bfloat16()) is None  # prefill: oneDNN's
    assert small.matmul(torch.randn(4, 32)) is None  # float32
    assert small.matmul(torch.randn(32, 4).bfloat16().T) is None  # a strided last dimension
    assert not cpu_small_gemm.SmallGemmWeight.applies_to(torch.randn(40, 32).bfloat16())  # N not a multiple of 16
    assert not cpu_small_gemm.SmallGemmWeight.applies_to(torch.randn(64, 32))


@pytest.mark.parametrize("rows", [1, 7, cpu_small_gemm.MAX_ROWS, cpu_small_gemm.MAX_ROWS + 1, 300])
def test_prepacked_linear_gives_the_same_values_either_way(rows):
    """Decode rows through the C kernel, prefill rows through oneDNN: the same matmul, 3-D input too."""
    gen = torch.Generator().manual_seed(rows)
    weight = (torch.randn(960, 576, generator=gen) * 0.05).bfloat16()
    linear = PrepackedLinear(weight)
    assert linear.small_rows is not None
    x = torch.randn(1, rows, 576, generator=gen).bfloat16()
    out = linear(x)
    assert out.shape == (1, rows, 960)
    assert_within_a_bf16_step(out[0], reference(x[0], weight))
