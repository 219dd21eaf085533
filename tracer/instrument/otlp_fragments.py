"""The file exporter's OTLP/JSON, written from memoized JSON fragments: byte for byte what
msgspec.json.encode(otlp_json.spans_to_otlp_dict(spans)) writes (tests/test_otlp_fragments.py holds
the two equal), without one Python dict per attribute, value and link of every span.

Why (profiled on bench/trace_overhead.py's spans, bench/results/span_cost.md): building the
reference dict was most of the exporter thread's CPU, which shares the engine's two cores. Most of
a span's attribute entries repeat from span to span and step to step (the scheduler's limits, the
config a replay needs, queue lengths, a batch's ids while it lasts, the links to its requests): each
such entry is encoded once, by the reference path, and its bytes are reused while it repeats.

A memo entry is only ever handed to an equal value of the same exact type (1 == True == 1.0, and
0.0 == -0.0, so floats are never memoized; arrays only when all str or all int). Spans with what
servetrace never writes on the hot path (events, a trace state, a status message) take the
reference path whole.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util import BoundedList

from tracer.instrument.otlp_json import _KINDS, _attributes, _finished_attributes, _flags, _link, _span, _value, group_spans

_encode = msgspec.json.encode
_Raw = msgspec.Raw

_MEMO_SIZE = 16384  # attribute entries kept (a few hundred distinct ones per step in steady state)
_entries: dict[tuple, bytes] = {}
_LINKS_SIZE = 4096
_link_bytes: dict[tuple, bytes] = {}
_by_link: dict[int, tuple[Any, Any, bytes]] = {}  # id(link) -> (link, its frozen attributes, its bytes)
_names: dict[str, bytes] = {}  # span name -> its JSON string


def _entry(key: str, value: Any) -> bytes:
    """{"key": key, "value": <the value's AnyValue>} as JSON, memoized where exact (see module doc)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        memo = (key, kind, value)
    elif kind is tuple:
        kinds = set(map(type, value))
        if kinds != {str} and kinds != {int} and value:
            return _encode({"key": key, "value": _value(value)})
        memo = (key, tuple, value)
    else:
        return _encode({"key": key, "value": _value(value)})
    encoded = _entries.get(memo)
    if encoded is None:
        if len(_entries) >= _MEMO_SIZE:  # bounded: batches and counts change
            _entries.clear()
        encoded = _entries[memo] = _encode({"key": key, "value": _value(value)})
    return encoded


def _attributes_json(attributes: Any) -> bytes:
    items = getattr(attributes, "_dict", attributes)  # as otlp_json._attributes reads them
    return b"[" + b",".join([_entry(key, value) for key, value in items.items()]) + b"]"


def _links_json(links: Sequence[Any]) -> bytes:
    parts = []
    for link in links:
        # The links of a step's spans to its requests are the same Link objects step after step
        # (request_links), their attributes one frozen mapping each: looked up by the object first.
        same = _by_link.get(id(link))
        if same is not None and same[0] is link and same[1] is link.attributes:
            parts.append(same[2])
            continue
        context, attributes = link.context, link.attributes
        items = getattr(attributes, "_dict", attributes)
        if not items or not all(type(value) is str for value in items.values()):
            parts.append(_encode(_link(link)))
            continue
        key = (context.trace_id, context.span_id, context.is_remote, link.dropped_attributes, tuple(items.items()))
        encoded = _link_bytes.get(key)
        if encoded is None:
            if len(_link_bytes) >= _LINKS_SIZE:  # bounded: requests come and go
                _link_bytes.clear()
            encoded = _link_bytes[key] = _encode(_link(link))
        if getattr(attributes, "_immutable", False) is True:  # a frozen BoundedAttributes: cannot change
            if len(_by_link) >= _LINKS_SIZE:
                _by_link.clear()
            _by_link[id(link)] = (link, attributes, encoded)  # the link kept alive: its id is not reused meanwhile
        parts.append(encoded)
    return b"[" + b",".join(parts) + b"]"


# What span_json reads of a span through ReadableSpan's properties; a span type that overrides none of
# them (ReadableSpan itself, the SDK's _Span, lean_span.LeanSpan) is read from its fields directly.
_READ = ("name", "context", "kind", "parent", "start_time", "end_time", "status", "attributes", "events", "links",
         "dropped_attributes", "dropped_events", "dropped_links")
_SPAN_CONTEXT_GETTERS = (ReadableSpan.get_span_context, sdk_trace._Span.get_span_context)  # both: self._context
_direct_types: dict[type, bool] = {}


def _reads_fields(kind: type) -> bool:
    direct = _direct_types.get(kind)
    if direct is None:
        direct = _direct_types[kind] = issubclass(kind, ReadableSpan) and kind.get_span_context in _SPAN_CONTEXT_GETTERS \
            and all(getattr(kind, name) is getattr(ReadableSpan, name) for name in _READ)
    return direct


def span_json(span: ReadableSpan) -> bytes:
    """One span's JSON object, as msgspec writes otlp_json._span(span)."""
    if _reads_fields(type(span)):
        # The values the properties return, read off the fields (_reads_fields), its events and links
        # without the copies the properties make (a tuple of each BoundedList, copied under its lock):
        # an ended span's lists no longer change (the SDK refuses to add to them).
        attributes, events, links = span._attributes, span._events, span._links
        return _write(span, span._context, span._parent, span._name, span._kind, span._start_time, span._end_time,
                      attributes, attributes.dropped if isinstance(attributes, BoundedAttributes) else 0,
                      events, events.dropped if isinstance(events, BoundedList) else 0,
                      links._dq if isinstance(links, BoundedList) else links,
                      links.dropped if isinstance(links, BoundedList) else 0, span._status)
    return _write(span, span.get_span_context(), span.parent, span.name, span.kind, span.start_time, span.end_time,
                  _finished_attributes(span), span.dropped_attributes, span.events, span.dropped_events, span.links,
                  span.dropped_links, span.status)


def _write(span: ReadableSpan, context: Any, parent: Any, name: str, kind: Any, start: int | None, end: int | None,
           attributes: Any, dropped_attributes: int, events: Any, dropped_events: int, links: Any, dropped_links: int,
           status: Any) -> bytes:
    if context.trace_state or events or status.description:  # what servetrace never writes on the hot path
        return _encode(_span(span))
    parts = [b'{"traceId":"', format(context.trace_id, "032x").encode(), b'","spanId":"',
             format(context.span_id, "016x").encode(), b'"']
    if parent is not None:
        parts += (b',"parentSpanId":"', format(parent.span_id, "016x").encode(), b'"')
    if name:
        encoded_name = _names.get(name)
        if encoded_name is None:
            encoded_name = b',"name":' + _encode(name)
            if len(_names) < 4096:  # bounded: names come from the catalog, but any tracer may use this
                _names[name] = encoded_name
        parts.append(encoded_name)
    parts += (b',"kind":', str(_KINDS[kind]).encode())
    if start:
        parts += (b',"startTimeUnixNano":"', str(start).encode(), b'"')
    if end:
        parts += (b',"endTimeUnixNano":"', str(end).encode(), b'"')
    if attributes:
        parts += (b',"attributes":', _attributes_json(attributes))
    for key, count in ((b',"droppedAttributesCount":', dropped_attributes), (b',"droppedEventsCount":', dropped_events)):
        if count:
            parts += (key, str(count).encode())
    if links:
        parts += (b',"links":', _links_json(links))
    if dropped_links:
        parts += (b',"droppedLinksCount":', str(dropped_links).encode())
    code = status.status_code.value
    parts += (b',"status":{"code":' + str(code).encode() + b"}" if code else b',"status":{}',
              b',"flags":', str(_flags(parent)).encode(), b"}")
    return b"".join(parts)


def spans_to_otlp_json_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    """One ExportTraceServiceRequest as one line of OTLP/JSON (no newline), grouped by resource then
    scope as otlp_json.spans_to_otlp_dict groups them."""
    resource_spans = []
    for resource, scopes in group_spans(spans, span_json).items():
        scope_spans = []
        for scope, encoded in scopes.items():
            entry: dict[str, Any] = {"scope": {}}
            if scope is not None:
                if scope.name:
                    entry["scope"]["name"] = scope.name
                if scope.version:
                    entry["scope"]["version"] = scope.version
                scope_attributes = _attributes(scope.attributes)
                if scope_attributes:
                    entry["scope"]["attributes"] = scope_attributes
            entry["spans"] = _Raw(b"[" + b",".join(encoded) + b"]")
            if scope is not None and scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        entry = {"resource": {}, "scopeSpans": scope_spans}
        resource_attributes = _attributes(resource.attributes)
        if resource_attributes:
            entry["resource"]["attributes"] = resource_attributes
        if resource.schema_url:
            entry["schemaUrl"] = resource.schema_url
        resource_spans.append(entry)
    return _encode({"resourceSpans": resource_spans})
