"""The scheduler's speculative-decoding accounting, vLLM 0.33's Scheduler spec blocks in one place.

engine.scheduler.Scheduler calls these; kept apart so the scheduler reads as continuous batching
and stays one idea per file. Behaviour is the scheduler's: nothing here holds state of its own
beyond the acceptance counts.
"""
from __future__ import annotations

from engine.config import SpeculativeConfig
from engine.kv_cache_manager import KVCacheManager
from engine.outputs import DraftTokenIds
from engine.request import Request
from engine.spec_decode.metrics import SpecDecodingStats
from engine.spec_decode.rejection_sampler import PLACEHOLDER_TOKEN_ID


def scheduler_state(speculative_config: SpeculativeConfig | None) -> tuple[int, int, SpecDecodingStats]:
    """num_spec_tokens, num_lookahead_tokens and the acceptance counts of a scheduler; 0, 0 without
    speculation (vLLM: VllmConfig.num_speculative_tokens / num_lookahead_tokens)."""
    num_spec_tokens = speculative_config.num_speculative_tokens if speculative_config else 0
    num_lookahead_tokens = speculative_config.num_lookahead_tokens if speculative_config else 0
    return num_spec_tokens, num_lookahead_tokens, SpecDecodingStats.new(num_spec_tokens)


def schedule_drafts(request: Request, num_new_tokens: int, scheduled_spec_decode_tokens: dict[str, list[int]]) -> None:
    """Schedule the drafts of a running request that fit in num_new_tokens; drop the rest.

    Mirrors: vllm.v1.core.sched.scheduler:Scheduler.schedule (vllm 0.33.0), its "Speculative
    decode related" block; the drafter proposes afresh after the step.
    """
    num_scheduled_spec_tokens = (
        num_new_tokens + request.num_computed_tokens - request.num_tokens - request.num_output_placeholders
    )
    if num_scheduled_spec_tokens > 0:
        scheduled_spec_decode_tokens[request.request_id] = request.spec_token_ids[:num_scheduled_spec_tokens]
    request.spec_token_ids = []


def pads_admission(
    num_spec_tokens: int, num_new_tokens: int, num_computed_tokens: int,
    prefill_scheduled: bool, has_decodes: bool, max_model_len: int,
) -> bool:
    """Whether an admission with one token left is padded to 1 + k tokens (k placeholder drafts,
    always rejected): vLLM keeps the step's decodes uniform for its CUDA graphs."""
    return (
        num_spec_tokens > 0 and num_new_tokens == 1 and not prefill_scheduled and has_decodes
        and num_computed_tokens + 1 + num_spec_tokens + 1 <= max_model_len
    )


def placeholder_drafts(num_spec_tokens: int) -> list[int]:
    return [PLACEHOLDER_TOKEN_ID] * num_spec_tokens


def roll_back_rejected(
    request: Request, scheduled_spec_token_ids: list[int], new_token_ids: list[int], stats: SpecDecodingStats
) -> None:
    """Count the step's accepted drafts and take the rejected ones out of num_computed_tokens.

    The rejected drafts' KV slots stay allocated and are overwritten next step; only the count of
    computed tokens goes back (vLLM: update_from_output, num_computed_tokens -= num_rejected), and
    under async scheduling the placeholders that counted them. vLLM skips both for stale output; a
    stale request here is preempted and not yet readmitted (engine.async_scheduler), so both counts
    are 0 and the guards below skip it the same way.
    """
    num_accepted = len(new_token_ids) - 1
    num_rejected = len(scheduled_spec_token_ids) - num_accepted
    if request.num_computed_tokens > 0:
        request.num_computed_tokens -= num_rejected
    if request.num_output_placeholders > 0:
        request.num_output_placeholders -= num_rejected
    stats.observe_draft(len(scheduled_spec_token_ids), num_accepted)


def update_draft_token_ids(requests: dict[str, Request], draft_token_ids: DraftTokenIds,
                           structured_output_manager=None) -> None:
    # Mirrors: vllm.v1.core.sched.scheduler:Scheduler.update_draft_token_ids (vllm 0.33.0)
    # A structured request keeps its drafts up to the first its grammar refuses (validate_tokens).
    for request_id, spec_token_ids in zip(draft_token_ids.req_ids, draft_token_ids.draft_token_ids):
        request = requests.get(request_id)
        if request is None or request.is_finished:
            continue
        # A prefill chunk's drafts were proposed from a partial prompt: dropped.
        request.spec_token_ids = [] if request.is_prefill_chunk else list(spec_token_ids)
        if structured_output_manager is not None and request.spec_token_ids:
            request.spec_token_ids = structured_output_manager.validate_tokens(request, request.spec_token_ids)


def cache_accepted_blocks(kv_cache_manager: KVCacheManager, request: Request) -> None:
    """Accepted drafts may have filled blocks: cache them now (before a stopped request is freed),
    as vLLM does when speculating; allocate_slots cached only up to the tokens known at schedule time.
    Under async scheduling the step in flight is counted as computed but has not run: left out."""
    kv_cache_manager.cache_blocks(request, request.num_computed_tokens - request.num_in_flight_tokens)
