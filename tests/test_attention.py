"""Paged attention against plain dense causal attention: whatever the block size, the cached
prefix length, the scattering of blocks in the pool, or the mix of requests in one flat batch."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention import AttentionMetadata, paged_attention, write_kv_cache
from engine.math_utils import cdiv
from tests.paged_batches import decode_step


@settings(max_examples=40, deadline=None)
@given(
    block_size=st.sampled_from([1, 2, 4, 16]),
    shapes=st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 12)),  # (cached tokens, new tokens) per request
        min_size=1,
        max_size=5,
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_paged_attention_equals_dense_causal_attention(block_size, shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim = 4, 2, 8
    total_blocks = sum(cdiv(c + n, block_size) for c, n in shapes) + 1
    k_cache = torch.zeros(total_blocks, block_size, kv_heads, dim)
    v_cache = torch.zeros_like(k_cache)
    # Scatter each request's blocks over the pool in a random order.
    free = (torch.randperm(total_blocks - 1, generator=gen) + 1).tolist()
    queries, new_keys, new_values, slots, starts, tables, expected = [], [], [], [], [0], [], []
    for cached, new in shapes:
        length = cached + new
        blocks = [free.pop() for _ in range(cdiv(length, block_size))]
        tables.append(blocks)
        q = torch.randn(new, heads, dim, generator=gen)
        k = torch.randn(length, kv_heads, dim, generator=gen)
        v = torch.randn(length, kv_heads, dim, generator=gen)
        slot = [blocks[p // block_size] * block_size + p % block_size for p in range(length)]
        write_kv_cache(k[:cached], v[:cached], k_cache, v_cache, torch.tensor(slot[:cached], dtype=torch.long))
        queries.append(q)
        new_keys.append(k[cached:])
        new_values.append(v[cached:])
        slots += slot[cached:]
        starts.append(starts[-1] + new)
        # Dense reference: query i sits at position cached + i and sees keys 0..cached + i.
        kr, vr = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("qhd,khd->hqk", q, kr) / dim**0.5
        mask = torch.arange(length)[None, :] <= (cached + torch.arange(new))[:, None]
        scores = scores.masked_fill(~mask, float("-inf"))
        expected.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vr))
    width = max(map(len, tables))
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.long),
        query_start_loc=torch.tensor(starts),
        seq_lens=torch.tensor([c + n for c, n in shapes]),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        positions=torch.cat([torch.arange(c, c + n) for c, n in shapes]),
    )
    write_kv_cache(torch.cat(new_keys), torch.cat(new_values), k_cache, v_cache, metadata.slot_mapping)
    out = paged_attention(torch.cat(queries), k_cache, v_cache, metadata, scale=dim**-0.5)
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_bfloat16_decode_batch_over_scattered_blocks_matches_float32_attention():
    """A bf16 decode-only batch (the path engine/attention.py upcasts on the CPU): same answer as
    float32 on the same bf16-rounded K/V, to bf16 precision, in bf16."""
    heads, kv_heads, dim, block_size = 9, 3, 64, 16
    query, k_cache, v_cache, metadata = decode_step([1, 17, 40, 95], heads, kv_heads, dim, block_size, torch.bfloat16, seed=0)
    out = paged_attention(query, k_cache, v_cache, metadata(), scale=dim**-0.5)
    expected = paged_attention(query.float(), k_cache.float(), v_cache.float(), metadata(), scale=dim**-0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
