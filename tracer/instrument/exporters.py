"""Span exporters: an OTLP/JSON-lines file (what the OpenTelemetry Collector's file exporter
writes), and a guard that keeps any exporter's failure away from the engine.

File format: one ExportTraceServiceRequest per line, OTLP/JSON encoding: lowerCamelCase keys,
trace and span ids as hex strings, enums as integers, 64-bit integers as decimal strings
(tracer.instrument.otlp_json writes it).
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tracer.instrument.otlp_fragments import spans_to_otlp_json_bytes
from tracer.instrument.otlp_json import spans_to_otlp_dict  # noqa: F401  (re-exported: the reference dict form)

logger = logging.getLogger(__name__)

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _ids_to_hex(node: object) -> None:
    """protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants trace/span ids in hex."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


def spans_to_otlp_json_via_protobuf(spans: Sequence[ReadableSpan]) -> str:
    """The reference encoding: OTel's protobuf encoder, then protobuf's JSON mapping with ids in
    hex. Exact but slow (~10x the direct encoder, tracer.instrument.otlp_json); tests hold the two equal."""
    as_dict = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    _ids_to_hex(as_dict)
    return json.dumps(as_dict, separators=(",", ":"))


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> str:
    """One ExportTraceServiceRequest as a single line of OTLP/JSON."""
    return spans_to_otlp_json_bytes(spans).decode()


class OTLPJsonLinesFileExporter(SpanExporter):
    """Appends one line per export batch. Several processes (vLLM's API server, EngineCore,
    workers) may append to the same file: each line is one write() under an exclusive lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._failed_once = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            data = spans_to_otlp_json_bytes(spans) + b"\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)  # closing releases the lock
        except Exception as exc:  # never let a full disk or a bad path reach the engine
            if not self._failed_once:
                self._failed_once = True
                logger.warning("servetrace: cannot write trace file %s: %s (spans dropped)", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class GuardedExporter(SpanExporter):
    """Wraps an exporter so that an exception in it is logged once and reported as FAILURE."""

    def __init__(self, inner: SpanExporter, label: str) -> None:
        self.inner = inner
        self.label = label
        self._warned = False

    def _warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("servetrace: %s exporter failed in %s: %s (spans dropped)", self.label, what, exc)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self.inner.export(spans)
        except Exception as exc:
            self._warn("export", exc)
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception as exc:
            self._warn("shutdown", exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return self.inner.force_flush(timeout_millis)
        except Exception as exc:
            self._warn("force_flush", exc)
            return False
