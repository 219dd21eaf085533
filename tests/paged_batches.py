"""Paged-attention batches that more than one test file builds."""
from __future__ import annotations

import torch

from engine.attention import AttentionMetadata
from engine.math_utils import cdiv


def decode_step(lengths: list[int], heads: int, kv_heads: int, dim: int, block_size: int, dtype: torch.dtype, seed: int):
    """A decode-only batch (one new token per request, already in the cache) over blocks scattered in the pool."""
    return mixed_step([(n - 1, 1) for n in lengths], heads, kv_heads, dim, block_size, dtype, seed)


def mixed_step(requests: list[tuple[int, int]], heads: int, kv_heads: int, dim: int, block_size: int, dtype: torch.dtype,
               seed: int):
    """A step of (cached tokens, new tokens) per request: prefills, chunks after cached context and
    decodes side by side in one flat batch, every token's K/V already in blocks scattered in the pool."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [cached + new for cached, new in requests]
    num_blocks = sum(cdiv(n, block_size) for n in lengths) + 3
    free = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = [[free.pop() for _ in range(cdiv(n, block_size))] for n in lengths]
    width = max(map(len, tables))
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen).to(dtype)
    positions = [p for cached, new in requests for p in range(cached, cached + new)]
    owner = [r for r, (_, new) in enumerate(requests) for _ in range(new)]
    qkv = torch.randn(len(positions), heads + 2 * kv_heads, dim, generator=gen).to(dtype)
    starts = [0]
    for _, new in requests:
        starts.append(starts[-1] + new)
    metadata = lambda: AttentionMetadata(  # noqa: E731
        slot_mapping=torch.tensor([tables[r][p // block_size] * block_size + p % block_size for r, p in zip(owner, positions)]),
        query_start_loc=torch.tensor(starts),
        seq_lens=torch.tensor(lengths),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        positions=torch.tensor(positions),
    )
    return qkv[:, :heads], k_cache, v_cache, metadata
