"""Span records -> Chrome trace-event JSON, which ui.perfetto.dev and chrome://tracing open.

Layout: one process per traced OS process (its service name); in it one track for the engine
(step traces, and spans that belong to no request) and one track per request. OTel links
become flow arrows: from the linked span to the span that links to it (request -> the steps
that served it; step -> the request spans that ran inside it).
"""
from __future__ import annotations

from typing import Any

from tracer.traces.schema import BATCH_IDS, LINK_KIND, PROCESS_PID, SERVICE_NAME
from tracer.traces.trace_file import SpanRecord

ENGINE_TRACK = 1


def _request_of_trace(spans: list[SpanRecord]) -> str | None:
    roots = [s for s in spans if s.parent_span_id is None] or spans
    for span in sorted(roots, key=lambda s: s.start_ns) + spans:
        if span.request_id is not None and not span.attributes.get(BATCH_IDS):
            return span.request_id
    return None


def to_chrome_trace(spans: list[SpanRecord]) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    pids: dict[tuple[Any, str], int] = {}
    tracks: dict[tuple[int, str], int] = {}
    traces: dict[str, list[SpanRecord]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)

    def pid_of(span: SpanRecord) -> int:
        key = (span.resource.get(PROCESS_PID), str(span.resource.get(SERVICE_NAME, "servetrace")))
        if key not in pids:
            pids[key] = len(pids) + 1
            pid = pids[key]
            label = f"{key[1]} (pid {key[0]})" if key[0] is not None else key[1]
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}})
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": ENGINE_TRACK, "args": {"name": "engine"}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": ENGINE_TRACK, "args": {"sort_index": 0}})
        return pids[key]

    placement: dict[str, tuple[int, int]] = {}
    for trace_spans in traces.values():
        request_id = _request_of_trace(trace_spans)
        for span in trace_spans:
            pid = pid_of(span)
            tid = ENGINE_TRACK
            if request_id is not None:
                key = (pid, request_id)
                if key not in tracks:
                    tracks[key] = len([k for k in tracks if k[0] == pid]) + 2
                    events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tracks[key], "args": {"name": f"request {request_id}"}})
                    events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tracks[key], "args": {"sort_index": tracks[key]}})
                tid = tracks[key]
            placement[span.span_id] = (pid, tid)

    slices = []
    for span in spans:
        pid, tid = placement[span.span_id]
        args = dict(span.attributes)
        args.update({"trace_id": span.trace_id, "span_id": span.span_id, "parent_span_id": span.parent_span_id})
        if span.status == "ERROR":
            args["status"] = f"ERROR {span.status_message}"
        slices.append({
            "name": span.name, "cat": span.name.split(".")[0], "ph": "X", "pid": pid, "tid": tid,
            "ts": span.start_ns / 1000, "dur": max(span.duration_ns, 0) / 1000, "args": args,
        })
    # Parents before children when they start together, so the slices nest.
    slices.sort(key=lambda e: (e["ts"], -e["dur"]))
    events.extend(slices)

    by_id = {s.span_id: s for s in spans}
    flow_id = 0
    for span in spans:
        for link in span.links:
            source = by_id.get(link.span_id)
            if source is None:
                continue
            flow_id += 1
            source_pid, source_tid = placement[source.span_id]
            pid, tid = placement[span.span_id]
            kind = str(link.attributes.get(LINK_KIND, "link"))
            events.append({"ph": "s", "id": flow_id, "name": kind, "cat": "link", "pid": source_pid, "tid": source_tid,
                           "ts": source.start_ns / 1000})
            events.append({"ph": "f", "bp": "e", "id": flow_id, "name": kind, "cat": "link", "pid": pid, "tid": tid,
                           "ts": span.start_ns / 1000})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
