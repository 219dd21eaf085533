"""OTLP/JSON for the file exporter: ReadableSpan -> the dict protobuf's JSON mapping would give
(spans_to_otlp_dict, the readable reference), and the same request written from memoized JSON
fragments (tracer.instrument.otlp_fragments, what the exporter writes).

Format: one ExportTraceServiceRequest, OTLP/JSON encoding: lowerCamelCase keys, trace and span ids
as hex strings, enums as integers, 64-bit integers as decimal strings.
"""
from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Sequence as SequenceABC
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

# -- the direct encoder: ReadableSpan -> the dict protobuf's JSON mapping would give ------------

_KINDS = {kind: index + 1 for index, kind in enumerate(SpanKind)}  # INTERNAL=1 ... CONSUMER=5
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


def _value(value: Any) -> dict[str, Any]:
    # Most frequent types first: this runs for every attribute and array element of every span.
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, tuple):
        return _array(value)
    if isinstance(value, list):
        values = [_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, float):
        return {"doubleValue": value}
    if value is None:
        return {}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        values = [{"key": str(k), "value": _value(v)} for k, v in value.items()]
        return {"kvlistValue": {"values": values} if values else {}}
    if isinstance(value, SequenceABC):
        values = [_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    raise TypeError(f"cannot encode attribute value of type {type(value).__name__}")


# A step's batch (its request ids, their token counts) is written on the step's span, its schedule
# and its detokenize, and stays the same from step to step while the batch does: an array of
# strings or of ints (the SDK keeps sequences as tuples) is encoded once while it repeats (the
# encoded dict is only read, by msgspec). Only all-str or all-int arrays: 1 == True == 1.0.
_ARRAYS_CACHED = 1024
_encoded_arrays: dict[tuple, dict[str, Any]] = {}


def _array(value: tuple) -> dict[str, Any]:
    if not value:
        return {"arrayValue": {}}
    kinds = set(map(type, value))
    if kinds != {str} and kinds != {int}:
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    encoded = _encoded_arrays.get(value)
    if encoded is None:
        if len(_encoded_arrays) >= _ARRAYS_CACHED:  # bounded: batches change
            _encoded_arrays.clear()
        encoded = _encoded_arrays[value] = {"arrayValue": {"values": [_value(v) for v in value]}}
    return encoded


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not attributes:
        return []
    # The SDK's BoundedAttributes copies itself under a lock on every iteration (a third of the
    # encoder's time); a finished span's attributes no longer change, so read its dict directly.
    items = getattr(attributes, "_dict", attributes)
    return [{"key": key, "value": _value(value)} for key, value in items.items()]


def _flags(context: Any) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if context is not None and context.is_remote else 0)


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value:  # protobuf's JSON mapping leaves out fields at their default
        target[key] = value


def _encode_link(link: Any) -> dict[str, Any]:
    encoded = {"traceId": format(link.context.trace_id, "032x"), "spanId": format(link.context.span_id, "016x")}
    _put(encoded, "attributes", _attributes(link.attributes))
    _put(encoded, "droppedAttributesCount", link.dropped_attributes)
    encoded["flags"] = _flags(link.context)
    return encoded


# A step's spans link to every request in its batch, and a request is in the batch of every step
# it runs in: the same link (same target, same attributes: {servetrace.link: request, its id})
# is encoded three times a step for each request, ~8 links per span, most of the encoder's time.
# Encoded once and reused while it repeats (the encoded dict is only read, by msgspec). Only for
# links whose attribute values are all strings: 1 == True, so a key of other values could hand
# an int's encoding to a bool.
_LINKS_CACHED = 4096
_encoded_links: dict[tuple, dict[str, Any]] = {}


def _link(link: Any) -> dict[str, Any]:
    context, attributes = link.context, link.attributes
    items = getattr(attributes, "_dict", attributes)  # see _attributes
    if not items or not all(type(value) is str for value in items.values()):
        return _encode_link(link)
    key = (context.trace_id, context.span_id, context.is_remote, link.dropped_attributes, tuple(items.items()))
    encoded = _encoded_links.get(key)
    if encoded is None:
        if len(_encoded_links) >= _LINKS_CACHED:  # bounded: requests come and go
            _encoded_links.clear()
        encoded = _encoded_links[key] = _encode_link(link)
    return encoded


