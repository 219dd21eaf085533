"""Trace files (OTLP/JSON lines) round-trip; OTLP/HTTP reaches a collector; Perfetto export;
a failing exporter never disturbs the traced code."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode, set_span_in_context

from tracer.instrument import hooks, otel, spans
from tracer.cli import main
from tracer.instrument.exporters import OTLPJsonLinesFileExporter
from tracer.traces.trace_file import read_trace_file


def provider_with(*exporters) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "export-test"}))
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_a_trace_file_round_trips_every_span_field(tmp_path):
    path = tmp_path / "t.jsonl"
    memory = InMemorySpanExporter()
    tracer = provider_with(OTLPJsonLinesFileExporter(path), memory).get_tracer("t")
    root = tracer.start_span("engine.enqueue", attributes={"gen_ai.request.id": "r1", "gen_ai.usage.input_tokens": 45})
    step = tracer.start_span("engine.step", links=[Link(root.get_span_context(), {"servetrace.link": "request"})],
                             attributes={"servetrace.batch.request_ids": ["r1"], "servetrace.kv.usage": 0.25})
    child = tracer.start_span("kv.allocate", context=set_span_in_context(root), attributes={"servetrace.kv.allocated": False})
    child.add_event("retry", {"attempt": 2})
    child.set_status(Status(StatusCode.ERROR, "out of blocks"))
    for span in (child, step, root):
        span.end()

    trace = read_trace_file(path)
    assert trace.skipped == []
    by_name = {s.name: s for s in trace.spans}
    for sdk_span in memory.get_finished_spans():
        record = by_name[sdk_span.name]
        assert record.trace_id == format(sdk_span.context.trace_id, "032x")
        assert record.span_id == format(sdk_span.context.span_id, "016x")
        assert record.parent_span_id == (format(sdk_span.parent.span_id, "016x") if sdk_span.parent else None)
        assert (record.start_ns, record.end_ns) == (sdk_span.start_time, sdk_span.end_time)
        assert record.attributes == {k: list(v) if isinstance(v, tuple) else v for k, v in sdk_span.attributes.items()}
        assert record.resource["service.name"] == "export-test"
    assert by_name["engine.step"].links[0].span_id == by_name["engine.enqueue"].span_id
    assert by_name["engine.step"].links[0].attributes == {"servetrace.link": "request"}
    assert (by_name["kv.allocate"].status, by_name["kv.allocate"].status_message) == ("ERROR", "out of blocks")
    assert [(e.name, e.attributes) for e in by_name["kv.allocate"].events] == [("retry", {"attempt": 2})]

    # OTLP/JSON as the Collector writes it: hex ids, integer enums, one request per line.
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    raw = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(raw["traceId"]) == 32 and int(raw["traceId"], 16) >= 0
    assert raw["kind"] == 1


attribute_values = st.one_of(
    st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=5), max_size=4), st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attributes=st.dictionaries(st.text(min_size=1, max_size=12), attribute_values, max_size=6))
def test_attributes_of_any_supported_type_round_trip(tmp_path_factory, attributes):
    path = tmp_path_factory.mktemp("prop") / "t.jsonl"
    tracer = provider_with(OTLPJsonLinesFileExporter(path)).get_tracer("t")
    tracer.start_span("x", attributes=attributes).end()
    (record,) = read_trace_file(path).spans
    assert record.attributes == attributes


def test_a_truncated_or_foreign_line_is_skipped_and_reported(tmp_path):
    path = tmp_path / "t.jsonl"
    tracer = provider_with(OTLPJsonLinesFileExporter(path)).get_tracer("t")
    for name in ("a", "b"):
        tracer.start_span(name).end()
    good = path.read_text()
    path.write_text(good + '{"not": "otlp"}\nthis is not json\n' + good.splitlines()[0][:40])
    trace = read_trace_file(path)
    assert [s.name for s in trace.spans] == ["a", "b"]
    assert [(s.line_number, s.reason.split(":")[0]) for s in trace.skipped] == [
        (3, "ValueError"), (4, "JSONDecodeError"), (5, "truncated last line")]


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: decodes each POST /v1/traces body with opentelemetry-proto."""

    received: list = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's naming
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        type(self).received.append((self.path, self.headers.get("Content-Type"), message))
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def collector():
    Collector.received = []
    Collector.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def radix_hooks():
    """The mini engine's radix cache, hooked (kv.* hops only: no model needed)."""
    hooks.install("mini", hops=["kv.match_prefix", "kv.insert", "kv.evict"], import_modules=True)
    yield
    hooks.uninstall()
    otel.shutdown()
    spans.registry.clear()


