"""The lean span path (tracer.instrument.lean_span) gives span processors and exporters exactly
what the SDK's own Tracer.start_span gives them: same name, parent, kind, times, attributes and
links, for any attributes servetrace's cleaning lets through."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from tracer.instrument import lean_span
from tracer.instrument.hop_call import clean_attributes as _clean

ROOT = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
OTHER = SpanContext(0x9999, 0x4242, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
# A parent whose trace state its children inherit (the sampler hands it on).
STATED = SpanContext(0x1234, 0x5679, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED),
                     trace_state=TraceState([("vendor", "v1")]))


class _SameIds(IdGenerator):
    """Both providers hand out the same ids, so their spans can be compared whole."""

    def __init__(self) -> None:
        self.next = 0x100

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        return 0xABCDEF

    def is_trace_id_random(self) -> bool:  # as the SDK's RandomIdGenerator: the W3C random flag is set
        return True


class _Seen(SimpleSpanProcessor):
    """A user's span processor: what it is handed at start and at end."""

    def __init__(self, exporter):
        super().__init__(exporter)
        self.started: list[str] = []

    def on_start(self, span, parent_context=None):
        self.started.append(span.name)


def _provider(sampler=None):
    exporter = InMemorySpanExporter()
    processor = _Seen(exporter)
    provider = TracerProvider(id_generator=_SameIds(), sampler=sampler)
    provider.add_span_processor(processor)
    return provider.get_tracer("servetrace"), exporter, processor


def _exported(span) -> dict:
    return {
        "name": span.name, "kind": span.kind, "trace": span.context.trace_id, "id": span.context.span_id,
        "flags": span.context.trace_flags, "state": span.context.trace_state,
        "parent": span.parent.span_id if span.parent else None, "start": span.start_time, "end": span.end_time,
        "attributes": dict(span.attributes), "dropped": span.dropped_attributes, "status": span.status.status_code,
        "links": [(link.context.span_id, dict(link.attributes)) for link in span.links],
        "resource": dict(span.resource.attributes),
    }


def _one_span(start, tracer, attributes, later):
    links = [Link(ROOT, lean_span.frozen_attributes((("servetrace.link", "request"), ("gen_ai.request.id", "r1")))),
             Link(OTHER, {"servetrace.link": "step"})]  # a plain mapping too (overlap links of another kind)
    parent = trace.set_span_in_context(NonRecordingSpan(ROOT))
    span = start(tracer, "scheduler.schedule", parent, SpanKind.INTERNAL, _clean(attributes), links, 1_000)
    lean_span.set_attributes(span, _clean(later))
    span.add_link(OTHER, lean_span.frozen_attributes((("servetrace.link", "reported"), ("gen_ai.request.id", "r2"))))
    span.add_link(ROOT, {"servetrace.link": "request"})
    span.end(end_time=2_000)
    root = start(tracer, "engine.step", None, SpanKind.INTERNAL, {}, [], 500)  # a new trace: its flags come from the ids
    root.end(end_time=2_500)
    # A step's part, created ended (lean_span: start_ended), under a parent with a trace state.
    links = [Link(ROOT, lean_span.frozen_attributes((("servetrace.link", "request"), ("gen_ai.request.id", "r1"))))]
    start(tracer, "model.forward", trace.set_span_in_context(NonRecordingSpan(STATED)), SpanKind.INTERNAL,
          _clean(attributes), links, 600, 700)


def _sdk_start(tracer, name, context, kind, attributes, links, start_time, end_time=None):
    span = tracer.start_span(name, context=context, kind=kind, attributes=attributes, links=links, start_time=start_time)
    if end_time is not None:
        span.end(end_time=end_time)
    return span


values = st.one_of(st.text(max_size=8), st.integers(-2**62, 2**62), st.booleans(), st.floats(allow_nan=False),
                   st.none(), st.lists(st.one_of(st.text(max_size=4), st.integers(0, 99)), max_size=20),
                   st.tuples(st.integers(), st.integers()), st.frozensets(st.integers(0, 9), max_size=3))
attribute_maps = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=30)


