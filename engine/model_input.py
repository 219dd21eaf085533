"""What one forward pass is given: the flat batch's tensors (ModelInput), built from each request's
rows (RequestInput) by ModelRunner._build_model_input, on the scheduling thread or, for async
speculation, on the model thread (engine.spec_decode.worker_drafts)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention_metadata import AttentionMetadata
from engine.request import Request


@dataclass
class ModelInput:
    """Everything one forward pass needs, built by ModelRunner._prepare_inputs."""

    req_ids: list[str]
    requests: list[Request]
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn_metadata: AttentionMetadata
    # Rows (into the flat batch) whose hidden state is sampled, and the requests they belong to.
    logits_indices: torch.Tensor
    sampled_req_indices: list[int]
    # Async scheduling: rows of input_ids whose token the previous step samples (the request's
    # output placeholder), with their request ids; filled by execute_model_input.
    placeholder_rows: list[tuple[int, str]]
    # The generator of each sampled row's request (None: unseeded), looked up when the input is
    # prepared so that the runner's dict is only touched on the scheduling thread.
    generators: list[torch.Generator | None]
    step: int = 0  # the scheduler's step counter (SchedulerOutput.step), for traces
    # The drafts of each sampled request (empty without); any drafts: its rows are n + 1 per request.
    spec_drafts: list[list[int]] | None = None
    # With the bitmask filled while the forward runs (engine.structured_output.overlap): when the
    # forward started and when its logits were ready (perf_counter), for the bench.
    forward_window: tuple[float, float] | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class RequestInput:
    """One request's rows in a step's flat batch, before they become tensors."""

    request: Request
    num_computed_tokens: int  # the position of its first row
    token_ids: list[int]  # its known tokens in the step
    spec: list[int]  # the drafts after them (-1: vLLM's padding, always rejected)
    block_ids: list[int]
    placeholder: bool  # async scheduling: one more row, the token the step before samples
    generator: torch.Generator | None
    sampled: bool  # its rows reach the end of the known tokens
