"""Paged attention, Triton backend: the same contract as engine.attention.paged_attention.

Two kernels read K/V straight out of the paged pool [num_blocks, block_size, num_kv_heads, head_dim]
through the block tables, so no request's context is ever gathered into a padded copy:

- decode (every request has one new token): one program per (request, kv head, split). The
  program loads the query heads of its GQA group together, so each K/V tile is read once for the
  whole group; long contexts are cut into splits (split-K, "flash decoding") whose partial
  results a second kernel merges by their log-sum-exp. The grid depends only on tensor shapes,
  never on the context lengths' values, so the call can be captured in a CUDA graph.
- prefill (any batch with a request of more than one new token, including chunks over a cached
  prefix): one program per (request, query tile, head), causal over the cached + new keys.

Mirrors: vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.forward (vllm 0.33.0)
In 0.33 the Triton kernels live under vllm.v1.attention.ops, and TritonAttentionImpl.forward runs
every decoder batch, decode or prefill, through one kernel, unified_attention
(vllm/v1/attention/backends/triton_attn.py:697 TritonAttentionImpl.forward,
vllm/v1/attention/ops/triton_unified_attention.py:828 unified_attention); the split decode kernel
(vllm/v1/attention/ops/triton_decode_attention.py:718 decode_attention_fwd_grouped) is not on that
path. Ours keeps the two kernels apart, written for reading rather than for the last few percent.

Tiles are loaded in the cache dtype and multiplied in float32 (IEEE for float32 caches, TF32 for
bfloat16/float16 ones, which holds bf16 inputs exactly): decode is bound by memory traffic, not
by the multiplies, and it keeps Triton's CPU interpreter (TRITON_INTERPRET=1) exact, which
mishandles bf16 tl.dot.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.attention_metadata import AttentionMetadata

# Keys per inner-loop tile, independent of the cache block size (a tile may span blocks).
TILE_N = 32
# Query tokens per prefill program.
BLOCK_M = 32
# tl.dot needs every dimension to be at least 16 on the GPU.
MIN_DOT_DIM = 16


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of query [T, heads, head_dim] over each request's paged K/V (already written)."""
    # T == number of requests means every request brought exactly one token: a decode-only batch.
    # Both are shapes, so a CUDA graph captured on this branch replays on it.
    if query.shape[0] == metadata.block_tables.shape[0]:
        return paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, scale)
    max_query_len = max(metadata.query_lens())
    return paged_prefill_attention(
        query, k_cache, v_cache, metadata.query_start_loc, metadata.seq_lens, metadata.block_tables, scale, max_query_len
    )


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """query [B, heads, head_dim] (row b = request b's one new token) -> output of the same shape.

    num_splits: how many pieces each context is cut into; None picks enough to fill the device.
    """
    _check_inputs(query, k_cache, v_cache)
    # The split count is a runtime argument (only its power-of-two ceiling is compiled in), so an eager
    # decode whose block tables widen step by step does not recompile at every new width.
    num_reqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    max_tiles = triton.cdiv(block_tables.shape[1] * block_size, TILE_N)
    if num_splits is None:
        num_splits = _default_num_splits(num_reqs * num_kv_heads, max_tiles, query.device)
    num_splits = max(1, min(num_splits, max_tiles))
    tiles_per_split = triton.cdiv(max_tiles, num_splits)
    num_splits = triton.cdiv(max_tiles, tiles_per_split)

    output = torch.empty_like(query)
    if num_splits == 1:
        # The single split writes the final output itself; the partial buffers are never touched.
        partial_out = partial_lse = output
    else:
        partial_out = torch.empty(num_reqs, num_splits, num_heads, head_dim, dtype=torch.float32, device=query.device)
        partial_lse = torch.empty(num_reqs, num_splits, num_heads, dtype=torch.float32, device=query.device)
    _decode_split_kernel[(num_reqs, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens,
        output, partial_out, partial_lse,
        scale, tiles_per_split, num_splits, num_heads,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        output.stride(0), output.stride(1),
        GROUP=group,
        GROUP_PAD=max(MIN_DOT_DIM, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        TILE_N=TILE_N,
        SINGLE_SPLIT=num_splits == 1,
        DOT_PRECISION=_dot_precision(k_cache.dtype),
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_reqs, num_heads)](
            partial_out, partial_lse, output,
            num_splits, num_heads, output.stride(0), output.stride(1),
            HEAD_DIM=head_dim,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
        )
    return output


def paged_prefill_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
) -> torch.Tensor:
    """Flat query [T, heads, head_dim] of several requests -> output of the same shape.

    Request r's query rows query_start_loc[r]:query_start_loc[r + 1] are its last tokens: row j of
    q rows sits at context index seq_lens[r] - q + j and sees keys 0..that index.
    """
    _check_inputs(query, k_cache, v_cache)
    num_reqs = block_tables.shape[0]
    _, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    output = torch.empty_like(query)
    grid = (num_reqs, triton.cdiv(max_query_len, BLOCK_M), num_heads)
    _prefill_kernel[grid](
        query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, output,
        scale,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        output.stride(0), output.stride(1),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_M=BLOCK_M,
        TILE_N=TILE_N,
        DOT_PRECISION=_dot_precision(k_cache.dtype),
    )
    return output


