"""Speculative decoding in a scheduler replay: forced drafts with forced acceptance lengths.

No model runs in a replay, so no proposer runs either: after each step the driver hands every
scheduler the same drafts (through the scheduler's own update_draft_token_ids, as vLLM's
EngineCore.post_step does) and, at the next step, the same verification result. A request's
drafts are its next forced output tokens with one corrupted at a position chosen by a hash of
(request id, tokens output so far); everything before that position is accepted, so the accepted
count is forced too, and the request's output stays its forced tokens whatever was drafted. Both
schedulers then decide what to schedule (1 + drafts tokens, drafts cut by the budget), roll back
num_computed_tokens by the rejected count and keep or reuse KV blocks by their own rules.
"""
from __future__ import annotations

import hashlib

# What a corrupted draft is replaced by: never a forced token (those are below the vocabulary size).
WRONG_TOKEN_OFFSET = 1


def forced_acceptance(request_id: str, num_output_tokens: int, num_drafts: int) -> int:
    """How many of the num_drafts drafts proposed after num_output_tokens outputs are accepted."""
    digest = hashlib.sha256(f"{request_id}:{num_output_tokens}".encode()).digest()
    return digest[0] % (num_drafts + 1)


def forced_drafts(
    request_id: str, forced_output: list[int], num_output_tokens: int, num_tokens: int, k: int, max_model_len: int
) -> list[int]:
    """The drafts proposed for a request after a step: up to k of its next forced tokens (no more
    than max_model_len leaves room for, as vLLM's n-gram proposer caps them), the first rejected
    one replaced by a token the forced output never has."""
    upcoming = forced_output[num_output_tokens: num_output_tokens + min(k, max_model_len - num_tokens)]
    if not upcoming:
        return []
    accepted = forced_acceptance(request_id, num_output_tokens, len(upcoming))
    drafts = list(upcoming)
    if accepted < len(drafts):
        drafts[accepted] = max(forced_output) + WRONG_TOKEN_OFFSET
    return drafts


def verified_output(forced_output: list[int], num_output_tokens: int, spec_token_ids: list[int]) -> list[int]:
    """What the model runner returns for a request scheduled with drafts: the agreeing drafts plus
    one token (greedy rejection sampling against a model that samples the forced output). Past the
    forced output (max_tokens reached inside the drafts) the tokens are 0: the stop check drops them."""
    accepted = 0
    for offset, draft in enumerate(spec_token_ids):
        if num_output_tokens + offset >= len(forced_output) or draft != forced_output[num_output_tokens + offset]:
            break
        accepted += 1
    tokens = forced_output[num_output_tokens: num_output_tokens + accepted + 1]
    return tokens + [0] * (accepted + 1 - len(tokens))


class ModelSide:
    """The model runner of an async speculative replay: what each step returns, fixed when the
    step is scheduled, from the outputs the model has produced so far (not the scheduler's count,
    which is optimistic by the drafts of the step in flight until that step's output arrives)."""

    def __init__(self) -> None:
        self.num_produced: dict[str, int] = {}

    def sample(self, runner, scheduler_output, admitted: set[str]) -> dict[str, list[int]]:
        sampled = {}
        spec = runner.scheduled_spec_decode_tokens(scheduler_output)
        for request_id in runner.num_scheduled_tokens(scheduler_output):
            request = runner._all[request_id]
            if request.is_prefill_chunk:
                sampled[request_id] = []
                continue
            forced = runner.forced_outputs[request_id]
            produced = self.num_produced.get(request_id, 0)
            num_drafts = len(spec.get(request_id, ()))
            # An admission's drafts are padding (-1), always rejected.
            accepted = 0 if request_id in admitted else forced_acceptance(request_id, produced, num_drafts)
            tokens = forced[produced: produced + accepted + 1]
            # Past the forced output only for a step that is dropped (its request stopped) or whose
            # extra tokens the stop check trims: 0s.
            sampled[request_id] = tokens + [0] * (accepted + 1 - len(tokens))
            self.num_produced[request_id] = produced + accepted + 1
        return sampled
