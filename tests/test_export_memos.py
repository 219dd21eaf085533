"""The file exporter's memos (tracer.instrument.otlp_json: a repeated batch array or request link
is encoded once; tracer.instrument.otlp_fragments: a repeated attribute entry or link is written
from its JSON bytes): what they hand back is what encoding afresh writes, for look-alike values that
compare equal (1 == True == 1.0, 0.0 == -0.0) and for many more distinct links than they keep."""
from __future__ import annotations

import json

import msgspec
import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from tracer.instrument import lean_span, otlp_fragments, otlp_json
from tracer.instrument.exporters import spans_to_otlp_json, spans_to_otlp_json_via_protobuf


def _spans(step_attributes: list[dict], links_per_span: int = 3, lean: bool = False, limits: SpanLimits | None = None) -> list:
    """Spans as the SDK's Tracer.start_span makes them (processors get ReadableSpan copies), or as
    lean_span does (processors get the LeanSpan itself): the encoder reads both off their fields."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("servetrace")
    roots = [tracer.start_span(f"request {n}") for n in range(links_per_span)]
    # One Link object on every span, as request_links shares them (the SDK re-wraps its attributes each time).
    shared = Link(roots[-1].get_span_context(), {"servetrace.link": "request", "gen_ai.request.id": "shared"})
    for attributes in step_attributes:
        links = [Link(root.get_span_context(), {"servetrace.link": "request", "gen_ai.request.id": f"req-{n}"})
                 for n, root in enumerate(roots)] + [shared]
        links.append(Link(roots[0].get_span_context(), {"flag": attributes.get("flag", 1)}))  # not all str: not memoized
        if lean:
            lean_span.start_span(tracer, "engine.step", None, SpanKind.INTERNAL, attributes, links, 10, 20)
        else:
            tracer.start_span("engine.step", attributes=attributes, links=links).end()
    for root in roots:
        root.end()
    return list(memory.get_finished_spans())


def _same_as_reference(spans: list) -> None:
    written = spans_to_otlp_json(spans)
    assert json.loads(written) == json.loads(spans_to_otlp_json_via_protobuf(spans))
    assert written.encode() == msgspec.json.encode(otlp_json.spans_to_otlp_dict(spans))  # byte for byte


@pytest.mark.parametrize("lean", [False, True], ids=["SDK spans", "lean spans"])
def test_look_alike_values_are_never_handed_each_others_encoding(lean):
    steps = [{"ids": (1, 0), "flag": True}, {"ids": (True, False), "flag": 1}, {"ids": (1.0, 0.0), "flag": 1.0},
             {"ids": ("1", "0")}, {"ids": (1, 0)}, {"ids": (1, "0")}, {"ids": ()}, {"ids": (0.0,), "flag": -0.0},
             {"ids": (-0.0,), "flag": 0.0}, {"ids": 1}, {"ids": True}, {"ids": "1"}, {"ids": 1.0}]
    spans = _spans(steps, lean=lean)
    _same_as_reference(spans)
    _same_as_reference(spans)  # the second time from the memos


def test_the_memos_stay_bounded_and_right_past_their_size():
    spans = _spans([{"ids": (n, n + 1)} for n in range(60)], links_per_span=12)
    saved = otlp_json._LINKS_CACHED, otlp_json._ARRAYS_CACHED, otlp_fragments._MEMO_SIZE, otlp_fragments._LINKS_SIZE
    # emptied many times over
    otlp_json._LINKS_CACHED, otlp_json._ARRAYS_CACHED, otlp_fragments._MEMO_SIZE, otlp_fragments._LINKS_SIZE = 5, 7, 6, 4
    for memo in (otlp_json._encoded_links, otlp_json._encoded_arrays, otlp_fragments._entries, otlp_fragments._link_bytes,
                 otlp_fragments._by_link):
        memo.clear()
    try:
        for _ in range(2):
            _same_as_reference(spans)
            assert len(otlp_json._encoded_links) <= 5 and len(otlp_json._encoded_arrays) <= 7
            assert len(otlp_fragments._entries) <= 6 and len(otlp_fragments._link_bytes) <= 4
            assert len(otlp_fragments._by_link) <= 4
    finally:
        otlp_json._LINKS_CACHED, otlp_json._ARRAYS_CACHED, otlp_fragments._MEMO_SIZE, otlp_fragments._LINKS_SIZE = saved


def test_a_link_whose_attributes_were_replaced_is_encoded_afresh():
    """A Link object handed to the SDK's start_span gets new attributes (sdk/trace/__init__.py
    _Span._new_links wraps them, cut to the span's limits): its memo by object is then stale."""
    from opentelemetry.attributes import BoundedAttributes

    spans = _spans([{"ids": (1,)}])
    _same_as_reference(spans)
    link = spans[0].links[0]
    link._attributes = BoundedAttributes(None, {"servetrace.link": "request", "gen_ai.request.id": "renamed"})
    _same_as_reference(spans)
    assert b'"renamed"' in spans_to_otlp_json(spans).encode()


@pytest.mark.parametrize("lean", [False, True], ids=["SDK spans", "lean spans"])
def test_dropped_attributes_and_links_are_counted_as_the_reference_counts_them(lean):
    """Span limits that drop attributes and links (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and friends): the
    counts the encoder reads off a span's fields are what the properties give the reference encoders."""
    limits = SpanLimits(max_span_attributes=2, max_links=2)
    spans = _spans([{"a": 1, "b": "x", "c": True}, {"a": 2}], links_per_span=3, lean=lean, limits=limits)
    assert [s.dropped_attributes for s in spans[:2]] == [1, 0] and spans[0].dropped_links == 3
    _same_as_reference(spans)