# ---------------------------------------------------------------- kernels


@triton.jit
def _decode_split_kernel(
    query_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, partial_out_ptr, partial_lse_ptr,
    scale, tiles_per_split, num_splits, num_heads,
    stride_q_tok, stride_q_head,
    stride_k_block, stride_k_slot, stride_k_head,
    stride_v_block, stride_v_slot, stride_v_head,
    stride_bt_req,
    stride_o_tok, stride_o_head,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr, SINGLE_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)

    member = tl.arange(0, GROUP_PAD)
    is_head = member < GROUP  # rows past the GQA group are padding for tl.dot
    heads = kv_head * GROUP + member
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        query_ptr + req * stride_q_tok + heads[:, None] * stride_q_head + dims[None, :],
        mask=is_head[:, None], other=0.0,
    ).to(tl.float32)
    q = q * scale

    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    split_start = split * tiles_per_split * TILE_N
    split_end = tl.minimum(split_start + tiles_per_split * TILE_N, seq_len)
    for tile_start in range(split_start, split_end, TILE_N):
        pos = tile_start + tl.arange(0, TILE_N)
        in_context = pos < seq_len
        block_ids = tl.load(
            block_tables_ptr + req * stride_bt_req + pos // BLOCK_SIZE, mask=in_context, other=0
        ).to(tl.int64)
        slots = pos % BLOCK_SIZE
        k = tl.load(
            k_cache_ptr + block_ids[:, None] * stride_k_block + slots[:, None] * stride_k_slot
            + kv_head * stride_k_head + dims[None, :],
            mask=in_context[:, None], other=0.0,
        ).to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [GROUP_PAD, TILE_N]
        scores = tl.where(in_context[None, :], scores, float("-inf"))
        # Online softmax: the tile's first key is always in context, so new_max is finite.
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        correction = tl.exp(running_max - new_max)
        p = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr + block_ids[:, None] * stride_v_block + slots[:, None] * stride_v_slot
            + kv_head * stride_v_head + dims[None, :],
            mask=in_context[:, None], other=0.0,
        ).to(tl.float32)
        acc = acc * correction[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        running_max = new_max

    if SINGLE_SPLIT:
        out = acc / running_sum[:, None]
        tl.store(
            out_ptr + req * stride_o_tok + heads[:, None] * stride_o_head + dims[None, :],
            out.to(out_ptr.dtype.element_ty), mask=is_head[:, None],
        )
    else:
        # A split wholly past the context saw no key: weight zero (lse = -inf) in the merge.
        has_keys = running_sum > 0
        safe_sum = tl.where(has_keys, running_sum, 1.0)
        lse = tl.where(has_keys, running_max + tl.log(safe_sum), float("-inf"))
        row = (req * num_splits + split) * num_heads + heads
        tl.store(partial_out_ptr + row[:, None] * HEAD_DIM + dims[None, :], acc / safe_sum[:, None], mask=is_head[:, None])
        tl.store(partial_lse_ptr + row, lse, mask=is_head)


@triton.jit
def _merge_splits_kernel(
    partial_out_ptr, partial_lse_ptr, out_ptr,
    num_splits, num_heads, stride_o_tok, stride_o_head,
    HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    is_split = splits < num_splits
    dims = tl.arange(0, HEAD_DIM)
    row = (req * num_splits + splits) * num_heads + head
    lse = tl.load(partial_lse_ptr + row, mask=is_split, other=float("-inf"))
    # Split 0 always holds key 0, so the maximum is finite.
    weights = tl.exp(lse - tl.max(lse, 0))
    parts = tl.load(partial_out_ptr + row[:, None] * HEAD_DIM + dims[None, :], mask=is_split[:, None], other=0.0)
    out = tl.sum(parts * weights[:, None], 0) / tl.sum(weights, 0)
    tl.store(out_ptr + req * stride_o_tok + head * stride_o_head + dims, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _prefill_kernel(
    query_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, out_ptr,
    scale,
    stride_q_tok, stride_q_head,
    stride_k_block, stride_k_slot, stride_k_head,
    stride_v_block, stride_v_slot, stride_v_head,
    stride_bt_req,
    stride_o_tok, stride_o_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    req = tl.program_id(0)
    q_tile = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    if q_tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)

    rows = q_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    is_row = rows < q_len
    # Context index of each query row; padding rows past q_len only see real keys, never stored.
    q_pos = seq_len - q_len + rows
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        query_ptr + (q_start + rows)[:, None] * stride_q_tok + head * stride_q_head + dims[None, :],
        mask=is_row[:, None], other=0.0,
    ).to(tl.float32)
    q = q * scale

    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Causality: this tile's last row sees keys up to its own context index, none past seq_len.
    keys_end = tl.minimum(seq_len, seq_len - q_len + (q_tile + 1) * BLOCK_M)
    for tile_start in range(0, keys_end, TILE_N):
        pos = tile_start + tl.arange(0, TILE_N)
        in_context = pos < seq_len
        block_ids = tl.load(
            block_tables_ptr + req * stride_bt_req + pos // BLOCK_SIZE, mask=in_context, other=0
        ).to(tl.int64)
        slots = pos % BLOCK_SIZE
        k = tl.load(
            k_cache_ptr + block_ids[:, None] * stride_k_block + slots[:, None] * stride_k_slot
            + kv_head * stride_k_head + dims[None, :],
            mask=in_context[:, None], other=0.0,
        ).to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, TILE_N]
        visible = in_context[None, :] & (pos[None, :] <= q_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        # Key 0 is visible to every row, so a row's maximum turns finite on the first tile.
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        correction = tl.exp(running_max - new_max)
        p = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr + block_ids[:, None] * stride_v_block + slots[:, None] * stride_v_slot
            + kv_head * stride_v_head + dims[None, :],
            mask=in_context[:, None], other=0.0,
        ).to(tl.float32)
        acc = acc * correction[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        running_max = new_max

    out = acc / running_sum[:, None]
    tl.store(
        out_ptr + (q_start + rows)[:, None] * stride_o_tok + head * stride_o_head + dims[None, :],
        out.to(out_ptr.dtype.element_ty), mask=is_row[:, None],
    )


# ---------------------------------------------------------------- helpers


def _check_inputs(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if query.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"expected query [T, heads, head_dim] and k/v caches [num_blocks, block_size, kv_heads, head_dim] of one "
            f"shape; got query {tuple(query.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    head_dim = query.shape[-1]
    if head_dim < MIN_DOT_DIM or head_dim & (head_dim - 1):
        raise ValueError(f"the Triton attention backend needs a power-of-two head_dim >= 16, got {head_dim}; use 'torch'")
    if query.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {k_cache.shape[2]} kv heads")
    if query.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("query and k/v caches must be contiguous in head_dim")


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _default_num_splits(num_programs: int, max_tiles: int, device: torch.device) -> int:
    """Enough splits for about two programs per streaming multiprocessor (one split on the CPU)."""
    if device.type != "cuda":
        return 1
    target = 2 * _multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(max_tiles, triton.cdiv(target, num_programs)))


@functools.cache
def _multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count
