"""`servetrace tui --listen`: the OTLP/HTTP receiver (protobuf and JSON bodies, real HTTP clients on
127.0.0.1), --save, the bounded live window, the live app filling as spans arrive, a busy port."""
from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer.commands._ports import listen
from tracer.traces.receiver import parse_listen, start_receiver
from tracer.traces.trace_file import read_trace_file
from tracer.tui.live import LiveExplorerApp, LiveWindow
from tracer.tui.loader import load_trace
from tracer.tui.widgets import RequestsTable

SAMPLE = Path(__file__).parent / "data" / "live-vllm.jsonl"
REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def receiver(tmp_path):
    saved = tmp_path / "saved.jsonl"
    saved.write_text("a previous run\n")  # a rerun replaces the file
    process = start_receiver(listen("127.0.0.1", 0, "--listen"), saved)
    yield process, saved
    process.stop()


def post(port: int, body: bytes, content_type: str, path: str = "/v1/traces", **headers: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", path, body, {"Content-Type": content_type, **headers})
    response = connection.getresponse()
    return response.status, response.read()


def drain(process, window: LiveWindow, spans: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while window.stats.spans_received < spans and time.monotonic() < deadline:
        if process.lines.poll(0.1):
            window.add_line(process.lines.recv_bytes())


def test_parse_listen():
    assert parse_listen("4318") == ("127.0.0.1", 4318)
    assert parse_listen("0.0.0.0:4000") == ("0.0.0.0", 4000)
    assert parse_listen("[::1]:4318") == ("::1", 4318)
    with pytest.raises(ValueError, match=r"\[HOST:\]PORT"):
        parse_listen("localhost:http")


def test_the_sdks_protobuf_exporter_fills_the_window_and_the_saved_file(receiver):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    process, saved = receiver
    url = f"http://127.0.0.1:{process.address[1]}/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": "servetrace-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url, compression=Compression.Gzip)))
    tracer = provider.get_tracer("test")
    for n in range(3):
        with tracer.start_as_current_span("http.request", attributes={"gen_ai.request.id": f"r{n}"}):
            with tracer.start_as_current_span("engine.enqueue", attributes={"gen_ai.request.id": f"r{n}-0123abcd",
                                                                            "servetrace.request.external_id": f"r{n}",
                                                                            "servetrace.kv.block_ids": [1, 2]}):
                pass
    provider.shutdown()
    window = LiveWindow(limit=10)
    drain(process, window, 6)
    model = window.build()
    assert list(model.requests) == ["r0", "r1", "r2"]  # the internal ids fold into the row of their request
    assert all(len(r.spans) == 2 for r in model.requests.values())
    # --save: every export as one OTLP/JSON line, the previous content gone, readable by both readers
    assert "a previous run" not in saved.read_text()
    assert len(read_trace_file(saved).spans) == 6 == len(load_trace(saved).spans)
    enqueue = next(s for s in read_trace_file(saved).spans if s.name == "engine.enqueue")
    assert enqueue.attributes["servetrace.kv.block_ids"] == [1, 2]


def test_json_bodies_and_the_replies_the_spec_asks_for(receiver):
    process, saved = receiver
    port = process.address[1]
    line = SAMPLE.read_bytes().splitlines()[0]
    spans = len(load_trace_line(line))
    pretty = json.dumps(json.loads(line), indent=2).encode()  # newlines inside: still one saved line
    assert post(port, pretty, "application/json") == (200, b"{}")
    assert post(port, gzip.compress(line), "application/json", **{"Content-Encoding": "gzip"}) == (200, b"{}")
    status, body = post(port, b"not a message", "application/x-protobuf")
    assert status == 400 and b"protobuf" in body
    assert post(port, b"{", "application/json")[0] == 400
    assert post(port, line, "text/plain")[0] == 415
    assert post(port, line, "application/json", path="/v1/metrics")[0] == 404
    window = LiveWindow(limit=10)
    drain(process, window, 2 * spans)
    assert window.stats.spans_received == 2 * spans and window.stats.exports_received == 2
    assert saved.read_text().count("\n") == 2


def load_trace_line(line: bytes) -> list:
    from tracer.tui.loader import _parse_line

    return _parse_line(line)


def test_the_window_keeps_the_newest_requests_and_says_how_many_it_dropped():
    window = LiveWindow(limit=2)
    lines = SAMPLE.read_bytes().splitlines()
    for line in lines:
        window.add_line(line)
    model = window.build()
    everything = LiveWindow(limit=100)
    for line in lines:
        everything.add_line(line)
    by_start = sorted(everything.build().requests.values(), key=lambda r: r.start_ns)
    assert [r.request_id for r in sorted(model.requests.values(), key=lambda r: r.start_ns)] == \
        [r.request_id for r in by_start[-2:]]
    assert window.stats.requests_dropped == len(by_start) - 2
    assert f"showing the last 2 requests; {len(by_start) - 2} dropped" in window.notice()
    # the dropped requests' traces left the window: the next build does not bring them back
    again = window.build()
    assert set(again.requests) == set(model.requests) and window.stats.requests_dropped == len(by_start) - 2
    assert len(again.spans) < len(everything.build().spans)


def test_in_a_pause_full_collections_are_spaced_by_gap_s(monkeypatch):
    """Live, garbage keeps coming while the user pauses: one full collection per gap_s of pause,
    not one per tick (each scans the whole window, whenever the next key comes)."""
    import gc

    from tracer.tui import memory

    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    full: list[float] = []
    real_collect = gc.collect
    monkeypatch.setattr(memory.gc, "collect", lambda *args: full.append(clock[0]) if not args else real_collect(*args))
    collector = memory.IdleCollector(idle_s=1.0, gap_s=10.0)
    collector.input_seen()
    try:
        collector.start()
        for _ in range(60):  # 30 s of pause, a tick every 0.5 s, garbage pending at each
            clock[0] += 0.5
            real_collect(1)  # a generation-1 pass: a full collection is pending
            collector.tick()
    finally:
        collector.stop()
    assert len(full) == 3 and full[1] - full[0] >= 10.0


def test_a_bad_export_is_counted_and_shown_not_fatal():
    window = LiveWindow(limit=5)
    window.add_line(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 3}]}]}]}')
    window.add_line(SAMPLE.read_bytes().splitlines()[0])
    assert window.stats.lines_skipped == 1 and window.stats.spans_received > 0
    assert "1 unreadable export(s)" in window.notice()


