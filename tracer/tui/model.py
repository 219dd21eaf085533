"""A trace file as the explorer sees it: requests, engine steps, and who took part in what.

No Textual here: this is the part that must be fast (one pass over the spans, every index
built once) and is tested on its own.

How spans become requests and steps (the trace shape is tracer/instrument/spans.py's):
- a step is a step-scope root span (catalog scope "step": engine.step, scheduler.schedule, ...)
  with its trace. A scheduler.schedule root opens a new step; so does an engine.step root,
  unless the open step is a schedule with no engine.step yet (SGLang schedules before
  run_batch). Other step-scope roots (an update traced without its engine.step, as in replay)
  join the open step.
- a request is a trace rooted at http.request (a live server's request, across every process
  it ran in: one row, even where a client reused its X-Request-Id), joined by the other
  non-step traces that carry its id: an engine's own request spans (vLLM's llm_request), a
  replay's request-scope spans in traces of their own (tracer.tui.grouping). Traces rooted at
  render / enqueue without HTTP group by id. vLLM's internal ids (external id + suffix) fold
  into the external id via servetrace.request.external_id.
- a request took part in a step when the step's batch names it (servetrace.batch.request_ids),
  when the step links to its trace, or when one of its spans links to the step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable

from tracer.traces.schema import (
    ENGINE_MODE,
    ENGINE, ENGINE_VERSION, EXTERNAL_ID, LINK_KIND, LINK_OVERLAP, LINK_REPORTED, LINK_STEP, LINK_WAITING,
    HTTP_REQUEST_ID_HEADER, NATIVE_REQUEST_ID_KEYS, OPERATION, REQUEST_ID, SERVICE_NAME,
)
from tracer.traces.trace_file import SkippedLine, SpanRecord, TraceFile
from tracer.tui.grouping import aliases, group_requests
from tracer.tui.memory import gc_paused
from tracer.tui.reader import append_each, group_by
from tracer.tui.summaries import RequestSummary, summarise
from tracer.tui.steps import Step, StepShape, batch_of, chronological, segment_steps, step_shape  # noqa: F401 (Step, StepShape: the model's public names)

if TYPE_CHECKING:
    from tracer.tui.why import WhyIndex

ID_KEYS = (REQUEST_ID, EXTERNAL_ID, HTTP_REQUEST_ID_HEADER, *NATIVE_REQUEST_ID_KEYS)  # what the filter matches


@dataclass(eq=False)
class Request:
    """A request's spans and steps; its summary is computed on first read (a 2,000-request
    trace opens without reading every request span's attributes)."""

    request_id: str
    spans: list[SpanRecord] = field(default_factory=list)  # chronological
    steps: list[Step] = field(default_factory=list)

    @cached_property
    def summary(self) -> RequestSummary:
        return summarise(self)

    @cached_property
    def ids(self) -> frozenset[str]:
        """Every id the request is known by (ours, vLLM's internal one, the client's X-Request-Id):
        what the filter matches. Read when first asked."""
        out = {self.request_id}
        for span in self.spans:
            attributes = span.attributes
            for key in ID_KEYS:
                value = attributes.get(key)
                if value is not None:
                    out.add(str(value))
        return frozenset(out)

    @cached_property
    def operation(self) -> str:
        """chat or text_completion (gen_ai.operation.name on its HTTP / render span), '' if unrecorded."""
        return next((str(s.attributes[OPERATION]) for s in self.spans if OPERATION in s.attributes), "")

    @cached_property
    def label(self) -> str:
        """What the requests table names the row: its id, or the client's X-Request-Id where the
        id does not hold it. vLLM builds its id from the header (X becomes cmpl-X); SGLang names
        a request by a uuid of its own, and the header is the id the user knows."""
        for span in self.spans:
            header = span.attributes.get(HTTP_REQUEST_ID_HEADER)
            if header is not None:
                return self.request_id if str(header) in self.request_id else str(header)
        return self.request_id

    @property
    def prompt_tokens(self) -> int | None:
        return self.summary.prompt_tokens

    @property
    def output_tokens(self) -> int | None:
        return self.summary.output_tokens

    @property
    def cached_tokens(self) -> int | None:
        return self.summary.cached_tokens

    @property
    def start_ns(self) -> int:
        return self.summary.start_ns

    @property
    def end_ns(self) -> int:
        return self.summary.end_ns

    @property
    def first_token_ns(self) -> int | None:
        return self.summary.first_token_ns

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def error(self) -> str:
        return self.summary.error

    @property
    def ttft_ns(self) -> int | None:
        first = self.summary.first_token_ns
        return None if first is None else first - self.summary.start_ns

    @property
    def latency_ns(self) -> int:
        return self.summary.end_ns - self.summary.start_ns


