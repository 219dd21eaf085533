"""Span attributes for the compact engine's optional decoding paths: speculative decoding (propose,
verify), structured output (grammar compile, bitmask fill / apply, jump-forward) and async
scheduling's wait on the step in flight. Read-only, as mini.py."""
from __future__ import annotations

from typing import Any

from tracer.instrument.extractors import BATCH_IDS, BATCH_SIZE, NUM_OUTPUTS, REQUEST_ID, spec_propose_counts, spec_verify_counts
from tracer.traces.schema import (
    BATCH_QUEUE_LEN, DROP, GRAMMAR_CACHE_HIT, GRAMMAR_COMPILE_MS, GRAMMAR_JUMP_TOKENS, GRAMMAR_KIND,
    GRAMMAR_MASKED_FRACTION, GRAMMAR_NUM_ROWS, WAITED_STEP,
)


def spec_propose_after(args: dict, drafts: list[list[int]]) -> dict:
    return spec_propose_counts(drafts)


def spec_verify_after(args: dict, output_token_ids: Any) -> dict:
    return spec_verify_counts(args["metadata"].num_draft_tokens, output_token_ids)


def grammar_compile_before(args: dict) -> dict:
    """StructuredOutputManager._create_grammar (on a compile thread): the request and its constraint."""
    request = args["request"]
    return {REQUEST_ID: request.request_id, GRAMMAR_KIND: request.structured_output_request.kind}


def grammar_compile_after(args: dict, _: Any) -> dict:
    so_request = args["request"].structured_output_request
    ms = None if so_request.compile_time_s is None else so_request.compile_time_s * 1000.0
    return {GRAMMAR_COMPILE_MS: ms, GRAMMAR_CACHE_HIT: so_request.cache_hit}


def grammar_fill_before(args: dict) -> dict:
    ids = list(args["structured_output_request_ids"])
    return {BATCH_IDS: ids, BATCH_SIZE: len(ids), DROP: not ids}


def grammar_fill_after(args: dict, output: Any) -> dict:
    if output is None:
        return {}
    fractions = output.masked_fractions
    return {GRAMMAR_NUM_ROWS: int(output.grammar_bitmask.shape[0]),
            GRAMMAR_MASKED_FRACTION: sum(fractions) / len(fractions) if fractions else None}


def grammar_apply_before(args: dict) -> dict:
    output = args["grammar_output"]
    return {GRAMMAR_NUM_ROWS: len(output.structured_output_request_ids), BATCH_SIZE: int(args["logits"].shape[0])}


def jump_forward_before(args: dict) -> dict:
    return {REQUEST_ID: args["request"].request_id}


def jump_forward_after(args: dict, jump: Any) -> dict:
    # Tokens forced beyond those the retokenization replaced; a step with nothing forced is no event.
    return {GRAMMAR_JUMP_TOKENS: jump.num_forced, DROP: not jump.token_ids}


def wait_before(args: dict) -> dict:
    """BatchQueue._apply_oldest: the oldest step in flight sits on the right of the queue."""
    queue = args["self"].queue
    return {WAITED_STEP: getattr(queue[-1][1], "step", None)} if queue else {}


def wait_after(args: dict, outputs: list) -> dict:
    return {BATCH_QUEUE_LEN: len(args["self"].queue), NUM_OUTPUTS: len(outputs)}


BEFORE = {
    "overlap.wait": wait_before,
    "grammar.compile": grammar_compile_before,
    "grammar.bitmask_fill": grammar_fill_before,
    "grammar.bitmask_apply": grammar_apply_before,
    "grammar.jump_forward": jump_forward_before,
}
AFTER = {
    "overlap.wait": wait_after,
    "spec.propose": spec_propose_after,
    "spec.verify": spec_verify_after,
    "grammar.compile": grammar_compile_after,
    "grammar.bitmask_fill": grammar_fill_after,
    "grammar.jump_forward": jump_forward_after,
}
