"""An OTLP/HTTP trace receiver: POST /v1/traces, protobuf or JSON, as the OTLP/HTTP spec says.

Each accepted export becomes one line of OTLP/JSON (one ExportTraceServiceRequest, hex ids: the
format of our trace files), handed to a callback and, with `save`, appended to a file. It runs in
a process of its own (`start_receiver`): decoding protobuf and writing JSON costs ~10-20 µs per
span of Python, and at 10,000 spans/s that would take the explorer's keystrokes' time if it ran
in the explorer's process. The explorer reads the lines from a pipe.

gRPC (port 4317) is not served: grpcio is not a dependency. vLLM's and SGLang's own exporters
default to gRPC; OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf switches them to this receiver.
"""
from __future__ import annotations

import base64
import gzip
import multiprocessing
import socket
import threading
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import msgspec

TRACES_PATH = "/v1/traces"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 4318
PROTOBUF, JSON = "application/x-protobuf", "application/json"
MAX_BODY = 64 << 20  # one export batch; a larger body is refused (413), not read into memory


class BadRequest(ValueError):
    """A body the receiver cannot decode (answered 400 with the reason)."""


def parse_listen(text: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port); a bare port listens on 127.0.0.1 (loopback: a trace may
    hold request ids and, with content capture, prompts)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    host = host.strip("[]") or DEFAULT_HOST  # [::1]:4318
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen takes [HOST:]PORT, got {text!r}") from None
    return host, number


# -- protobuf -> OTLP/JSON ---------------------------------------------------------------------------
# Written out by hand rather than json_format.MessageToDict (which writes ids as base64 and costs
# several times as much): the same mapping as tracer/instrument/exporters.py's encoder.

def _any(value: Any) -> dict[str, Any]:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return {"stringValue": value.string_value}
    if kind == "int_value":
        return {"intValue": str(value.int_value)}
    if kind == "bool_value":
        return {"boolValue": value.bool_value}
    if kind == "double_value":
        return {"doubleValue": value.double_value}
    if kind == "array_value":
        values = [_any(v) for v in value.array_value.values]
        return {"arrayValue": {"values": values} if values else {}}
    if kind == "kvlist_value":
        values = _attributes(value.kvlist_value.values)
        return {"kvlistValue": {"values": values} if values else {}}
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode()}
    return {}


def _attributes(items: Any) -> list[dict[str, Any]]:
    return [{"key": kv.key, "value": _any(kv.value)} for kv in items]


