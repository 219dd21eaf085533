"""The explorer's span record: decoded by msgspec straight from a span's JSON object.

It reads like tracer.traces.trace_file.SpanRecord (same attribute names, same values: `as_record`
turns one into the other), but building one costs no Python code per field: ids, name and
times are decoded in C, while attributes, events and link attributes stay raw JSON until
something reads them. A 100,000-span trace holds millions of attribute values; the explorer
reads a few keys of each span when it opens, and everything only for the focused hop. How each
part is read fast is tracer.tui.reader's (one named helper per trick).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Iterator, Mapping, Union

from msgspec import Meta, Raw, Struct, field

from tracer.traces.trace_file import Event, Link, SpanReadings, SpanRecord, kind_name, status_name
from tracer.tui.reader import (
    MISSING, KeyValue, decode_value_cached, index_attributes, link_attributes, quoted, scan_array, set_on_first_read,
    typed_attributes,
)

EMPTY_LIST = Raw(b"[]")
# Trace and span ids as the typed schema takes them: 16 to 32 characters (canonical ids are 16
# or 32 hex digits; the loader checks the digits, and the lengths in bulk within these bounds).
# Any other id sends its line to the reference reader's decoding.
ID_MIN, ID_MAX = 16, 32
Id = Annotated[str, Meta(min_length=ID_MIN, max_length=ID_MAX)]


class LazyAttributes(Mapping[str, Any]):
    """A span's attributes: the list is split into keys on first read, each value decoded on
    its first read. A list the typed schema does not fit is decoded as the reference reader does.

    Most lookups are for keys a span lacks (the model asks every request span for its output
    tokens, every step span for its batch): a key whose quoted name is nowhere in the span's
    JSON is absent, found without decoding anything. JSON may spell a key with \\u escapes, so
    a span whose JSON has any escape is always decoded to answer."""

    __slots__ = ("_json", "_raw", "_decoded", "_escaped")

    def __init__(self, json: Raw) -> None:
        self._json = bytes(json)
        self._raw: dict[str, Any] | None = None
        self._decoded: dict[str, Any] = {}
        self._escaped: bool | None = None

    def _absent(self, key: str) -> bool:
        """True when `key` is certainly not there (without decoding the list)."""
        if quoted(key) in self._json:
            return False
        if self._escaped is None:
            self._escaped = b"\\u" in self._json
        return not self._escaped

    def _index(self) -> dict[str, Any]:
        raw, decoded = index_attributes(self._json)
        if decoded:  # a list the typed schema does not fit: decoded whole (index_attributes)
            self._decoded = decoded
        self._raw = raw
        return raw

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, MISSING)
        if value is MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        decoded = self._decoded
        if key in decoded:
            return decoded[key]
        index = self._raw
        if index is None:
            if self._absent(key):
                return default
            index = self._index()
        raw = index.get(key, MISSING)
        if raw is MISSING:
            return default
        if key in self._decoded:  # filled by a lenient _index
            return self._decoded[key]
        value = decoded[key] = decode_value_cached(raw)
        return value

    def get_array(self, key: str) -> Any:
        """`get(key)`, faster for an array of plain strings or of ints written the usual way
        (a step's batch: ids and token counts): see tracer.tui.reader.scan_array."""
        if key not in self._decoded and self._raw is None:
            items = scan_array(self._json, key)
            if items is not MISSING:
                if items is not None:
                    self._decoded[key] = items
                return items
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        if self._raw is None:
            if not isinstance(key, str) or self._absent(key):
                return False
            self._index()
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw if self._raw is not None else self._index())

    def __len__(self) -> int:
        return len(self._raw if self._raw is not None else self._index())

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class RawEvent(Struct):
    name: str = ""
    timeUnixNano: Union[str, int] = 0
    attributes: list[KeyValue] = []