def _finished_attributes(span: ReadableSpan) -> Any:
    """A finished span's attributes as the SDK holds them (a BoundedAttributes, whose dict
    _attributes reads directly). ReadableSpan.attributes wraps them in a MappingProxyType, which
    _attributes cannot see through: reading through it took the BoundedAttributes' lock and copied
    its keys, then looked each one up (a fifth of the encoder's time)."""
    raw = getattr(span, "_attributes", None)
    return raw if raw is not None and type(span).attributes is ReadableSpan.attributes else span.attributes


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    out: dict[str, Any] = {"traceId": format(context.trace_id, "032x"), "spanId": format(context.span_id, "016x")}
    if context.trace_state is not None:
        _put(out, "traceState", ",".join(f"{k}={v}" for k, v in context.trace_state.items()))
    if span.parent is not None:
        out["parentSpanId"] = format(span.parent.span_id, "016x")
    _put(out, "name", span.name)
    _put(out, "kind", _KINDS[span.kind])
    _put(out, "startTimeUnixNano", str(span.start_time) if span.start_time else "")
    _put(out, "endTimeUnixNano", str(span.end_time) if span.end_time else "")
    _put(out, "attributes", _attributes(_finished_attributes(span)))
    _put(out, "droppedAttributesCount", span.dropped_attributes)
    events = []
    for event in span.events:
        encoded: dict[str, Any] = {}
        _put(encoded, "timeUnixNano", str(event.timestamp) if event.timestamp else "")
        _put(encoded, "name", event.name)
        _put(encoded, "attributes", _attributes(event.attributes))
        _put(encoded, "droppedAttributesCount", event.dropped_attributes)
        events.append(encoded)
    _put(out, "events", events)
    _put(out, "droppedEventsCount", span.dropped_events)
    _put(out, "links", [_link(link) for link in span.links])
    _put(out, "droppedLinksCount", span.dropped_links)
    status: dict[str, Any] = {}
    _put(status, "message", span.status.description)
    _put(status, "code", span.status.status_code.value)
    out["status"] = status
    out["flags"] = _flags(span.parent)
    return out


def group_spans(spans: Sequence[ReadableSpan], encode: Callable[[ReadableSpan], Any]) -> dict[Any, dict[Any, list]]:
    """resource -> instrumentation scope -> the encoded spans, in the order they came."""
    # Resource.__hash__ JSON-encodes its attributes (opentelemetry/sdk/resources/__init__.py:263):
    # called per span it was a tenth of the encoder's time. Grouped by value as before, but the
    # group of each resource object is looked up by its id (a provider gives all its spans one).
    grouped: dict[Any, dict[Any, list]] = {}
    group_of: dict[int, dict[Any, list]] = {}  # id(resource) -> its group; the spans keep them alive
    for span in spans:
        scopes = group_of.get(id(span.resource))
        if scopes is None:
            scopes = group_of[id(span.resource)] = grouped.setdefault(span.resource, {})
        scopes.setdefault(span.instrumentation_scope, []).append(encode(span))
    return grouped


def spans_to_otlp_dict(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One ExportTraceServiceRequest in OTLP/JSON form, grouped by resource then scope."""
    resource_spans = []
    for resource, scopes in group_spans(spans, _span).items():
        scope_spans = []
        for scope, encoded in scopes.items():
            entry: dict[str, Any] = {"scope": {}}
            if scope is not None:
                _put(entry["scope"], "name", scope.name)
                _put(entry["scope"], "version", scope.version)
                _put(entry["scope"], "attributes", _attributes(scope.attributes))
            entry["spans"] = encoded
            _put(entry, "schemaUrl", scope.schema_url if scope is not None else "")
            scope_spans.append(entry)
        entry = {"resource": {}, "scopeSpans": scope_spans}
        _put(entry["resource"], "attributes", _attributes(resource.attributes))
        _put(entry, "schemaUrl", resource.schema_url)
        resource_spans.append(entry)
    return {"resourceSpans": resource_spans}
