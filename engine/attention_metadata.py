"""The batch layout of one forward pass, read by every attention backend.

Its own module so that engine/attention.py (the torch backend, which picks a backend per step)
and engine/triton_attention.py (the Triton backend) both import it and neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TorchPlan:
    """Where each request's context lives, worked out once per step and reused by every layer."""

    # Decode rows (each new token of a request with at most SHORT_QUERY), batched: their rows in the flat batch (None when the
    # batch is exactly those rows in order), the blocks holding their context [B, max_blocks] and an
    # additive padding mask [B, 1, 1, max_blocks * block_size] (0 or -inf) in the dtype attention computes in.
    decode_rows: torch.Tensor | None
    decode_blocks: torch.Tensor | None
    decode_mask: torch.Tensor | None
    # Each decode row's context length [B] (int64; what engine/cpu_decode_attention.py reads instead of the mask).
    decode_seq_lens: torch.Tensor | None
    # Each prefill (or chunk) on its own: (query start, query end, context slots [L], context start).
    prefills: list[tuple[int, int, torch.Tensor, int]]
    # The same prefills as int64 tensors for engine/cpu_prefill_attention.py, one entry each: first
    # query row [P], new tokens [P], context length [P] and block table [P, max_blocks].
    prefill_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@dataclass
class AttentionMetadata:
    """Batch layout of one forward pass (vLLM: CommonAttentionMetadata)."""

    # [T] flat index block_id * block_size + offset where each new token's K/V is written.
    slot_mapping: torch.Tensor
    # [B + 1] request r's new tokens are query[query_start_loc[r]:query_start_loc[r + 1]].
    query_start_loc: torch.Tensor
    # [B] context length of each request *including* its new tokens.
    seq_lens: torch.Tensor
    # [B, max_blocks] block ids of each request, padded (the padding is never read).
    block_tables: torch.Tensor
    # [T] position of each new token in its sequence (used by RoPE).
    positions: torch.Tensor
    # Host copies of query_start_loc / seq_lens, so the per-request split needs no device sync.
    query_start_loc_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None
    # "torch" (engine/attention.py, for reading) or "triton" (engine/triton_attention.py, for the GPU).
    attention_backend: str = "torch"
    # Filled by the torch backend on the first layer of a step and reused by the others.
    torch_plan: TorchPlan | None = None

    def __post_init__(self) -> None:
        if self.query_start_loc_cpu is None:
            self.query_start_loc_cpu = self.query_start_loc.tolist()
        if self.seq_lens_cpu is None:
            self.seq_lens_cpu = self.seq_lens.tolist()

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_cpu)

    def query_lens(self) -> list[int]:
        starts = self.query_start_loc_cpu
        return [starts[i + 1] - starts[i] for i in range(self.num_reqs)]
