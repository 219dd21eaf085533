"""Paged attention, torch reference backend.

Every layer keeps its K/V in a paged pool shaped [num_blocks, block_size, num_kv_heads, head_dim].
A step runs a flat batch of tokens from several requests (no padding); AttentionMetadata tells
each token where its K/V goes (slot_mapping) and which blocks hold each request's context
(block_tables). Written with plain torch ops, for reading.
Mirrors: vllm.v1.attention.backends.flash_attn:FlashAttentionMetadata, vllm._custom_ops:reshape_and_cache_flash, vllm.vllm_flash_attn.flash_attn_interface:flash_attn_varlen_func (vllm 0.33.0)
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

# AttentionMetadata lives in its own module so that both backends (this file and
# engine/triton_attention.py) import it without importing each other.
from engine import cpu_decode_attention, cpu_prefill_attention
from engine.attention_metadata import AttentionMetadata, TorchPlan

ATTENTION_BACKENDS = ("torch", "triton")
# Speed trick: a request with this few new tokens (a speculative verify of 1 + k) joins the batched
# decode call, one row per token, instead of a causal SDPA call of its own per layer, whose fixed
# cost times the batch made a verify step at batch 8 cost nearly twice a decode step.
SHORT_QUERY = 8


def resolve_attention_backend(name: str | None, device: torch.device) -> str:
    """None picks Triton on CUDA and the torch reference elsewhere."""
    if name is None:
        return "triton" if device.type == "cuda" else "torch"
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the triton attention backend runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (slow, for tests)")
    return name


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Scatter the new tokens' K/V [T, kv_heads, head_dim] into the paged pool.

    Mirrors: vllm._custom_ops:reshape_and_cache_flash (vllm 0.33.0).
    """
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    k_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    v_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def context_slots(block_table: torch.Tensor, context_len: int, block_size: int) -> torch.Tensor:
    """Flat pool index (block_id * block_size + offset) of the first context_len tokens of each row of block_table."""
    positions = torch.arange(context_len, device=block_table.device)
    return block_table[..., positions // block_size] * block_size + positions % block_size


def _plan(metadata: AttentionMetadata, block_size: int, query: torch.Tensor) -> TorchPlan:
    """Worked out once per step, on the first layer, from the metadata's tensors: no Python loop
    over decode requests (a decode-only batch, the common step, does a fixed handful of ops)."""
    if metadata.torch_plan is not None:
        return metadata.torch_plan
    device = query.device
    starts, seq_lens = metadata.query_start_loc_cpu, metadata.seq_lens_cpu
    num_reqs, num_tokens = len(seq_lens), starts[-1]
    decode_rows = decode_blocks = decode_mask = decode_seq_lens = None
    prefills: list[tuple[int, int, torch.Tensor, int]] = []
    prefill_batch = None
    if num_tokens == num_reqs:  # every request has one new token: all decode, rows in order
        tables, decode_seq_lens, max_len = metadata.block_tables, metadata.seq_lens, max(seq_lens)
    else:
        query_lens = metadata.query_lens()
        prefills = [
            (starts[r], starts[r + 1], context_slots(metadata.block_tables[r], seq_lens[r], block_size), seq_lens[r] - n)
            for r, n in enumerate(query_lens)
            if n > SHORT_QUERY
        ]
        prefill_reqs = [r for r, n in enumerate(query_lens) if n > SHORT_QUERY]
        if prefill_reqs and device.type == "cpu":
            prefill_batch = (torch.tensor([starts[r] for r in prefill_reqs]), torch.tensor([query_lens[r] for r in prefill_reqs]),
                             torch.tensor([seq_lens[r] for r in prefill_reqs]),
                             metadata.block_tables[torch.tensor(prefill_reqs)].to(torch.int64))
        # Decode rows: one per query token of a request with at most SHORT_QUERY new tokens (a
        # decode, a speculative verify of 1 + k tokens), each row seeing its own causal prefix.
        rows = [(starts[r] + j, r, seq_lens[r] - n + j + 1)
                for r, n in enumerate(query_lens) if n <= SHORT_QUERY for j in range(n)]
        tables = None
        if rows:
            req_idx = torch.tensor([r for _, r, _ in rows], device=device)
            if len(rows) != num_tokens:
                decode_rows = torch.tensor([row for row, _, _ in rows], device=device)
            tables = metadata.block_tables[req_idx]
            decode_seq_lens = torch.tensor([row_len for _, _, row_len in rows], device=device)
            max_len = max(row_len for _, _, row_len in rows)
    if tables is not None:
        # Whole blocks, not token slots: one index per block_size tokens; the tail is masked.
        width = -(-max_len // block_size)
        decode_blocks = tables[:, :width].contiguous()
        beyond = torch.arange(width * block_size, device=device)[None, :] >= decode_seq_lens[:, None]
        decode_mask = torch.zeros(beyond.shape, dtype=decode_compute_dtype(query), device=device)
        decode_mask = decode_mask.masked_fill_(beyond, float("-inf"))[:, None, None, :]
    metadata.torch_plan = TorchPlan(decode_rows, decode_blocks, decode_mask, decode_seq_lens, prefills, prefill_batch)
    return metadata.torch_plan


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of query [T, heads, head_dim] over each request's cached + new keys.

    The new tokens' K/V must already be in the cache. Query token j of a request with q new tokens
    and context length L sits at context index L - q + j and sees keys 0..L - q + j, which covers
    plain prefill (q == L), prefill after a cached prefix or an earlier chunk (q < L), and decode
    (q == 1). Decode requests are batched into one call; each prefill runs on its own so a long
    prompt never pads the short ones.
    """
    if metadata.attention_backend == "triton":
        from engine import triton_attention  # imports Triton, so only when asked for

        return triton_attention.paged_attention(query, k_cache, v_cache, metadata, scale)
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    plan = _plan(metadata, block_size, query)
    if not plan.prefills and plan.decode_rows is None:
        return _decode_attention(query, k_cache, v_cache, plan, scale)
    output = torch.empty_like(query)
    if plan.decode_blocks is not None:
        output[plan.decode_rows] = _decode_attention(query[plan.decode_rows], k_cache, v_cache, plan, scale)
    if plan.prefill_batch is not None and _prefill_kernel(query, k_cache, v_cache, plan, output, scale):
        return output  # the C kernel (engine/cpu_prefill_attention.py says what it buys); the same math below
    keys = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    values = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    for start, end, slots, context_start in plan.prefills:
        key, value = keys.index_select(0, slots), values.index_select(0, slots)
        output[start:end] = _sdpa(query[start:end], key, value, scale, context_start)
    return output


def _prefill_kernel(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TorchPlan,
                    output: torch.Tensor, scale: float) -> bool:
    """Every prefill of the step through the C kernel, written into output; False: the torch path runs."""
    if query.device.type != "cpu":
        return False
    starts, lens, seq_lens, tables = plan.prefill_batch
    return cpu_prefill_attention.prefill_attention(query, k_cache, v_cache, tables, starts, lens, seq_lens, output, scale)


def decode_compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype decode attention computes in: float32 for a bfloat16 / float16 model on the CPU.

    Speed trick: torch's CPU flash-attention kernel is several times slower in bfloat16 than in
    float32 at decode shapes on this AVX-512 BF16 CPU without AMX (4.4x for 8 requests at 1 thread:
    bench/results/cpu_kernels.md, "bf16 decode attention"), and a decode step's gathered context is
    small, so upcasting it and running the float32 kernel is faster; it also keeps float32
    accumulation, as the bfloat16 kernel does internally. On CUDA: as is.
    """
    if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return query.dtype


def _decode_attention(
    query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TorchPlan, scale: float
) -> torch.Tensor:
    """One row per decode token [B, heads, head_dim], each over its own causal prefix; padded, tail masked."""
    out = cpu_decode_attention.decode_attention(query, k_cache, v_cache, plan.decode_blocks, plan.decode_seq_lens, scale)
    if out is not None:  # the C kernel (engine/cpu_decode_attention.py says what it buys); the same math below
        return out
    batch, width = plan.decode_blocks.shape
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    # The batch's context as whole blocks in one index_select each (vectorized over the batch).
    blocks = plan.decode_blocks.view(-1)
    key = k_cache.index_select(0, blocks).view(batch, width * block_size, num_kv_heads, head_dim).transpose(1, 2)
    value = v_cache.index_select(0, blocks).view(batch, width * block_size, num_kv_heads, head_dim).transpose(1, 2)
    compute_dtype = plan.decode_mask.dtype
    out = F.scaled_dot_product_attention(
        query.unsqueeze(2).to(compute_dtype),  # [B, heads, 1, head_dim]
        key.to(compute_dtype),
        value.to(compute_dtype),
        attn_mask=plan.decode_mask,
        scale=scale,
        enable_gqa=query.shape[1] != num_kv_heads,
    )
    return out.squeeze(2).to(query.dtype)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, context_start: int) -> torch.Tensor:
    """query [q, heads, d] at context indices context_start.., key/value [L, kv_heads, d]."""
    q = query.transpose(0, 1).unsqueeze(0)
    k = key.transpose(0, 1).unsqueeze(0)
    v = value.transpose(0, 1).unsqueeze(0)
    enable_gqa = q.shape[1] != k.shape[1]
    if context_start == 0:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa)
    else:
        q_pos = torch.arange(context_start, context_start + query.shape[0], device=query.device)
        k_pos = torch.arange(key.shape[0], device=query.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)
    return out.squeeze(0).transpose(0, 1)
