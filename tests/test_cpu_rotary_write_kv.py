"""The bf16 C pass for attention's rotary and KV write (engine/cpu_elementwise.rotary_write_kv) gives
what engine.model.apply_rotary + engine.attention.write_kv_cache give, bit for bit: the rotated
queries, and the pool rows it writes (no other row changes); a slot outside the pool is an error."""
from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import cpu_elementwise
from engine.attention import write_kv_cache
from engine.model import RotaryEmbedding, apply_rotary

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the kernels are built with the system's cc")


def torch_path(qkv, cos, sin, slots, k_cache, v_cache, heads, kv_heads, dim):
    tokens = qkv.shape[0]
    qk = qkv[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim)
    q, k = apply_rotary(qk, cos, sin).split([heads, kv_heads], dim=1)
    v = qkv[:, (heads + kv_heads) * dim :].view(tokens, kv_heads, dim)
    write_kv_cache(k, v, k_cache, v_cache, slots)
    return q


@settings(max_examples=30, deadline=None)
@given(tokens=st.integers(1, 90), shape=st.sampled_from([(9, 3, 64), (4, 2, 8), (2, 1, 16), (3, 3, 32)]),
       block_size=st.sampled_from([4, 16]), scale=st.sampled_from([0.5, 4.0, 60.0]), seed=st.integers(0, 2**31 - 1))
def test_rotary_write_kv_is_bit_equal_to_the_torch_ops(tokens, shape, block_size, scale, seed):
    heads, kv_heads, dim = shape
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen) * scale).bfloat16()
    positions = torch.randint(0, 4096, (tokens,), generator=gen)
    cos, sin = RotaryEmbedding(dim, 10000.0)(positions, torch.bfloat16)
    num_blocks = -(-tokens // block_size) + 3
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]  # anywhere in the pool
    pools = [(torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen) * 2).bfloat16() for _ in range(2)]
    k_ours, v_ours = (p.clone() for p in pools)
    k_torch, v_torch = (p.clone() for p in pools)
    q = cpu_elementwise.rotary_write_kv(qkv, cos, sin, slots, k_ours, v_ours, heads)
    expected = torch_path(qkv, cos, sin, slots, k_torch, v_torch, heads, kv_heads, dim)
    assert torch.equal(q, expected)
    assert torch.equal(k_ours, k_torch) and torch.equal(v_ours, v_torch)


def test_a_slot_outside_the_pool_is_an_index_error():
    heads, kv_heads, dim = 2, 1, 8
    qkv = torch.randn(3, (heads + 2 * kv_heads) * dim).bfloat16()
    cos, sin = RotaryEmbedding(dim, 10000.0)(torch.arange(3), torch.bfloat16)
    k_cache = torch.zeros(2, 4, kv_heads, dim, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    with pytest.raises(IndexError, match="outside the pool"):
        cpu_elementwise.rotary_write_kv(qkv, cos, sin, torch.tensor([0, 8, 1]), k_cache, v_cache, heads)


def test_float32_and_mismatched_shapes_take_the_torch_ops():
    heads, kv_heads, dim = 2, 1, 8
    cos, sin = RotaryEmbedding(dim, 10000.0)(torch.arange(3), torch.bfloat16)
    k_cache = torch.zeros(2, 4, kv_heads, dim, dtype=torch.bfloat16)
    qkv32 = torch.randn(3, (heads + 2 * kv_heads) * dim)
    assert cpu_elementwise.rotary_write_kv(qkv32, cos, sin, torch.arange(3), k_cache, k_cache.clone(), heads) is None
    qkv = qkv32.bfloat16()
    assert cpu_elementwise.rotary_write_kv(qkv, cos, sin, torch.arange(3), k_cache, k_cache.clone(), heads + 1) is None
