"""The explorer's fast reading code: every speed trick it uses to read OTLP/JSON spans, one named
helper each, with what it buys.

The explorer opens a 100,000-span trace in under 2 s (bench/tui_bench.py) and a live window
rebuilds its model every second while spans arrive (bench/tui_listen_bench.py). What makes that
possible lives here, so that the span types (tracer.tui.records), the file and export reader
(tracer.tui.loader) and the model (tracer.tui.model, steps) say what they read, not how:
- typed decoding: msgspec decodes values into Structs in C, no Python code per field;
- raw-JSON scans: a span's attribute list stays JSON until read, and the questions asked most
  (is this key there at all? a step's batch of ids) are answered from its bytes (scan_array,
  quoted; records.LazyAttributes);
- bounded memos of small, repeated values (`remember`; thread-safe, which matters because a
  live window's builder thread and the UI thread read the same spans);
- C-level loops for the model's bulk grouping (group_by, append_each);
- set_on_first_read: cached_property without its lock.
The answers are the reference reader's (tracer.traces.trace_file): tests/test_tui_traces.py
compares them on every trace the tests have.
"""
from __future__ import annotations

import re
from collections import defaultdict, deque
from functools import lru_cache
from itertools import repeat
from typing import Any, Callable, Generic, Hashable, Iterable, Iterator, TypeVar, Union

import msgspec
from msgspec import Raw, Struct, field

from tracer.traces.trace_file import any_value, attributes_of

MISSING: Any = object()  # "only decoding can tell" / "no such key", where None is a value
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
V = TypeVar("V")

# -- typed decoding ---------------------------------------------------------------------------


class KvList(Struct):
    values: list["Value"] = []


class Array(Struct):
    values: list["Value"] = []


class Value(Struct):
    """An OTLP AnyValue, as msgspec decodes it (every field absent but one)."""

    stringValue: Union[str, None] = None
    intValue: Union[str, int, None] = None
    doubleValue: Union[float, None] = None
    boolValue: Union[bool, None] = None
    arrayValue: Union[Array, None] = None
    kvlistValue: Union[KvList, None] = None
    bytesValue: Union[str, None] = None


class KeyValue(Struct):
    key: str
    value: Value = field(default_factory=Value)


class RawKeyValue(Struct, gc=False):
    """An attribute with its value left as JSON (decoded when read). gc=False: these hold no
    containers, so the cyclic collector need not track the millions a trace makes."""

    key: str
    value: Raw = Raw(b"{}")


_value_decoder = msgspec.json.Decoder(Value)
_raw_list_decoder = msgspec.json.Decoder(list[RawKeyValue])


def typed_value(v: Value) -> Any:
    """A decoded AnyValue as the reference reader returns it."""
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
                else int(item.intValue) if item.intValue is not None else typed_value(item)
                for item in array.values]
    if v.doubleValue is not None:
        return float(v.doubleValue)
    if v.boolValue is not None:
        return v.boolValue
    if v.kvlistValue is not None:
        return typed_attributes(v.kvlistValue.values)
    return v.bytesValue


def typed_attributes(items: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: typed_value(kv.value) for kv in items}


