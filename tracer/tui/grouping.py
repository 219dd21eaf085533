"""Which traces make up which request (tracer.tui.model's requests), and the ids they share.

A live server's request is one trace rooted at http.request; an engine's own request spans (vLLM's
llm_request, SGLang's "Req ..." spans) and a replay's per-span traces join a request by id.
"""
from __future__ import annotations

from typing import Any, Callable

from tracer.traces.schema import EXTERNAL_ID, NATIVE_REQUEST_ID_KEYS, REQUEST_ID
from tracer.traces.trace_file import SpanRecord, TraceFile


def aliases(trace: TraceFile, by_trace: dict[str, list[SpanRecord]], step_traces: set[str]) -> dict[str, str]:
    """vLLM's internal request ids -> the external id beside them (on a request's own spans:
    step spans name batches, not one request)."""
    alias: dict[str, str] = {}
    if EXTERNAL_ID in getattr(trace, "absent_keys", ()):  # known by the loader: no span has one
        return alias
    for trace_id, members in by_trace.items():
        if trace_id in step_traces:
            continue
        for span in members:
            external = span.attributes.get(EXTERNAL_ID)
            if external is not None and REQUEST_ID in span.attributes:
                alias[str(span.attributes[REQUEST_ID])] = str(external)
    return alias


def _owner_id(members: list[SpanRecord], canonical: Callable[[Any], str]) -> str | None:
    """The request id a trace's spans carry first (ours, else an engine's native key)."""
    for span in members:
        if REQUEST_ID in span.attributes:
            return canonical(span.attributes[REQUEST_ID])
    for span in members:  # no span of ours named it: an engine's own tracing (SGLang's "rid")
        for key in NATIVE_REQUEST_ID_KEYS:
            if key in span.attributes:
                return canonical(span.attributes[key])
    return None


def _rooted(members: list[SpanRecord], by_span_id: dict[str, SpanRecord], roots: frozenset[str]) -> bool:
    """The trace holds an entrypoint (http.request) with no parent in the file: one request's
    trace. Spans are in start order, so the root is nearly always first."""
    for span in members:
        if span.name in roots and (span.parent_span_id is None or span.parent_span_id not in by_span_id):
            return True
    return False


def group_requests(
    by_trace: dict[str, list[SpanRecord]], step_traces: set[str], by_span_id: dict[str, SpanRecord],
    entrypoints: frozenset[str], known: frozenset[str], canonical: Callable[[Any], str],
) -> tuple[dict[str, list[SpanRecord]], dict[str, str], dict[str, str], list[list[SpanRecord]]]:
    """Requests from the non-step traces: (rows by name, row name of each trace, renamed ids,
    traces that are no request: an engine's own spans with no request id).

    A trace rooted at an entrypoint (http.request) is one request: its own row, even when
    another such trace carries the same id (a client that reuses X-Request-Id sends two
    requests; the second row is named 'ID (2)'). Any other trace joins the row of the id it
    carries: an engine's own request span (vLLM's llm_request, SGLang's 'Req ...' spans), a
    request part that lost its context (an older trace's orphan enqueue), the request spans a
    replay records in traces of their own; no such row yet, it becomes one by id."""
    requests: dict[str, list[SpanRecord]] = {}  # row name -> its spans
    request_of_trace: dict[str, str] = {}
    renamed: dict[str, str] = {}  # id -> the row it names, where that row's name is not the id
    unrooted: list[tuple[int, str, list[SpanRecord], str | None]] = []
    roots = entrypoints
    first_seen: dict[str, int] = {}  # row -> the position of its first trace: rows in start order
    for position, (trace_id, members) in enumerate(by_trace.items()):
        if trace_id in step_traces:
            continue
        owner = _owner_id(members, canonical)
        if not roots or not _rooted(members, by_span_id, roots):
            unrooted.append((position, trace_id, members, owner))
            continue
        name = owner or f"trace:{trace_id[:8]}"  # e.g. an HTTP request rejected before it had an id
        if name in requests:
            name = _unique(name, requests)
            if owner is not None:
                renamed[owner] = name  # later batch ids of a repeated id name the latest request
            for span in members:
                if REQUEST_ID in span.attributes:
                    renamed[str(span.attributes[REQUEST_ID])] = name
        request_of_trace[trace_id] = name
        requests[name] = list(members)
        first_seen[name] = position
    foreign: list[list[SpanRecord]] = []
    for position, trace_id, members, owner in unrooted:
        if owner is None and known and not any(span.name in known for span in members):
            foreign.append(members)
            continue
        name = renamed.get(owner, owner) if owner is not None else f"trace:{trace_id[:8]}"
        request_of_trace[trace_id] = name
        spans = requests.get(name)
        if spans is None:
            requests[name] = spans = []
        spans.extend(members)
        first_seen[name] = min(first_seen.get(name, position), position)
    if unrooted and len(requests) > 1:  # rows of the second pass go back to their place in time
        requests = dict(sorted(requests.items(), key=lambda item: first_seen[item[0]]))
    return requests, request_of_trace, renamed, foreign


def _unique(name: str, taken: dict[str, Any]) -> str:
    number = 2
    while f"{name} ({number})" in taken:
        number += 1
    return f"{name} ({number})"
