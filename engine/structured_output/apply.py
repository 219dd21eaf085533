"""The scheduler's bitmask applied to the logits before sampling (the model-runner side).

Mirrors: vllm.v1.structured_output.utils:apply_grammar_bitmask (vllm 0.33.0)
The bitmask arrives in structured_output_request_ids order; the logits are in the runner's batch
order. vLLM reorders into a full-batch mask of all-ones rows and calls xgrammar's
apply_token_bitmask_inplace on the structured rows only (utils.py:101-175); Model Runner V2 does
the same in a Triton kernel (vllm/v1/worker/gpu/structured_outputs.py:70-128 StructuredOutputsWorker.apply_grammar_bitmask).
"""
from __future__ import annotations

import torch
import xgrammar as xgr


def apply_grammar_bitmask(logits: torch.Tensor, sampled_req_ids: list[str], grammar_output,
                          num_drafts: list[int] | None = None) -> None:
    """Mask, in place, the logits rows of structured requests. The logits hold 1 + num_drafts[i]
    rows for sampled_req_ids[i] (one each without speculation), in that order; the bitmask a
    block of mask_stride rows per structured request, its first 1 + drafts filled (vLLM:
    utils.py:101-175, the cumulative_offset over scheduled_spec_decode_tokens)."""
    num_drafts = num_drafts or [0] * len(sampled_req_ids)
    first_row: dict[str, tuple[int, int]] = {}
    offset = 0
    for req_id, drafts in zip(sampled_req_ids, num_drafts, strict=True):
        first_row[req_id] = (offset, 1 + drafts)
        offset += 1 + drafts
    bitmask = grammar_output.grammar_bitmask
    mask_stride = bitmask.shape[0] // len(grammar_output.structured_output_request_ids)
    out_indices: list[int] = []
    mask_rows: list[int] = []
    for index, req_id in enumerate(grammar_output.structured_output_request_ids):
        rows = first_row.get(req_id)
        if rows is not None:  # a request that samples nothing this step has no logits row
            logit_row, num_rows = rows
            out_indices.extend(range(logit_row, logit_row + num_rows))
            mask_rows.extend(range(index * mask_stride, index * mask_stride + num_rows))
    if not out_indices:
        return
    sorted_bitmask = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=bitmask.dtype)
    sorted_bitmask[out_indices] = bitmask[mask_rows]
    skip_indices = len(out_indices) == logits.shape[0]
    xgr.apply_token_bitmask_inplace(
        logits, sorted_bitmask.to(logits.device, non_blocking=True), indices=None if skip_indices else out_indices
    )