@pytest.mark.parametrize("sampler", [None, ALWAYS_ON], ids=["default sampler", "ALWAYS_ON (ours at ratio 1)"])
@settings(max_examples=60, deadline=None)
@given(attributes=attribute_maps, later=attribute_maps)
def test_a_lean_span_exports_what_the_sdk_span_exports(sampler, attributes, later):
    lean_tracer, lean_out, lean_seen = _provider(sampler)
    sdk_tracer, sdk_out, sdk_seen = _provider(sampler)
    assert lean_span.lean_supported(lean_tracer)  # the pinned SDK: the lean path is the one under test
    _one_span(lean_span.start_span, lean_tracer, attributes, later)
    _one_span(_sdk_start, sdk_tracer, attributes, later)
    lean, sdk = lean_out.get_finished_spans(), sdk_out.get_finished_spans()
    assert [_exported(span) for span in lean] == [_exported(span) for span in sdk]
    assert lean[-1].context.trace_state == TraceState([("vendor", "v1")])  # the part inherited its parent's
    # on_start called as the SDK calls it, for the part created ended too
    assert lean_seen.started == sdk_seen.started == ["scheduler.schedule", "engine.step", "model.forward"]


def test_link_attributes_are_frozen_and_shared():
    """One mapping per (kind, request) for every step's link to that request: immutable, so no
    span can change what another span's link says."""
    first = lean_span.frozen_attributes((("servetrace.link", "request"), ("gen_ai.request.id", "r7")))
    assert lean_span.frozen_attributes((("servetrace.link", "request"), ("gen_ai.request.id", "r7"))) is first
    try:
        first["gen_ai.request.id"] = "other"
    except TypeError:
        pass
    else:  # pragma: no cover - the planted failure: a mutable shared mapping
        raise AssertionError("a shared link mapping could be changed")
    assert dict(first) == {"servetrace.link": "request", "gen_ai.request.id": "r7"}


def test_span_limits_that_cut_values_fall_back_to_the_sdk(monkeypatch):
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT set: the SDK's own start_span, which truncates."""
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "3")
    tracer, exporter, _ = _provider()
    assert not lean_span.lean_supported(tracer)
    span = lean_span.start_span(tracer, "detokenize", None, SpanKind.INTERNAL, {"text": "abcdef"}, [], 5)
    span.end(end_time=6)
    assert dict(exporter.get_finished_spans()[0].attributes) == {"text": "abc"}


def test_a_lean_span_has_the_sdk_spans_fields_and_hands_processors_what_it_held_at_its_end():
    """Its fields come from a per-tracer template: the same set _Span.__init__ sets, the tracer's
    equal to the SDK span's. Processors get the ended span itself, not a ReadableSpan copy: what
    they read cannot change after the end (the SDK refuses it, as it refuses it on the copy)."""
    tracer, exporter, _ = _provider()
    lean = lean_span.start_span(tracer, "x", None, SpanKind.SERVER, {"a": 1}, [], 5)
    sdk = tracer.start_span("x", kind=SpanKind.SERVER, attributes={"a": 1}, start_time=5)
    assert set(vars(lean)) == set(vars(sdk))
    for field in ("_name", "_kind", "_parent", "_start_time", "_end_time", "_resource", "_instrumentation_info",
                  "_instrumentation_scope", "_sampler", "_trace_config", "_record_exception", "_set_status_on_exception",
                  "_span_processor", "_limits"):
        assert vars(lean)[field] == vars(sdk)[field], field
    assert lean.status.status_code == sdk.status.status_code and lean._lock is not sdk._lock
    lean.end(end_time=7)
    lean.set_attribute("late", 2)
    lean.set_status(trace.Status(trace.StatusCode.ERROR, "late"))
    lean.update_name("renamed")
    (exported,) = exporter.get_finished_spans()
    assert (exported.name, dict(exported.attributes), exported.status.status_code, exported.end_time) == \
        ("x", {"a": 1}, trace.StatusCode.UNSET, 7)