@dataclass
class TraceModel:
    path: str
    spans: list[SpanRecord]
    skipped: list[SkippedLine]
    requests: dict[str, Request]
    steps: list[Step]
    by_span_id: dict[str, SpanRecord]
    step_of_span: dict[str, Step]
    # Traces of an engine's own tracing that name no request (vLLM's "Overall Loading" startup
    # spans): not requests, so not rows; the explorer says how many there are.
    foreign_traces: list[list[SpanRecord]] = field(default_factory=list)
    # False when no span is a forward pass (a replay: forced outputs stood in for the model), so
    # its times say how long the scheduler took, not what a user waits: latencies count steps.
    ran_model: bool = True

    def _resource_value(self, key: str) -> str:
        """`key` of the first resource that has it: an engine's own tracing (vLLM's native spans,
        exported beside ours) has a resource without servetrace's keys."""
        seen: set[int] = set()
        for span in self.spans:
            resource = span.resource or {}
            if id(resource) in seen:
                continue
            if key in resource:
                return str(resource[key])
            seen.add(id(resource))
        return ""

    @cached_property
    def engine(self) -> str:
        """Which engine recorded the trace (the resource's servetrace.engine), '' if unknown."""
        return self._resource_value(ENGINE)

    @cached_property
    def engine_mode(self) -> str:
        """The engine mode the trace's spans name (servetrace.engine.mode: ours in cache_mode sglang), '' if none."""
        return next((str(span.attributes[ENGINE_MODE]) for span in self.spans if span.attributes.get(ENGINE_MODE)), "")

    @cached_property
    def engine_label(self) -> str:
        """What the catalog calls the trace's engine in its mode (mini-sglang), '' if unknown."""
        return self._flavor[0] if self.engine else ""

    @cached_property
    def mirrors(self) -> str:
        """The catalog engine whose mechanisms the trace's engine runs (sglang for mini-sglang): the
        source pane shows that engine's code beside ours."""
        return self._flavor[1]

    @cached_property
    def _flavor(self) -> tuple[str, str]:
        from tracer.catalog.hops import CatalogError, load_catalog

        try:
            return load_catalog().flavor(self.engine, self.engine_mode)
        except (CatalogError, OSError):
            return self.engine, ""

    @cached_property
    def engine_version(self) -> str:
        """The engine version the trace's resource records (servetrace.engine.version), '' if none."""
        return self._resource_value(ENGINE_VERSION)

    @cached_property
    def service(self) -> str:
        return self._resource_value(SERVICE_NAME)

    @cached_property
    def why(self) -> "WhyIndex":
        """The "why" view's timeline and recent explanations (tracer.tui.why): built on first use,
        once per model, and gone with it (a live window's models are replaced)."""
        from tracer.tui.why import WhyIndex  # the explain readers load only when asked

        return WhyIndex(self)

    def warning(self) -> str:
        """One line for the user when part of the file could not be read, else ''."""
        name = Path(self.path).name
        if not self.skipped:
            return "" if self.spans else f"{name}: no spans in this file"
        first = self.skipped[0]
        more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
        return (f"{name}: skipped {len(self.skipped)} unreadable line(s): line {first.line_number}: "
                f"{first.reason}{more}; showing the {len(self.spans)} spans that could be read")


