"""Read a trace file for the explorer: tracer.trace_file's records, decoded about 4x faster.

A servetrace step span carries its batch as arrays of OTLP AnyValues (one JSON object per
request id), so a 100,000-span file holds millions of tiny objects. msgspec decodes them into
typed structs without building a dict for each; any line the typed schema does not fit (an id
in base64, an unexpected shape) goes through tracer.trace_file.parse_request, so both readers
accept exactly the same files. Attribute values stay raw JSON until read (LazyAttributes).
Unreadable lines are skipped and listed, never raised.
"""
from __future__ import annotations

import gc
from functools import lru_cache
from operator import attrgetter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import msgspec
from msgspec import Struct, field

from tracer.trace_file import (
    Event, Link, SkippedLine, SpanRecord, TraceFile, TraceFileError, _any_value, _id, _kind, _status, parse_request,
)


class _Array(Struct):
    values: list["_Value"] = []


class _KvList(Struct):
    values: list["_KeyValue"] = []


class _Value(Struct):
    stringValue: Union[str, None] = None
    intValue: Union[str, int, None] = None
    doubleValue: Union[float, None] = None
    boolValue: Union[bool, None] = None
    arrayValue: Union[_Array, None] = None
    kvlistValue: Union[_KvList, None] = None
    bytesValue: Union[str, None] = None


class _KeyValue(Struct):
    key: str
    value: _Value = field(default_factory=_Value)


class _RawKeyValue(Struct):
    key: str
    value: msgspec.Raw = msgspec.Raw(b"{}")


class _Event(Struct):
    name: str = ""
    timeUnixNano: Union[str, int] = 0
    attributes: list[_KeyValue] = []


class _Link(Struct):
    traceId: str
    spanId: str
    attributes: list[_KeyValue] = []


class _Status(Struct):
    code: Union[int, str] = 0
    message: str = ""


class _Span(Struct):
    traceId: str
    spanId: str
    name: str
    parentSpanId: str = ""
    kind: Union[int, str] = 0
    startTimeUnixNano: Union[str, int] = 0
    endTimeUnixNano: Union[str, int] = 0
    attributes: list[_RawKeyValue] = []
    events: list[_Event] = []
    links: list[_Link] = []
    status: Union[_Status, None] = None


class _Scope(Struct):
    name: str = ""


class _ScopeSpans(Struct):
    scope: _Scope = field(default_factory=_Scope)
    spans: list[_Span] = []


class _Resource(Struct):
    attributes: list[_KeyValue] = []


class _ResourceSpans(Struct):
    resource: _Resource = field(default_factory=_Resource)
    scopeSpans: list[_ScopeSpans] = []


class _Request(Struct):
    resourceSpans: list[_ResourceSpans]


_decoder = msgspec.json.Decoder(_Request)
_value_decoder = msgspec.json.Decoder(_Value)


def _lenient_value(raw: msgspec.Raw) -> Any:
    try:
        decoded = msgspec.json.decode(raw)
        return _any_value(decoded) if isinstance(decoded, dict) else decoded
    except (msgspec.DecodeError, ValueError, KeyError, TypeError) as exc:
        return f"<unreadable value: {exc}>"


_MISSING = object()


