"""`servetrace tui --listen`: the OTLP/HTTP receiver (protobuf and JSON bodies, real HTTP clients on
127.0.0.1), --save, the bounded live window, the live app filling as spans arrive, a busy port."""
from __future__ import annotations

import gzip
import http.client
import json
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