def build_model(trace: TraceFile, shape: StepShape | None = None, pause_gc: bool = True) -> TraceModel:
    """`pause_gc`: built under tracer.tui.memory.gc_paused (a trace opened to be kept). A live
    window's models (tracer.tui.live) are replaced every second: frozen, the garbage around them
    would be kept for good, and held off, the young collection after the build would scan all
    the build made at once (tens of ms, on whichever thread allocates next: the UI's too)."""
    shape = step_shape() if shape is None else shape
    if not pause_gc:
        return _build_model(trace, shape)
    with gc_paused():
        return _build_model(trace, shape)


def _build_model(trace: TraceFile, shape: StepShape) -> TraceModel:
    spans = trace.spans
    by_span_id = dict(zip(map(_span_id, spans), spans))
    by_trace: dict[str, list[SpanRecord]] = group_by(map(_trace_id, spans), spans)

    steps, step_of_span, step_traces = segment_steps(spans, by_trace, by_span_id, shape)

    alias = aliases(trace, by_trace, step_traces)
    canonical_id: Callable[[Any], str] = (lambda rid: alias.get(str(rid), str(rid))) if alias else str
    rows, request_of_trace, row_of, foreign = group_requests(by_trace, step_traces, by_span_id, shape.entrypoints,
                                                             shape.known, canonical_id)
    requests = {name: Request(name, spans) for name, spans in rows.items()}
    # A batch id names a row through its canonical id; a row renamed for a repeated id (or an
    # internal id of a request whose external id repeats) is found through row_of.
    if row_of:
        def canonical(request_id: Any) -> str:
            text = str(request_id)
            return row_of.get(text) or row_of.get(alias.get(text, text)) or alias.get(text, text)
    else:
        canonical = canonical_id  # str when nothing is aliased: called in C, for every batch id

    for request in requests.values():
        chronological(request.spans)
        for span in request.spans:
            for link in span.links:
                step = step_of_span.get(link.span_id)
                if step is not None and (link.attributes.get(LINK_KIND) in (None, LINK_STEP)):
                    if not step.linked or step.linked[-1] is not span:
                        step.linked.append(span)

    steps_of = {rid: request.steps for rid, request in requests.items()}
    owner_of = request_of_trace.get
    for step in steps:
        tokens = batch_of(step, canonical)
        step.canonical = canonical
        # Requests linked to or from the step: most are in its batch already (checked in C).
        # A "reported" link (a finish the step reports for a request it did not run) is not taking part,
        # nor a "waiting" one (the head a step that scheduled nobody left waiting).
        # An "overlap" link (async scheduling) points at another step's model execution, not a request.
        batch_links = [[link for link in span.links if link.attributes.get(LINK_KIND) not in (LINK_REPORTED, LINK_OVERLAP, LINK_WAITING)]
                       for span in step.spans if span.links]
        for linked in batch_links + [step.linked]:
            if not tokens.keys() >= set(map(owner_of, map(_trace_id, linked))):
                _add_absent(tokens, map(owner_of, map(_trace_id, linked)))
        step.request_ids = list(tokens)
        # Steps come in index order. Appended in C when every id names a request (as it does).
        if tokens.keys() <= steps_of.keys():
            append_each(map(steps_of.__getitem__, tokens), step)
        else:
            for rid in tokens:
                if rid in steps_of:
                    steps_of[rid].append(step)
    ran_model = not shape.forward or any(map(shape.forward.__contains__, map(_name, spans)))
    return TraceModel(trace.path, spans, trace.skipped, requests, steps, by_span_id, step_of_span, foreign, ran_model)


_trace_id, _span_id, _name = attrgetter("trace_id"), attrgetter("span_id"), attrgetter("name")


def _add_absent(tokens: dict[str, Any], owners: Iterable[str | None]) -> None:
    """Add each owner not yet in `tokens`, in order."""
    for owner in owners:
        if owner is not None and owner not in tokens:
            tokens[owner] = 0
