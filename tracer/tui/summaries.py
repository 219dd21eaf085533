"""A request's summary (the requests table's row): tokens, TTFT, latency, status.

Computed from the request's own spans and the steps it took part in (tracer.tui.model), when
its row is first drawn: a 2,000-request trace opens without reading every request span.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from tracer.traces.schema import (
    BATCH_FINISHED, BATCH_IDS, BATCH_NEW_TOKENS, CACHED_TOKENS, FINISH_REASONS, INPUT_TOKENS, NEW_TOKENS,
    OUTPUT_TOKENS, STATUS,
)
from tracer.traces.trace_file import SpanRecord
from tracer.tui.hop_readings import DETOKENIZE, PREFIX_LOOKUP, UPDATE


# What a summary reads of tracer.tui.model's Step and Request, stated here so that this module
# need not import the model (the model imports this one: Request.summary).
class StepLike(Protocol):
    spans: list[SpanRecord]
    end_ns: int

    @property
    def scheduled_tokens(self) -> dict[str, int]: ...

    def attribute(self, key: str, default: Any = None) -> Any: ...


class RequestLike(Protocol):
    request_id: str
    spans: list[SpanRecord]
    steps: Sequence[StepLike]


# SGLang's finish reasons as its classes are named (a span records type(req.finished_reason)),
# read as the OpenAI finish reasons SGLang's own to_json() gives them: sglang 0.5.23,
# srt/managers/schedule_batch.py:284-341 (FINISH_MATCHED_TOKEN ... FINISH_ABORT).
SGLANG_FINISH_REASONS = {"FINISH_MATCHED_TOKEN": "stop", "FINISH_MATCHED_STR": "stop",
                         "FINISHED_MATCHED_REGEX": "stop", "FINISH_LENGTH": "length", "FINISH_ABORT": "abort"}


def finish_reason(value: Any) -> str:
    """A recorded finish reason as the requests table shows it (stop, length, abort)."""
    text = str(value)
    return SGLANG_FINISH_REASONS.get(text, text)


@dataclass
class RequestSummary:
    """What the requests table shows of a request (computed from its spans and steps)."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    start_ns: int = 0
    end_ns: int = 0
    first_token_ns: int | None = None
    status: str = "unfinished"
    error: str = ""


def summarise(request: RequestLike) -> RequestSummary:
    """What the requests table shows of `request`, from its spans and the steps it took part in."""
    spans = request.spans
    summary = RequestSummary()
    rid = request.request_id
    summary.start_ns = min((s.start_ns for s in spans), default=0)
    summary.end_ns = max([s.end_ns for s in spans] + [st.end_ns for st in request.steps[-1:]], default=0)
    detokenized = 0
    saw_detokenize = False
    for span in spans:
        attrs = span.attributes
        if summary.prompt_tokens is None and INPUT_TOKENS in attrs:
            summary.prompt_tokens = int(attrs[INPUT_TOKENS])
        if OUTPUT_TOKENS in attrs:
            summary.output_tokens = int(attrs[OUTPUT_TOKENS])
        if span.name == DETOKENIZE:
            saw_detokenize = True
            detokenized += int(attrs.get(NEW_TOKENS, 0) or 0)
            if summary.first_token_ns is None and attrs.get(NEW_TOKENS, 1):
                summary.first_token_ns = span.start_ns
        reasons = attrs.get(FINISH_REASONS)
        if isinstance(reasons, list) and reasons and span.name != UPDATE:
            summary.status = finish_reason(reasons[0])
        elif str(attrs.get(STATUS, "")).startswith("FINISHED") and summary.status == "unfinished":
            summary.status = str(attrs[STATUS]).removeprefix("FINISHED_").lower()
        if span.status == "ERROR" and not summary.error:
            summary.error = span.status_message or f"{span.name} failed"
    summary.cached_tokens = _admission_hit(request)
    if not saw_detokenize:
        # Our engine detokenizes a whole batch in its step: the request's share is in the step's span.
        for span, new_tokens in _batch_detokenized(request):
            saw_detokenize = True
            detokenized += new_tokens
            if summary.first_token_ns is None and new_tokens:
                summary.first_token_ns = span.end_ns
    if summary.output_tokens is None and saw_detokenize:
        summary.output_tokens = detokenized
    if summary.status == "unfinished":
        for step in request.steps:
            finished = step.attribute(BATCH_FINISHED) or []
            if rid in finished:
                reasons = step.attribute(FINISH_REASONS) or []
                index = finished.index(rid)
                summary.status = finish_reason(reasons[index]) if index < len(reasons) else "finished"
    if summary.error:
        summary.status = "error"
    if summary.first_token_ns is None and summary.prompt_tokens is not None:
        # No detokenize hop (replay): the first token comes out of the step that completes the prefill.
        done = summary.cached_tokens or 0
        for step in request.steps:
            done += step.scheduled_tokens.get(rid, 0)
            if done >= summary.prompt_tokens:
                summary.first_token_ns = step.end_ns
                break
    return summary


def _batch_detokenized(request: RequestLike) -> Iterator[tuple[SpanRecord, int]]:
    """(detokenize span, the request's new tokens in it) for each step of the request that detokenized it."""
    rid = request.request_id
    for step in request.steps:
        for span in step.spans:
            if span.name != DETOKENIZE:
                continue
            ids = span.attributes.get(BATCH_IDS)
            if isinstance(ids, list) and rid in ids:
                counts = span.attributes.get(BATCH_NEW_TOKENS)
                index = ids.index(rid)
                yield span, int(counts[index]) if isinstance(counts, list) and index < len(counts) else 1


def _admission_hit(request: RequestLike) -> int | None:
    """The cached tokens of the lookup that admitted the request: the last one before its first
    scheduled step ended (a request refused for blocks is looked up again each step; SGLang's lpm
    policy looks up every waiting request each pass without its last-token cap, and looks up again
    when it caches a finished request). Without a scheduled step, the first lookup."""
    lookups = sorted((s for s in request.spans if s.name == PREFIX_LOOKUP and CACHED_TOKENS in s.attributes),
                     key=lambda s: s.start_ns)
    if not lookups:
        return None
    rid = request.request_id
    first = next((step for step in request.steps if step.scheduled_tokens.get(rid, 0) > 0), None)
    before = [s for s in lookups if first is not None and s.start_ns <= first.end_ns]
    return int((before[-1] if before else lookups[0]).attributes[CACHED_TOKENS])
