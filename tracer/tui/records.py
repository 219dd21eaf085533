"""The explorer's span record: decoded by msgspec straight from a span's JSON object.

It reads like tracer.traces.trace_file.SpanRecord (same attribute names, same values: `as_record`
turns one into the other), but building one costs no Python code per field: ids, name and
times are decoded in C, while attributes, events and link attributes stay raw JSON until
something reads them. A 100,000-span trace holds millions of attribute values; the explorer
reads a few keys of each span when it opens, and everything only for the focused hop.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Callable, Iterator, Mapping, Union

import msgspec
from msgspec import Meta, Raw, Struct, field

from tracer.traces.trace_file import STATUS_CODES, Event, Link, SpanReadings, SpanRecord, _any_value, _attributes, _kind

EMPTY_LIST = Raw(b"[]")
# Trace and span ids as the typed schema takes them: 16 to 32 characters (canonical ids are 16
# or 32 hex digits; the loader checks the digits, and the lengths in bulk within these bounds).
# Any other id sends its line to the reference reader's decoding.
ID_MIN, ID_MAX = 16, 32
Id = Annotated[str, Meta(min_length=ID_MIN, max_length=ID_MAX)]
_MISSING = object()


class _KvList(Struct):
    values: list["_Value"] = []


class _Array(Struct):
    values: list["_Value"] = []


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


class _RawKeyValue(Struct, gc=False):
    key: str
    value: Raw = Raw(b"{}")


_value_decoder = msgspec.json.Decoder(_Value)
_raw_list_decoder = msgspec.json.Decoder(list[_RawKeyValue])


def value_of(v: _Value) -> Any:
    """An OTLP AnyValue as the reference reader returns it."""
    text = v.stringValue
    if text is not None:
        return text
    number = v.intValue
    if number is not None:
        return int(number)
    array = v.arrayValue
    if array is not None:
        # Items are almost always ids or counts (a step's batch): those inline, others recurse.
        return [item.stringValue if item.stringValue is not None
                else int(item.intValue) if item.intValue is not None else value_of(item)
                for item in array.values]
    if v.doubleValue is not None:
        return float(v.doubleValue)
    if v.boolValue is not None:
        return v.boolValue
    if v.kvlistValue is not None:
        return attributes_of(v.kvlistValue.values)
    return v.bytesValue


def attributes_of(items: list[_KeyValue]) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in items}


def _lenient(raw: bytes, decode) -> Any:
    try:
        return decode(msgspec.json.decode(raw))
    except (msgspec.DecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"<unreadable: {exc}>"


def _decode_value(raw: Raw) -> Any:
    try:
        return value_of(_value_decoder.decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        # Not our typed shape: decode it as the reference reader does.
        return _lenient(raw, lambda v: _any_value(v) if isinstance(v, dict) else v)


# Small values repeat across spans ({"intValue":"0"}, a hop's status string): decoded once.
_SHORT_VALUE = 48
_short_values: dict[bytes, Any] = {}


def _cached_value(raw: Raw) -> Any:
    if len(raw) > _SHORT_VALUE:
        return _decode_value(raw)
    key = bytes(raw)
    value = _short_values.get(key, _MISSING)
    if value is _MISSING:
        value = _decode_value(raw)
        if isinstance(value, (list, dict)):  # mutable: every span gets its own
            return value
        _short_values[key] = value
    return value


@lru_cache(maxsize=1024)
def _quoted(key: str) -> bytes:
    return b'"' + key.encode() + b'"'


_STRINGS = re.compile(rb'\]\}\}\}|\{"stringValue":"[^"\\]*"\}(?:,\{"stringValue":"[^"\\]*"\})*\]\}\}\}')
_INTS = re.compile(rb'\{"intValue":"?-?\d+"?\}(?:,\{"intValue":"?-?\d+"?\})*\]\}\}\}')
# Pieces of a matched string array (the pattern has checked its shape: no quote in an item).
_FIRST_STRING, _LAST_STRING, _BETWEEN_STRINGS = b'{"stringValue":"', b'"}]}}}', '"},{"stringValue":"'
_INT_ITEM = re.compile(rb'"intValue":"?(-?\d+)')


def _array_items(json: bytes, at: int) -> list | None:
    """The items of the array whose first item starts at `at`, when they are all plain strings
    (no escapes) or all ints; None for anything else (the caller decodes it generically). The
    JSON is known to be valid: msgspec read the line."""
    strings = _STRINGS.match(json, at)
    if strings is not None:
        inner = json[at + len(_FIRST_STRING):strings.end() - len(_LAST_STRING)]
        return inner.decode().split(_BETWEEN_STRINGS) if strings.end() - at > 4 else []
    ints = _INTS.match(json, at)
    if ints is not None:
        return list(map(int, _INT_ITEM.findall(json, at, ints.end())))
    return None


def array_in(json: bytes, key: str) -> Any:
    """The value of `key` in an attribute list's JSON when it is an array of plain strings or
    of ints written the usual way (a step's batch: ids and token counts), read straight from
    the JSON by a pattern that only matches when the generic decoding would give the same
    list; None when the key is certainly absent; _MISSING when only decoding can tell."""
    if b"\\" in json:  # escapes: a key or a value may be spelled otherwise
        return _MISSING
    quoted = _quoted(key)
    prefix = b'"key":' + quoted + b',"value":{"arrayValue":{"values":['
    start = json.find(prefix)
    if start < 0:
        return None if quoted not in json else _MISSING
    # The key once only (a repeated key's last value wins in the generic decoding).
    if json.find(quoted, start + len(prefix)) >= 0:
        return _MISSING
    items = _array_items(json, start + len(prefix))
    return _MISSING if items is None else items


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
        if _quoted(key) in self._json:
            return False
        if self._escaped is None:
            self._escaped = b"\\u" in self._json
        return not self._escaped

    def _index(self) -> dict[str, Any]:
        try:
            self._raw = {kv.key: kv.value for kv in _raw_list_decoder.decode(self._json)}
        except (msgspec.ValidationError, msgspec.DecodeError):
            decoded = _lenient(self._json, _attributes)
            self._decoded = decoded if isinstance(decoded, dict) else {"<attributes>": decoded}
            self._raw = dict.fromkeys(self._decoded)
        return self._raw

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
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
        raw = index.get(key, _MISSING)
        if raw is _MISSING:
            return default
        if key in self._decoded:  # filled by a lenient _index
            return self._decoded[key]
        value = decoded[key] = _cached_value(raw)
        return value

    def get_array(self, key: str) -> Any:
        """`get(key)`, faster for an array of plain strings or of ints written the usual way
        (a step's batch: ids and token counts): see array_in."""
        if key not in self._decoded and self._raw is None:
            items = array_in(self._json, key)
            if items is not _MISSING:
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


class _Event(Struct):
    name: str = ""
    timeUnixNano: Union[str, int] = 0
    attributes: list[_KeyValue] = []


class SpanLink(Struct, gc=False):
    trace_id: Id = field(name="traceId")
    span_id: Id = field(name="spanId")
    attributes_json: Raw = field(name="attributes", default=EMPTY_LIST)
    decoded_attributes: Union[dict, None] = None

    @property
    def attributes(self) -> dict[str, Any]:
        decoded = self.decoded_attributes
        if decoded is None:
            # Links repeat a few attribute lists ({"servetrace.link": "step"}): decoded once each.
            text = bytes(self.attributes_json)
            decoded = _link_attributes.get(text)
            if decoded is None:
                decoded = _link_attributes[text] = dict(LazyAttributes(self.attributes_json).items())
            self.decoded_attributes = decoded
        return decoded


_link_attributes: dict[bytes, dict[str, Any]] = {}


class SpanStatus(Struct, gc=False):
    code: Union[int, str] = 0
    message: str = ""


@lru_cache(maxsize=64)
def _status_name(code: int | str) -> str:
    return code.removeprefix("STATUS_CODE_") if isinstance(code, str) else STATUS_CODES.get(int(code), str(code))


@lru_cache(maxsize=64)
def _kind_name(value: int | str) -> str:
    return _kind(value)


class _SetOnFirstRead:
    """functools.cached_property without its lock (Python 3.11 takes one on every first read:
    a fifth of the open's attribute cost, for 30,000 spans): the value goes in the instance
    dict, which answers every later read without calling this."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self.make = make

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.make(instance)
        return value


class Span(Struct, SpanReadings, kw_only=True, dict=True):
    """One span, with SpanRecord's attribute names. The loader sets `resource` and `scope`,
    turns the times into ints and an empty parent into None. `attributes` is made from the raw
    JSON on first read (opening a trace reads a fifth of the spans' attributes); the instance
    dict (dict=True) holds it."""

    trace_id: Id = field(name="traceId")
    span_id: Id = field(name="spanId")
    parent_span_id: Union[str, None] = field(name="parentSpanId", default=None)
    name: str
    kind_code: Union[int, str] = field(name="kind", default=0)
    start_ns: Union[str, int] = field(name="startTimeUnixNano", default=0)
    end_ns: Union[str, int] = field(name="endTimeUnixNano", default=0)
    attributes_json: Raw = field(name="attributes", default=EMPTY_LIST)
    raw_events: list[_Event] = field(name="events", default_factory=list)
    links: list[SpanLink] = field(default_factory=list)
    raw_status: Union[SpanStatus, None] = field(name="status", default=None)
    resource: Union[dict, None] = None
    scope: str = ""

    attributes = _SetOnFirstRead(lambda span: LazyAttributes(span.attributes_json))

    def array(self, key: str) -> Any:
        """attributes.get_array(key), read from the JSON without wrapping the attributes when
        nothing has read them yet (opening a trace reads every step's batch ids, and nothing
        else of most step spans)."""
        attributes = self.__dict__.get("attributes")
        if attributes is None:
            items = array_in(bytes(self.attributes_json), key)
            if items is not _MISSING:
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
        return [Event(e.name, int(e.timeUnixNano), attributes_of(e.attributes)) for e in self.raw_events]


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
