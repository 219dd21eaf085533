"""The bf16 C passes (engine/cpu_elementwise.py) give what the torch ops they replace give:
SiLU-and-mul bit for bit; RMSNorm bit for bit but for rare one-step differences (its sum of
squares adds in another order); a float32 model is never routed to them."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import cpu_elementwise
from engine.model import MLP, LlamaConfig, RMSNorm

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the kernels are built with the system's cc")


def torch_rms_norm(x, weight, eps):
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), dim=st.sampled_from([8, 17, 64, 576]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       seed=st.integers(0, 2**31 - 1))
def test_rms_norm_equals_the_torch_ops(rows, dim, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    wide = (torch.randn(rows, dim + 5, generator=gen) * scale).bfloat16()
    x = wide[:, 2 : dim + 2]  # rows strided, as a slice of a wider activation
    weight = (torch.randn(dim, generator=gen) * 0.2 + 1).bfloat16()
    out = cpu_elementwise.rms_norm(x, weight, 1e-5)
    expected = torch_rms_norm(x, weight, 1e-5)
    differ = out != expected
    assert differ.float().mean() <= 0.01
    # where they differ, by one bf16 step of the value (2^-7 relative at most)
    torch.testing.assert_close(out.float(), expected.float(), atol=0, rtol=2**-7)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), dim=st.sampled_from([8, 17, 64, 576]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       seed=st.integers(0, 2**31 - 1))
def test_add_rms_norm_updates_the_residual_as_the_add_and_norms_it_as_rms_norm(rows, dim, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, dim, generator=gen) * scale).bfloat16()
    residual = (torch.randn(rows, dim, generator=gen) * scale).bfloat16()
    weight = (torch.randn(dim, generator=gen) * 0.2 + 1).bfloat16()
    expected_residual = residual + x
    expected = cpu_elementwise.rms_norm(expected_residual, weight, 1e-5)  # the unfused C norm: same sum order
    out = cpu_elementwise.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(residual, expected_residual)  # in place, bit for bit the torch add
    assert torch.equal(out, expected)


def test_rms_norm_at_a_prefill_size_differs_in_under_one_element_in_ten_thousand():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2048, 576, generator=gen) * 3).bfloat16()
    weight = (torch.randn(576, generator=gen) * 0.2 + 1).bfloat16()
    differ = cpu_elementwise.rms_norm(x, weight, 1e-5) != torch_rms_norm(x, weight, 1e-5)
    assert differ.sum() < x.numel() // 10_000


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), half=st.sampled_from([1, 7, 64, 1536]), scale=st.sampled_from([0.1, 3.0, 20.0]),
       seed=st.integers(0, 2**31 - 1))
def test_silu_and_mul_is_bit_equal_to_the_torch_ops(rows, half, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(rows, 2 * half, generator=gen) * scale).clamp(-80, 80).bfloat16()
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(cpu_elementwise.silu_and_mul(gate_up), F.silu(gate) * up)


def test_silu_and_mul_far_outside_exps_range_is_still_silu():
    gate_up = torch.tensor([[-300.0, -100.0, 100.0, 300.0, 1.0, 1.0, 1.0, 1.0]]).bfloat16()
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(cpu_elementwise.silu_and_mul(gate_up).float(), (F.silu(gate) * up).float(), atol=1e-30, rtol=0)


def test_the_model_routes_bf16_only():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    x = torch.randn(3, 16)
    assert cpu_elementwise.rms_norm(x, torch.ones(16), 1e-5) is None  # float32: the torch ops
    assert cpu_elementwise.silu_and_mul(torch.randn(3, 48)) is None
    norm, mlp = RMSNorm(16, 1e-5).bfloat16(), MLP(config).bfloat16()
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    xb = x.bfloat16()
    assert torch.equal(norm(xb), cpu_elementwise.rms_norm(xb, norm.weight, 1e-5))
    gate, up = mlp.gate_up_proj(xb).chunk(2, dim=-1)
    assert torch.equal(mlp(xb), mlp.down_proj(F.silu(gate) * up))