def drive_radix_cache():
    from engine.radix_cache import RadixCache, TokenToKVPoolAllocator

    allocator = TokenToKVPoolAllocator(64)
    cache = RadixCache(token_to_kv_pool_allocator=allocator, page_size=1)
    cache.insert([1, 2, 3, 4], allocator.alloc(4))
    match = cache.match_prefix([1, 2, 3, 9])
    evicted = cache.evict(4)
    return match.prefix_len, evicted


def test_spans_reach_an_otlp_http_collector(collector, radix_hooks):
    otel.configure(otlp_endpoint=collector, engine="mini")
    assert drive_radix_cache() == (3, 4)
    otel.flush()
    assert Collector.received, "the collector got nothing"
    paths = {path for path, _, _ in Collector.received}
    assert paths == {"/v1/traces"}
    assert {content_type for _, content_type, _ in Collector.received} == {"application/x-protobuf"}
    received = {}
    for _, _, message in Collector.received:
        for resource_spans in message.resource_spans:
            resource = {kv.key: kv.value for kv in resource_spans.resource.attributes}
            assert resource["servetrace.engine"].string_value == "mini"
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received[span.name] = {kv.key: kv.value for kv in span.attributes}
    assert set(received) == {"kv.insert", "kv.match_prefix", "kv.evict"}
    assert received["kv.match_prefix"]["servetrace.kv.cached_tokens"].int_value == 3
    assert received["kv.evict"]["servetrace.kv.evicted_tokens"].int_value == 4


def test_failing_exporters_never_break_the_traced_code(tmp_path, collector, radix_hooks, caplog):
    Collector.status = 400  # the collector rejects everything
    otel.configure(trace_file=tmp_path / "no-such-dir" / "t.jsonl", otlp_endpoint=collector, engine="mini")
    assert drive_radix_cache() == (3, 4)
    assert drive_radix_cache() == (3, 4)
    otel.flush()
    otel.shutdown()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "cannot write trace file" in messages
    assert len(Collector.received) >= 1  # it was tried, and refused


def test_export_perfetto_draws_tracks_and_link_arrows(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    otel.configure(trace_file=path, engine="mini", batch=False)
    tracer = otel.active_tracer()
    root = tracer.start_span("engine.enqueue", attributes={"gen_ai.request.id": "r1"})
    root.end()
    step = tracer.start_span("engine.step", links=[Link(root.get_span_context(), {"servetrace.link": "request"})])
    child = tracer.start_span("scheduler.schedule", context=set_span_in_context(step))
    child.end()
    step.end()
    otel.shutdown()

    out = tmp_path / "out.json"
    assert main(["export", str(path), "--format", "perfetto", "-o", str(out)]) == 0
    events = json.loads(out.read_text())["traceEvents"]
    slices = {e["name"]: e for e in events if e["ph"] == "X"}
    assert set(slices) == {"engine.enqueue", "engine.step", "scheduler.schedule"}
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads[slices["engine.enqueue"]["tid"]] == "request r1"
    assert threads[slices["engine.step"]["tid"]] == threads[slices["scheduler.schedule"]["tid"]] == "engine"
    start, finish = [e for e in events if e["ph"] in "sf"]
    assert (start["tid"], finish["tid"]) == (slices["engine.enqueue"]["tid"], slices["engine.step"]["tid"])
    assert start["id"] == finish["id"] and finish["bp"] == "e"
    assert slices["engine.step"]["dur"] >= slices["scheduler.schedule"]["dur"] >= 0

    assert main(["export", str(tmp_path / "missing.jsonl")]) == 2
    assert "no trace file" in capsys.readouterr().err


@settings(max_examples=40, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=8), attribute_values, max_size=5),
    event_attributes=st.dictionaries(st.text(min_size=1, max_size=8), attribute_values, max_size=3),
    with_parent=st.booleans(), with_link=st.booleans(), error=st.one_of(st.none(), st.text(max_size=10)),
)
def test_the_direct_encoder_writes_what_protobufs_json_mapping_writes(attributes, event_attributes, with_parent, with_link, error):
    """The file exporter encodes spans itself (3x faster than going through protobuf); its
    output must be exactly the OTLP/JSON that OTel's encoder + json_format produce."""
    from tracer.instrument.exporters import spans_to_otlp_json, spans_to_otlp_json_via_protobuf

    memory = InMemorySpanExporter()
    tracer = provider_with(memory).get_tracer("servetrace", "0.1")
    parent = tracer.start_span("parent")
    span = tracer.start_span(
        "child", context=set_span_in_context(parent) if with_parent else None, attributes=attributes,
        links=[Link(parent.get_span_context(), attributes)] if with_link else [],
    )
    span.add_event("event", event_attributes)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
    parent.end()
    finished = memory.get_finished_spans()
    assert json.loads(spans_to_otlp_json(finished)) == json.loads(spans_to_otlp_json_via_protobuf(finished))