def test_a_checked_link_is_kept_unchecked_and_an_invalid_one_is_never_marked():
    """checked_link marks a valid link with frozen attributes (request_links' links to a request), which
    spans then keep without checking it again; an invalid one is not marked, and a span drops it as the
    SDK does, at creation and when added later."""
    tracer, exporter, _ = _provider(ALWAYS_ON)
    frozen = lean_span.frozen_attributes((("servetrace.link", "request"), ("gen_ai.request.id", "r9")))
    good = lean_span.checked_link(Link(ROOT, frozen))
    bad = lean_span.checked_link(Link(trace.INVALID_SPAN_CONTEXT, lean_span.frozen_attributes(())))
    assert lean_span._checked.get(id(good)) is good and id(bad) not in lean_span._checked
    span = lean_span.start_span(tracer, "detokenize", None, SpanKind.INTERNAL, {}, [good, bad], 5)
    lean_span.add_links(span, [bad, good])
    span.end(end_time=6)
    sdk = tracer.start_span("detokenize", links=[good, bad], start_time=5)
    for link in (bad, good):
        sdk.add_link(link.context, link.attributes)
    sdk.end(end_time=6)
    lean_links, sdk_links = ([(link.context, dict(link.attributes)) for link in s.links] for s in exporter.get_finished_spans())
    assert lean_links == sdk_links == [(ROOT, dict(frozen))] * 2


def _reserved_start(tracer, name, context, kind, attributes, links, start_time, end_time=None):
    """start_span with the context reserve_context drew for it just before (the same ids, in the same
    order, as the SDK draws them inside start_span)."""
    parent = trace.get_current_span(context).get_span_context() if context is not None else None
    reserved = lean_span.reserve_context(tracer, parent)
    assert reserved is not None
    return lean_span.start_span(tracer, name, context, kind, attributes, links, start_time, end_time, reserved)


@pytest.mark.parametrize("sampler", [None, ALWAYS_ON], ids=["default sampler", "ALWAYS_ON (ours at ratio 1)"])
def test_a_span_made_on_a_reserved_context_exports_what_the_sdk_span_exports(sampler):
    """reserve_context: the ids, flags and trace state a span will have, known before it is created (a
    step and its parts are created later, in one pass, and their children and links need them first)."""
    if sampler is None:  # the SDK's default, ParentBased(ALWAYS_ON): decided per span, nothing to reserve
        tracer, _, _ = _provider(sampler)
        assert lean_span.reserve_context(tracer, ROOT) is None
        return
    attributes, later = {"servetrace.batch.size": 3, "x": [1, 2]}, {"y": "z"}
    reserved_tracer, reserved_out, reserved_seen = _provider(sampler)
    sdk_tracer, sdk_out, sdk_seen = _provider(sampler)
    _one_span(_reserved_start, reserved_tracer, attributes, later)
    _one_span(_sdk_start, sdk_tracer, attributes, later)
    reserved, sdk = reserved_out.get_finished_spans(), sdk_out.get_finished_spans()
    assert [_exported(span) for span in reserved] == [_exported(span) for span in sdk]
    assert reserved_seen.started == sdk_seen.started


def test_a_reserved_context_is_the_context_of_the_span_created_late_with_it():
    """Reserved first, created in another order, with other spans' ids drawn in between: each span
    still carries exactly what was reserved for it, so children parented and links made on it before
    it existed resolve to it."""
    tracer, exporter, _ = _provider(ALWAYS_ON)
    step_context = lean_span.reserve_context(tracer, None)  # a new trace
    part_context = lean_span.reserve_context(tracer, step_context)
    assert part_context.trace_id == step_context.trace_id and part_context.span_id != step_context.span_id
    other = tracer.start_span("detokenize", start_time=1)  # ids drawn in between
    other.end(end_time=2)
    under_step = trace.set_span_in_context(NonRecordingSpan(step_context))
    lean_span.start_span(tracer, "model.forward", under_step, SpanKind.INTERNAL, {}, [], 10, 20, part_context)
    lean_span.start_span(tracer, "engine.step", None, SpanKind.INTERNAL, {}, [Link(ROOT, {})], 5, 30, step_context)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["engine.step"].context == step_context and spans["engine.step"].parent is None
    assert spans["model.forward"].context == part_context
    assert spans["model.forward"].parent.span_id == step_context.span_id
    assert spans["engine.step"].context.trace_flags == spans["detokenize"].context.trace_flags  # as a root's
    assert (spans["model.forward"].start_time, spans["model.forward"].end_time) == (10, 20)
