"""Our RoPE (engine/model.py: the sign folded into sin, rotate_half as one roll) is bit-equal to
transformers' apply_rotary_pos_emb, in float32 and bfloat16, at any positions."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from engine.model import RotaryEmbedding, apply_rotary


@settings(max_examples=20, deadline=None)
@given(
    positions=st.lists(st.integers(0, 4095), min_size=1, max_size=12),
    head_dim=st.sampled_from([8, 64, 128]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_apply_rotary_is_bit_equal_to_transformers(positions, head_dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(positions), 5, head_dim, generator=gen).to(dtype)  # [T, heads, d]
    rope = RotaryEmbedding(head_dim, 10000.0)
    cos, signed_sin = rope(torch.tensor(positions), dtype)
    # transformers' tables: cos / sin of cat(freqs, freqs), in the model's dtype.
    freqs = torch.tensor(positions).float()[:, None] * rope.inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    expected, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None],
                                       angles.cos().to(dtype)[None], angles.sin().to(dtype)[None])
    assert torch.equal(apply_rotary(x, cos, signed_sin), expected[0].transpose(0, 1))