def lenient(raw: bytes, decode: Callable[[Any], Any]) -> Any:
    """`decode` of the generic JSON, or an '<unreadable: ...>' value (never raises)."""
    try:
        return decode(msgspec.json.decode(raw))
    except (msgspec.DecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"<unreadable: {exc}>"


def decode_value(raw: bytes | Raw) -> Any:
    """One AnyValue's JSON: typed when it fits, else as the reference reader decodes it."""
    try:
        return typed_value(_value_decoder.decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return lenient(raw, lambda v: any_value(v) if isinstance(v, dict) else v)


def index_attributes(json: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """An attribute list split into (key -> its value's raw JSON, key -> decoded value). Values
    stay raw until read; a list the typed schema does not fit is decoded whole as the reference
    reader decodes it (the second dict then holds every value, the first only its keys)."""
    try:
        return {kv.key: kv.value for kv in _raw_list_decoder.decode(json)}, {}
    except (msgspec.ValidationError, msgspec.DecodeError):
        decoded = lenient(json, attributes_of)
        decoded = decoded if isinstance(decoded, dict) else {"<attributes>": decoded}
        return dict.fromkeys(decoded), decoded


# -- bounded caches ---------------------------------------------------------------------------
# Memo dicts bounded by `remember`: a full one is emptied, then refilled by what is read next.
# Not functools.lru_cache: its bookkeeping on every hit measured +80 ns per read (215 vs 136 ns
# a short value), and these are read hundreds of thousands of times per open; a hit here is one
# dict.get. Thread-safe as the live explorer needs (its builder and UI threads read the same
# spans): every step is one dict operation, atomic under the GIL, and a lost race only decodes a
# value once more (the memos hold what decoding the same bytes gives).


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store `value` in `memo` under `key`, emptying `memo` first when it holds `limit` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


# Small values repeat across spans ({"intValue":"0"}, a hop's status string, a finish reason):
# what one decoding costs (a Struct and a Python call) is paid once per distinct value. Request
# ids are small too and never repeat: hence the bound (a live window reads new ones forever).
SHORT_VALUE_BYTES = 48
SHORT_VALUES_CACHED = 8192
_short_values: dict[bytes, Any] = {}


def decode_value_cached(raw: bytes | Raw) -> Any:
    """decode_value, memoized for short values. A list or dict is not kept: every span gets its
    own (a caller may keep and change it)."""
    if len(raw) > SHORT_VALUE_BYTES:
        return decode_value(raw)
    key = bytes(raw)
    value = _short_values.get(key, MISSING)
    if value is MISSING:
        value = decode_value(raw)
        if not isinstance(value, (list, dict)):
            remember(_short_values, key, value, SHORT_VALUES_CACHED)
    return value


# Links carry few distinct attribute lists ({"servetrace.link": "request", the request's id}) on
# hundreds of thousands of spans: each decoded once (a 2,000-request trace has ~2,600). The dict
# is shared by every link with that list: read, never changed.
LINK_ATTRIBUTE_LISTS_CACHED = 16384
_link_attribute_lists: dict[bytes, dict[str, Any]] = {}


def link_attributes(json: bytes) -> dict[str, Any]:
    """A link's attribute list, decoded (shared between links with the same list: do not change it)."""
    decoded = _link_attribute_lists.get(json)
    if decoded is None:
        raw, decoded = index_attributes(json)
        decoded = decoded or {key: decode_value_cached(value) for key, value in raw.items()}
        remember(_link_attribute_lists, json, decoded, LINK_ATTRIBUTE_LISTS_CACHED)
    return decoded


@lru_cache(maxsize=1024)
def quoted(key: str) -> bytes:
    """The key as it appears in JSON: b'"key"' (made once per key, not once per lookup)."""
    return b'"' + key.encode() + b'"'


# -- raw-JSON scans ---------------------------------------------------------------------------


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


def scan_array(json: bytes, key: str) -> Any:
    """The value of `key` in an attribute list's JSON when it is an array of plain strings or
    of ints written the usual way (a step's batch: ids and token counts), read straight from
    the JSON by a pattern that only matches when the generic decoding would give the same
    list; None when the key is certainly absent; MISSING when only decoding can tell.

    What it buys: opening a trace reads every step's batch and nothing else of most step spans;
    a batch of 64 ids is 64 AnyValue objects, and one split of the matched bytes replaces them."""
    if b"\\" in json:  # escapes: a key or a value may be spelled otherwise
        return MISSING
    key_json = quoted(key)
    prefix = b'"key":' + key_json + b',"value":{"arrayValue":{"values":['
    start = json.find(prefix)
    if start < 0:
        return None if key_json not in json else MISSING
    # The key once only (a repeated key's last value wins in the generic decoding).
    if json.find(key_json, start + len(prefix)) >= 0:
        return MISSING
    items = _array_items(json, start + len(prefix))
    return MISSING if items is None else items


def keys_absent_from(data: bytes, keys: Iterable[str]) -> frozenset[str]:
    """The keys whose quoted name is nowhere in a whole file's bytes (one scan each): the model
    then skips looking for them span by span. A key may be spelled with \\u escapes: then
    nothing is said absent (one byte is found about 20x faster than two, and most files have no
    backslash at all)."""
    if b"\\" in data and b"\\u" in data:
        return frozenset()
    return frozenset(key for key in keys if quoted(key) not in data)


_HEX_DIGITS = b"0123456789abcdef"
_ID_LENGTHS = frozenset({16, 32})


def canonical_hex(ids: list[str], width: int | None = None) -> bool:
    """Whether every id is already what the reference reader makes of it: lower-case hex of 16
    or 32 digits. Checked over all ids of a line at once (one join, one translate) instead of id
    by id. `width`: the ids are known to be 16 to 32 characters long (records.Id), so when they
    total `width` each, each is exactly `width` long and their lengths need no look one by one."""
    if not ids:
        return True
    joined = "".join(ids)
    if (width is None or len(joined) != width * len(ids)) and not set(map(len, ids)) <= _ID_LENGTHS:
        return False
    return joined.isascii() and not joined.encode().translate(None, _HEX_DIGITS)


_int_list_decoder = msgspec.json.Decoder(list[int])


def ints_of(values: list) -> list[int]:
    """[int(v) for v in values], for times written as strings of digits (what OTLP/JSON does):
    decoded as one JSON array in C. Anything else (a number, a sign, an exponent, a comma, a
    digit JSON does not know) fails that decoding or its count and goes through int() itself."""
    try:
        numbers = _int_list_decoder.decode("[" + ",".join(values) + "]")
        if len(numbers) == len(values):
            return numbers
    except (TypeError, msgspec.DecodeError):
        pass
    return list(map(int, values))


def lines_of(data: bytes) -> Iterator[tuple[int, bytes, memoryview]]:
    """(number, last byte, line as a view) of each line: lines are megabytes long, and a view
    costs no copy. msgspec skips the whitespace around a JSON document itself."""
    view = memoryview(data)
    start, number = 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        number += 1
        yield number, data[end - 1:end], view[start:end]
        start = end


# -- the model's bulk loops -------------------------------------------------------------------


def _exhaust(iterator: Iterator[Any]) -> None:
    deque(iterator, maxlen=0)  # runs an iterator to its end in C, keeping nothing


def group_by(keys: Iterable[K], items: Iterable[T]) -> dict[K, list[T]]:
    """The items grouped by their keys (keys and items in step), each group in item order.
    What it buys: the appends run in C (map over list.append), no Python loop per item: 100,000
    spans grouped by trace in a few ms."""
    groups: defaultdict[K, list[T]] = defaultdict(list)
    _exhaust(map(list.append, map(groups.__getitem__, keys), items))
    return groups


def append_each(lists: Iterable[list[T]], item: T) -> None:
    """Append `item` to each list, in C (a step to the steps of every request in its batch)."""
    _exhaust(map(list.append, lists, repeat(item)))


# -- per-instance memo ------------------------------------------------------------------------


class set_on_first_read(Generic[V]):
    """functools.cached_property without its lock: Python 3.11's takes one on every first read
    (a fifth of the open's attribute cost, for 30,000 spans). The value goes in the instance
    dict, which answers every later read without calling this. Two threads reading it first at
    once both make it and one is kept: only for values made from the instance's own immutable
    data (equal either way)."""

    def __init__(self, make: Callable[[Any], V]) -> None:
        self.make = make

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.make(instance)
        return value
