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


def apply_grammar_bitmask(logits: torch.Tensor, sampled_req_ids: list[str], grammar_output) -> None:
    """Mask, in place, the logits rows of structured requests; logits row i belongs to sampled_req_ids[i]."""
    row_of = {req_id: row for row, req_id in enumerate(sampled_req_ids)}
    bitmask = grammar_output.grammar_bitmask
    out_indices: list[int] = []
    mask_rows: list[int] = []
    for mask_row, req_id in enumerate(grammar_output.structured_output_request_ids):
        row = row_of.get(req_id)
        if row is not None:  # a request that samples nothing this step has no logits row
            out_indices.append(row)
            mask_rows.append(mask_row)
    if not out_indices:
        return
    sorted_bitmask = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=bitmask.dtype)
    sorted_bitmask[out_indices] = bitmask[mask_rows]
    skip_indices = len(out_indices) == logits.shape[0]
    xgr.apply_token_bitmask_inplace(
        logits, sorted_bitmask.to(logits.device, non_blocking=True), indices=None if skip_indices else out_indices
    )