def _span(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": span.trace_id.hex(), "spanId": span.span_id.hex()}
    if span.trace_state:
        out["traceState"] = span.trace_state
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id.hex()
    out["name"] = span.name
    if span.kind:
        out["kind"] = span.kind
    out["startTimeUnixNano"] = str(span.start_time_unix_nano)
    out["endTimeUnixNano"] = str(span.end_time_unix_nano)
    if span.attributes:
        out["attributes"] = _attributes(span.attributes)
    if span.events:
        out["events"] = [{"timeUnixNano": str(e.time_unix_nano), "name": e.name, "attributes": _attributes(e.attributes)}
                         for e in span.events]
    if span.links:
        out["links"] = [{"traceId": k.trace_id.hex(), "spanId": k.span_id.hex(), "attributes": _attributes(k.attributes)}
                        for k in span.links]
    status: dict[str, Any] = {}
    if span.status.message:
        status["message"] = span.status.message
    if span.status.code:
        status["code"] = span.status.code
    out["status"] = status
    return out


def protobuf_to_json_line(body: bytes) -> tuple[bytes, int]:
    """An ExportTraceServiceRequest in protobuf -> (one OTLP/JSON line, spans in it)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        message = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadRequest(f"not an ExportTraceServiceRequest in protobuf: {exc}") from None
    count = 0
    resource_spans = []
    for rs in message.resource_spans:
        scope_spans = []
        for ss in rs.scope_spans:
            spans = [_span(s) for s in ss.spans]
            count += len(spans)
            scope: dict[str, Any] = {}
            if ss.scope.name:
                scope["name"] = ss.scope.name
            if ss.scope.version:
                scope["version"] = ss.scope.version
            scope_spans.append({"scope": scope, "spans": spans})
        resource_spans.append({"resource": {"attributes": _attributes(rs.resource.attributes)}, "scopeSpans": scope_spans})
    return msgspec.json.encode({"resourceSpans": resource_spans}) + b"\n", count


def json_to_json_line(body: bytes) -> tuple[bytes, int]:
    """An ExportTraceServiceRequest in OTLP/JSON -> (the same, compacted onto one line, spans in it).
    The spec's JSON already writes ids in hex; the explorer's reader checks the rest."""
    try:
        message = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("resourceSpans", []), list):
        raise BadRequest("not an ExportTraceServiceRequest (no resourceSpans list)")
    count = sum(len(ss.get("spans") or []) for rs in message.get("resourceSpans") or [] if isinstance(rs, dict)
                for ss in rs.get("scopeSpans") or [] if isinstance(ss, dict))
    return msgspec.json.encode(message) + b"\n", count


def decode_export(body: bytes, content_type: str, encoding: str = "") -> tuple[bytes, int]:
    """A POST body -> (one OTLP/JSON line, spans in it); BadRequest or LookupError (415) otherwise."""
    encoding = encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity"):
            raise LookupError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate or none)")
    except (OSError, zlib.error, EOFError) as exc:
        raise BadRequest(f"cannot decompress the {encoding} body: {exc}") from None
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == PROTOBUF:
        return protobuf_to_json_line(body)
    if kind == JSON:
        return json_to_json_line(body)
    raise LookupError(f"unsupported Content-Type {content_type!r}: OTLP/HTTP sends {PROTOBUF} or {JSON}")


def _empty_response(content_type: str) -> bytes:
    """An ExportTraceServiceResponse with nothing rejected, in the request's encoding."""
    return b"{}" if content_type == JSON else b""  # the empty protobuf message is zero bytes


@dataclass
class Counters:
    requests: int = 0
    spans: int = 0
    rejected: int = 0


class OTLPReceiver(ThreadingHTTPServer):
    """An HTTP server on an already bound socket (the CLI binds it first: a busy port is found
    before anything starts). `deliver(line, spans)` is called once per accepted export, in the
    order the exports were read."""

    daemon_threads = True

    def __init__(self, listener: socket.socket, deliver: Callable[[bytes, int], None]) -> None:
        super().__init__(listener.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.server_address = listener.getsockname()[:2]
        self.deliver = deliver
        self.counters = Counters()
        self.lock = threading.Lock()  # keeps lines whole and in order across handler threads
        self.socket.listen(128)  # again is harmless; a socket bound but not yet listening needs it


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: an exporter posts every batch on one connection
    server: OTLPReceiver

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # the explorer owns the terminal

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        content_type = self.headers.get("Content-Type", "")
        reply_type = JSON if content_type.startswith(JSON) else PROTOBUF
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self.rfile.read(length)
            self._reply(HTTPStatus.NOT_FOUND, f"only POST {TRACES_PATH} is served".encode(), "text/plain")
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"body too large", "text/plain")
            return
        body = self.rfile.read(length)
        try:
            line, spans = decode_export(body, content_type, self.headers.get("Content-Encoding", ""))
        except LookupError as exc:
            self.server.counters.rejected += 1
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, str(exc).encode(), "text/plain")
            return
        except BadRequest as exc:
            self.server.counters.rejected += 1
            self._reply(HTTPStatus.BAD_REQUEST, str(exc).encode(), "text/plain")
            return
        with self.server.lock:
            self.server.counters.requests += 1
            self.server.counters.spans += spans
            self.server.deliver(line, spans)
        self._reply(HTTPStatus.OK, _empty_response(reply_type), reply_type)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, f"POST OTLP traces to {TRACES_PATH}".encode(), "text/plain")


def _serve(listener: socket.socket, pipe: Connection, save: str | None) -> None:
    """The receiver process: every accepted export goes down the pipe, and into `save`."""
    out = open(save, "ab", buffering=0) if save else None  # truncated by the parent; unbuffered: a kill loses nothing

    def deliver(line: bytes, spans: int) -> None:
        if out is not None:
            out.write(line)
        pipe.send_bytes(line)

    server = OTLPReceiver(listener, deliver)
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, BrokenPipeError, EOFError, OSError):
        pass  # the explorer went away: nothing left to feed


@dataclass
class ReceiverProcess:
    process: multiprocessing.process.BaseProcess
    lines: Connection  # read end: one OTLP/JSON line per accepted export
    address: tuple[str, int]

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.lines.close()


def start_receiver(listener: socket.socket, save: str | Path | None = None) -> ReceiverProcess:
    """Serve OTLP/HTTP on `listener` in a child process. `save` is emptied now (a rerun replaces
    it) and receives every accepted export as one line."""
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        Path(save).write_bytes(b"")
    # fork: the child inherits the bound socket as it is, and starts in milliseconds. The
    # explorer has started no threads yet when this runs.
    listener.listen(128)  # before the child starts: a client may connect at once (it queues until served)
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(listener, writer, str(save) if save else None),
                              name="servetrace-otlp-receiver", daemon=True)
    process.start()
    writer.close()
    address = listener.getsockname()[:2]
    listener.close()  # the child holds it now
    return ReceiverProcess(process, reader, (address[0], address[1]))