class LazyAttributes(Mapping[str, Any]):
    """A span's attributes, each value decoded from its JSON on first read.

    A large trace holds about ten attribute values per span, and the model reads only a few
    keys of each span; the rest are decoded when a span is shown."""

    __slots__ = ("_raw", "_decoded")

    def __init__(self, raw: dict[str, msgspec.Raw]) -> None:
        self._raw = raw
        self._decoded: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        # The model asks every span for keys most spans lack: no exception on that path.
        decoded = self._decoded
        if key in decoded:
            return decoded[key]
        raw = self._raw.get(key)
        if raw is None:
            return default
        try:
            value = _value(_value_decoder.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
            # Not our typed shape: decode it as the reference reader does.
            value = _lenient_value(raw)
        decoded[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


def _value(v: _Value) -> Any:
    text = v.stringValue
    if text is not None:
        return text
    number = v.intValue
    if number is not None:
        return int(number)
    array = v.arrayValue
    if array is not None:
        return [_scalar(item) for item in array.values]
    if v.doubleValue is not None:
        return float(v.doubleValue)
    if v.boolValue is not None:
        return v.boolValue
    if v.kvlistValue is not None:
        return _attributes(v.kvlistValue.values)
    return v.bytesValue


def _scalar(v: _Value) -> Any:
    # Array items are almost always ids or counts: test those first, recurse otherwise.
    text = v.stringValue
    if text is not None:
        return text
    number = v.intValue
    if number is not None:
        return int(number)
    return _value(v)


def _attributes(items: list[_KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def _hex(value: str) -> str:
    # servetrace writes lower-case hex; anything else takes trace_file's full check.
    return value if len(value) in (16, 32) and value.islower() and value.isalnum() else _id(value)


@lru_cache(maxsize=64)
def _span_kind(value: int | str) -> str:
    return _kind(value)


def _records(message: _Request) -> list[SpanRecord]:
    out = []
    unset_status = _status(None)
    for resource_spans in message.resourceSpans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scopeSpans:
            scope = scope_spans.scope.name
            for raw in scope_spans.spans:
                status = raw.status
                if status is None:
                    status_name, status_message = unset_status
                else:
                    status_name, status_message = _status({"code": status.code, "message": status.message})
                out.append(SpanRecord(
                    trace_id=_hex(raw.traceId),
                    span_id=_hex(raw.spanId),
                    parent_span_id=_hex(raw.parentSpanId) if raw.parentSpanId else None,
                    name=raw.name,
                    kind=_span_kind(raw.kind),
                    start_ns=int(raw.startTimeUnixNano),
                    end_ns=int(raw.endTimeUnixNano),
                    attributes=LazyAttributes({kv.key: kv.value for kv in raw.attributes}),
                    events=[Event(e.name, int(e.timeUnixNano), _attributes(e.attributes)) for e in raw.events],
                    links=[Link(_hex(k.traceId), _hex(k.spanId), _attributes(k.attributes)) for k in raw.links],
                    status=status_name,
                    status_message=status_message,
                    resource=resource,
                    scope=scope,
                ))
    return out


def _parse_line(line: bytes) -> list[SpanRecord]:
    try:
        return _records(_decoder.decode(line))
    except (msgspec.ValidationError, ValueError):
        # Not our typed shape: let the reference reader decide (it raises on real garbage).
        message = msgspec.json.decode(line)
        if not isinstance(message, dict) or "resourceSpans" not in message:
            raise ValueError("not an ExportTraceServiceRequest (no resourceSpans)") from None
        return parse_request(message)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC while millions of small acyclic objects are created: each
    collection would rescan all of them (it more than doubles the load time of a large trace)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_trace(path: str | Path) -> TraceFile:
    """All readable spans of an OTLP/JSON-lines file, sorted by start; bad lines listed in `skipped`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trace file at {path}")
    if path.is_dir():
        raise TraceFileError(f"{path} is a directory, not a trace file")
    spans: list[SpanRecord] = []
    skipped: list[SkippedLine] = []
    with gc_paused(), path.open("rb") as handle:
        for number, raw_line in enumerate(handle, 1):
            line = raw_line.strip()
            if not line:
                continue
            try:
                spans.extend(_parse_line(line))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, msgspec.DecodeError) as exc:
                truncated = not raw_line.endswith(b"\n")
                reason = "truncated last line" if truncated else f"{type(exc).__name__}: {exc}"
                skipped.append(SkippedLine(number, reason))
    # By start, longest first on ties: two stable sorts, cheaper than a tuple key per span.
    spans.sort(key=attrgetter("end_ns"), reverse=True)
    spans.sort(key=attrgetter("start_ns"))
    return TraceFile(spans, skipped, str(path))