async def test_the_live_app_fills_as_spans_arrive(receiver):
    process, _ = receiver
    port = process.address[1]
    app = LiveExplorerApp(process, LiveWindow(limit=50), rebuild_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.query_one("#requests", RequestsTable).row_count == 0
        assert "waiting for spans" in str(app.query_one("#warning").content)
        for line in SAMPLE.read_bytes().splitlines():
            assert post(port, line, "application/json")[0] == 200
        deadline = time.monotonic() + 10
        while app.query_one("#requests", RequestsTable).row_count < 5 and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert app.query_one("#requests", RequestsTable).row_count == 5
        assert f"{len(load_trace(SAMPLE).spans):,} spans received" in str(app.query_one("#warning").content)
        await pilot.press("down", "down")
        chosen = app.query_one("#requests", RequestsTable).current().request_id
        for line in SAMPLE.read_bytes().splitlines()[:1]:  # more arrives: the cursor stays on its request
            assert post(port, line, "application/json")[0] == 200
        shown = app.models_shown
        while app.models_shown == shown and time.monotonic() < deadline + 5:
            await pilot.pause(0.1)
        assert app.query_one("#requests", RequestsTable).current().request_id == chosen


def test_listen_on_a_busy_port_names_it_and_exits_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tracer.cli", "tui", "--listen", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert f"port {port} is busy" in result.stderr and "--listen" in result.stderr


def test_listen_takes_no_trace_file_and_save_needs_listen(tmp_path):
    from tracer.cli import main

    assert main(["tui", "--listen", "127.0.0.1:0", str(SAMPLE)]) == 2
    assert main(["tui", "--save", str(tmp_path / "x.jsonl"), str(SAMPLE)]) == 2


# -- SGLang's own request tracing, as sglang 0.5.23 emits it (srt/observability/trace.py) ----------
SGLANG_SAMPLE = Path(__file__).parent / "data" / "live-sglang.jsonl"
_HOST = "5c0e1f2a9b8d7c6e"


def _attrs(values: dict) -> list[dict]:
    return [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else
             ({"doubleValue": v} if isinstance(v, float) else {"stringValue": str(v)})} for k, v in values.items()]


def _span(trace_id: str, span_id: str, parent: str | None, name: str, start: int, end: int, attrs: dict,
          links: tuple[str, ...] = ()) -> dict:
    return {"traceId": trace_id, "spanId": span_id, "parentSpanId": parent or "", "name": name, "kind": 1,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": _attrs(attrs),
            "links": [{"traceId": trace_id, "spanId": link} for link in links]}


def _sglang_export(spans: list[dict]) -> bytes:
    """One export of SGLang's own tracer: its resource is service.name only (process_tracing_init,
    trace.py:236-241: --otlp-service-name, else OTEL_SERVICE_NAME, else "sglang"), scope "sglang server"."""
    return json.dumps({"resourceSpans": [{"resource": {"attributes": _attrs({"service.name": "sglang"})},
                                          "scopeSpans": [{"scope": {"name": "sglang server"}, "spans": spans}]}]}).encode()