class SpanLink(Struct, gc=False):
    trace_id: Id = field(name="traceId")
    span_id: Id = field(name="spanId")
    attributes_json: Raw = field(name="attributes", default=EMPTY_LIST)
    decoded_attributes: Union[dict, None] = None

    @property
    def attributes(self) -> dict[str, Any]:
        decoded = self.decoded_attributes
        if decoded is None:
            decoded = self.decoded_attributes = link_attributes(bytes(self.attributes_json))  # shared: read only
        return decoded


class SpanStatus(Struct, gc=False):
    code: Union[int, str] = 0
    message: str = ""


@lru_cache(maxsize=64)
def _status_name(code: int | str) -> str:
    return status_name(code)  # a few distinct codes on every span: named once each


@lru_cache(maxsize=64)
def _kind_name(value: int | str) -> str:
    return kind_name(value)


class Span(Struct, SpanReadings, kw_only=True, dict=True):
    """One span, with SpanRecord's attribute names. The loader sets `resource` and `scope`,
    turns the times into ints and an empty parent into None. `attributes` is made from the raw
    JSON on first read (opening a trace reads a fifth of the spans' attributes); the instance
    dict (dict=True) holds it.

    Links and events are tuples: most spans have none, and the empty tuple is one shared
    constant where an empty list was two new objects per span for the cyclic garbage collector
    to scan. A live window's full collections (which the UI thread waits for) scanned 45,000
    objects for a 12,000-span window, 27,000 with tuples (a third less time per collection)."""

    trace_id: Id = field(name="traceId")
    span_id: Id = field(name="spanId")
    parent_span_id: Union[str, None] = field(name="parentSpanId", default=None)
    name: str
    kind_code: Union[int, str] = field(name="kind", default=0)
    start_ns: Union[str, int] = field(name="startTimeUnixNano", default=0)
    end_ns: Union[str, int] = field(name="endTimeUnixNano", default=0)
    attributes_json: Raw = field(name="attributes", default=EMPTY_LIST)
    raw_events: tuple[RawEvent, ...] = field(name="events", default=())
    links: tuple[SpanLink, ...] = ()
    raw_status: Union[SpanStatus, None] = field(name="status", default=None)
    resource: Union[dict, None] = None
    scope: str = ""

    attributes = set_on_first_read(lambda span: LazyAttributes(span.attributes_json))

    def array(self, key: str) -> Any:
        """attributes.get_array(key), read from the JSON without wrapping the attributes when
        nothing has read them yet (opening a trace reads every step's batch ids, and nothing
        else of most step spans)."""
        attributes = self.__dict__.get("attributes")
        if attributes is None:
            items = scan_array(bytes(self.attributes_json), key)
            if items is not MISSING:
                return items
            attributes = self.attributes
        return attributes.get_array(key)

    @property
    def kind(self) -> str:
        return _kind_name(self.kind_code)

    @property
    def status(self) -> str:
        status = self.raw_status
        return "UNSET" if status is None else _status_name(status.code)

    @property
    def status_message(self) -> str:
        status = self.raw_status
        return "" if status is None else status.message

    @property
    def events(self) -> list[Event]:
        return [Event(e.name, int(e.timeUnixNano), typed_attributes(e.attributes)) for e in self.raw_events]


def as_record(span: Span | SpanRecord) -> SpanRecord:
    """The same span as the reference reader's SpanRecord (every attribute decoded)."""
    if isinstance(span, SpanRecord):
        return span
    return SpanRecord(
        trace_id=span.trace_id, span_id=span.span_id, parent_span_id=span.parent_span_id, name=span.name,
        kind=span.kind, start_ns=span.start_ns, end_ns=span.end_ns, attributes=dict(span.attributes.items()),
        events=span.events, links=[Link(k.trace_id, k.span_id, k.attributes) for k in span.links],
        status=span.status, status_message=span.status_message, resource=span.resource or {}, scope=span.scope,
    )


def read_array(span: Span | SpanRecord, key: str) -> Any:
    """span.attributes.get(key) for an array (a step's batch): the explorer's spans read it
    straight from the JSON (Span.array); a reference SpanRecord has it decoded already."""
    return span.array(key) if isinstance(span, Span) else span.attributes.get(key)
