"""The shape a servetrace trace file must have, checked on the raw spans (no explorer merging).

One request is one trace rooted at its entrypoint (http.request), or at a request root when there
is no HTTP hop; every other trace is a step trace (or a batch-level trace such as detokenize)
whose root links to at least one request (one it ran, reports, or, having scheduled nobody, left
waiting at the head); the server's startup work is one `server.startup`
trace. Anything else is an orphan: a span that should have joined a request or a step and did not.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.catalog.hops import Catalog, load_catalog
from tracer.traces.schema import (
    EXTERNAL_ID, HTTP_REQUEST_ID_HEADER, LINK_KIND, LINK_REPORTED, LINK_REQUEST, LINK_WAITING, REQUEST_ID,
)
from tracer.traces.trace_file import SpanRecord


@dataclass
class RequestTrace:
    trace_id: str
    root: SpanRecord
    spans: list[SpanRecord]
    step_roots: list[SpanRecord] = field(default_factory=list)  # step traces whose root links here

    @property
    def ids(self) -> set[str]:
        """Every id the request is known by in any process (external, internal, header)."""
        out = set()
        for span in self.spans:
            for key in (REQUEST_ID, EXTERNAL_ID, HTTP_REQUEST_ID_HEADER):
                value = span.attributes.get(key)
                if value is not None:
                    out.add(str(value))
        return out

    def hops(self) -> set[str]:
        return {span.name for span in self.spans}


@dataclass
class TraceShape:
    requests: list[RequestTrace]
    step_traces: dict[str, list[SpanRecord]]  # trace id -> spans, rooted at a span linking to a request
    startup: list[list[SpanRecord]]  # server.startup traces
    orphans: dict[str, list[SpanRecord]]  # trace id -> spans of traces that fit no rule
    spans_by_trace: dict[str, list[SpanRecord]]

    def request_with_id(self, request_id: str) -> list[RequestTrace]:
        return [r for r in self.requests if request_id in r.ids]

    def step_spans_of(self, request: RequestTrace) -> list[SpanRecord]:
        """All spans of the step traces that link to the request (what ran for it in its steps)."""
        return [s for root in request.step_roots for s in self.spans_by_trace[root.trace_id]]

    def describe_orphans(self, limit: int = 10) -> str:
        lines = []
        for trace_id, spans in list(self.orphans.items())[:limit]:
            roots = [s for s in spans if s.parent_span_id is None or s.parent_span_id not in {x.span_id for x in spans}]
            names = ", ".join(sorted({s.name for s in spans}))
            root = roots[0] if roots else spans[0]
            lines.append(f"{trace_id[:8]}: root {root.name} (pid {root.resource.get('process.pid')}, "
                         f"id {root.request_id}) spans: {names}")
        more = len(self.orphans) - limit
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def analyse(spans: Iterable[SpanRecord], catalog: Catalog | None = None) -> TraceShape:
    catalog = catalog or load_catalog()
    entrypoints = set(catalog.with_role("entrypoint"))
    request_roots = set(catalog.with_role("request_root"))
    startup_roots = set(catalog.with_role("startup"))
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    requests: list[RequestTrace] = []
    step_traces: dict[str, list[SpanRecord]] = {}
    startup: list[list[SpanRecord]] = []
    orphans: dict[str, list[SpanRecord]] = {}
    request_span_ids: dict[str, RequestTrace] = {}
    for trace_id, members in by_trace.items():
        ids = {s.span_id for s in members}
        roots = [s for s in members if s.parent_span_id is None]
        # A trace whose root came from elsewhere (a client's traceparent) roots at its top span here.
        tops = roots or [s for s in members if s.parent_span_id not in ids]
        if len(tops) != 1:
            orphans[trace_id] = members
            continue
        root = tops[0]
        if root.name in entrypoints or (root.name in request_roots and not any(s.name in entrypoints for s in members)):
            request = RequestTrace(trace_id, root, members)
            requests.append(request)
            for span in members:
                request_span_ids[span.span_id] = request
        elif root.name in startup_roots:
            startup.append(members)
        elif any(link.attributes.get(LINK_KIND) in (LINK_REQUEST, LINK_REPORTED, LINK_WAITING) for link in root.links):
            step_traces[trace_id] = members
        else:
            orphans[trace_id] = members
    for members in step_traces.values():
        root = next(s for s in members if s.parent_span_id is None or s.parent_span_id not in {x.span_id for x in members})
        linked = {request_span_ids[link.span_id].trace_id: request_span_ids[link.span_id]
                  for link in root.links if link.span_id in request_span_ids}
        for request in linked.values():
            request.step_roots.append(root)
    return TraceShape(requests, step_traces, startup, orphans, dict(by_trace))