def sglang_native_spans(rid: str, n: int, start: int, end: int, trace_id: str | None = None,
                        client_parent: str | None = None) -> tuple[list[dict], dict]:
    """SGLang's spans of one request: (thread and slice spans, root span). The root ends when the
    request finishes (trace_req_finish), so it is exported last, after the others.
    - root (TraceReqContext.trace_req_start, trace.py:563-573): named f"{role} Req {rid[:8]}" with
      role "" when unified, attributes rid and module ("sglang::" + module_name, "request" in
      req_time_stats.py:303-309); its parent is the client's traceparent when one came in (else a
      trace of its own); the finish adds the gen_ai.latency.* attributes (req_time_stats.py:535-560).
    - one thread span per process under the root (__create_thread_context, trace.py:374-416):
      "{label} [TP 0]  (host:{host_id[:8]} | pid:{pid})", attributes host_id, pid, thread_label
      (+ tp_rank); labels "Tokenizer" (http_server.py:305) and "Scheduler" (scheduler.py:6352).
    - slices under the thread span, each linked to the one before (trace_slice_start, trace.py:
      613-652): tokenize, api_server_dispatch (req_time_stats.py:108-115), request_process,
      prefill_forward, decode_forward (req_time_stats.py:124-147). No slice or thread span names the request."""
    trace_id = trace_id or f"{n + 1:08x}" + "5e" * 12
    ids = iter(f"{n + 1:04x}{k:012x}" for k in range(1, 100))
    root_id = next(ids)
    step = (end - start) // 8
    tokenizer, scheduler = next(ids), next(ids)
    spans = [
        _span(trace_id, tokenizer, root_id, f"Tokenizer (host:{_HOST[:8]} | pid:2776)", start, start + 3 * step,
              {"host_id": _HOST, "pid": 2776, "thread_label": "Tokenizer"}),
        _span(trace_id, scheduler, root_id, f"Scheduler [TP 0]  (host:{_HOST[:8]} | pid:2840)", start + 2 * step,
              end, {"tp_rank": 0, "host_id": _HOST, "pid": 2840, "thread_label": "Scheduler"}),
    ]
    previous: str | None = None
    for index, (name, thread) in enumerate((("tokenize", tokenizer), ("api_server_dispatch", tokenizer),
                                            ("request_process", scheduler), ("prefill_forward", scheduler),
                                            ("decode_forward", scheduler))):
        slice_id = next(ids)
        spans.append(_span(trace_id, slice_id, thread, name, start + (index + 1) * step, start + (index + 2) * step,
                           {}, (previous,) if previous and thread == tokenizer or index > 2 else ()))
        previous = slice_id
    root = _span(trace_id, root_id, client_parent, f" Req {rid[:8]}", start, end,
                 {"rid": rid, "module": "sglang::request", "gen_ai.latency.e2e": (end - start) / 1e9,
                  "gen_ai.latency.time_to_first_token": step / 1e9})
    return spans, root


def test_sglang_native_request_spans_join_their_request_by_rid(receiver):
    """SGLang's own request tracing beside servetrace's (its --enable-trace pointed at the same
    receiver): each request is still one row, its native spans in that row; before a request's
    native root arrives, its thread and slice spans name no request: counted, never a row."""
    process, _ = receiver
    port = process.address[1]
    alone = LiveWindow(limit=50)
    for line in SGLANG_SAMPLE.read_bytes().splitlines():
        alone.add_line(line)
    rows = alone.build()
    served = [r for r in rows.requests.values() if any(s.name == "http.request" for s in r.spans)]
    assert len(served) >= 5
    natives = {}
    for n, request in enumerate(served):
        root_span = next(s for s in request.spans if s.name == "http.request")
        # The last request came with a client traceparent: SGLang's root then joins that trace.
        joined = n == len(served) - 1
        natives[request.request_id] = sglang_native_spans(
            request.request_id, n, root_span.start_ns + 1000, root_span.end_ns - 1000,
            trace_id=root_span.trace_id if joined else None, client_parent="c1" * 8 if joined else None)
    window = LiveWindow(limit=50)

    def send(body: bytes) -> None:  # one export at a time: the receiver's pipe is read as it goes
        expected = window.stats.spans_received + len(load_trace_line(body))
        assert post(port, body, "application/json")[0] == 200
        drain(process, window, expected)
        assert window.stats.spans_received == expected

    for line in SGLANG_SAMPLE.read_bytes().splitlines():
        send(line)
    send(_sglang_export([s for spans, _ in natives.values() for s in spans]))
    before = window.build()
    assert list(before.requests) == list(rows.requests)  # no row for spans that name no request
    assert len(before.foreign_traces) == len(served) - 1  # the one in the client's trace is in its row already
    send(_sglang_export([root for _, root in natives.values()]))
    model = window.build()
    assert list(model.requests) == list(rows.requests) and not model.foreign_traces
    for rid, (spans, root) in natives.items():
        row = model.requests[rid]
        assert {s.span_id for s in row.spans} >= {s["spanId"] for s in spans} | {root["spanId"]}
        assert len(row.spans) == len(rows.requests[rid].spans) + len(spans) + 1
    # the rows are named by the client's X-Request-Id (SGLang's own id is a uuid)
    labels = [model.requests[rid].label for rid in natives]
    assert all(not re.fullmatch(r"[0-9a-f]{32}", label) for label in labels), labels
