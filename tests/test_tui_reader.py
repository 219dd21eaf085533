"""The explorer's fast reading code (tracer.tui.reader): its memos stay bounded however many
distinct values a live window reads, and bounded they still answer what decoding answers, from
two threads at once (a live window's builder and UI threads read the same spans)."""
from __future__ import annotations

import threading

import msgspec
from hypothesis import given, settings, strategies as st

from tracer.traces.trace_file import attributes_of
from tracer.tui import reader
from tracer.tui.records import LazyAttributes, SpanLink


def _link(request_id: str) -> SpanLink:
    attributes = [{"key": "servetrace.link", "value": {"stringValue": "request"}},
                  {"key": "gen_ai.request.id", "value": {"stringValue": request_id}}]
    return msgspec.json.decode(msgspec.json.encode({"traceId": "a" * 32, "spanId": "b" * 16, "attributes": attributes}),
                               type=SpanLink)


def test_the_memos_stay_bounded_as_new_request_ids_keep_coming():
    # Request ids are short values that never repeat: a window that reads them for hours must not
    # keep every one (the memos were unbounded module dicts).
    for number in range(reader.SHORT_VALUES_CACHED + 500):
        value = reader.decode_value_cached(b'{"stringValue":"req-%d"}' % number)
        assert value == f"req-{number}"
    assert 0 < len(reader._short_values) <= reader.SHORT_VALUES_CACHED
    for number in range(reader.LINK_ATTRIBUTE_LISTS_CACHED + 500):
        assert _link(f"req-{number}").attributes["gen_ai.request.id"] == f"req-{number}"
    assert 0 < len(reader._link_attribute_lists) <= reader.LINK_ATTRIBUTE_LISTS_CACHED


def test_a_list_value_is_never_shared_between_spans():
    first = reader.decode_value_cached(b'{"arrayValue":{"values":[{"intValue":"1"}]}}')
    first.append(2)  # a reader that changes its copy
    assert reader.decode_value_cached(b'{"arrayValue":{"values":[{"intValue":"1"}]}}') == [1]


def test_two_threads_reading_the_same_spans_get_what_decoding_gives():
    jsons = [msgspec.json.encode([{"key": "k", "value": {"intValue": str(n % 97)}},
                                  {"key": "id", "value": {"stringValue": f"req-{n}"}}]) for n in range(20_000)]
    spans = [LazyAttributes(msgspec.Raw(j)) for j in jsons]
    errors: list[str] = []

    def read() -> None:
        for n, attributes in enumerate(spans):
            if attributes.get("k") != n % 97 or attributes["id"] != f"req-{n}" or "absent" in attributes:
                errors.append(f"span {n}: {dict(attributes)}")

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


_SCALARS = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6), st.booleans(),
                     st.floats(allow_nan=False, allow_infinity=False))


def _any_value(value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    return {"arrayValue": {"values": [_any_value(v) for v in value]}}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "servetrace.batch.request_ids", "é"]),
                          st.one_of(_SCALARS, st.lists(st.one_of(st.text(max_size=6), st.integers(0, 99)), max_size=5))),
                max_size=6))
def test_every_fast_path_answers_what_the_reference_decoding_answers(items):
    # The scans (scan_array, the absent-key check) and the memos against trace_file's decoding.
    json = msgspec.json.encode([{"key": key, "value": _any_value(value)} for key, value in items])
    expected = attributes_of(msgspec.json.decode(json))
    for key in ("a", "b", "servetrace.batch.request_ids", "é", "missing"):
        fresh = LazyAttributes(msgspec.Raw(json))
        assert fresh.get(key) == expected.get(key)
        assert (key in LazyAttributes(msgspec.Raw(json))) == (key in expected)
        assert LazyAttributes(msgspec.Raw(json)).get_array(key) == expected.get(key)
        scanned = reader.scan_array(json, key)
        if scanned is not reader.MISSING:
            assert scanned == expected.get(key)
    assert dict(LazyAttributes(msgspec.Raw(json)).items()) == expected
