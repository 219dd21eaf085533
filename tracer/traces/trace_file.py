"""Read an OTLP/JSON-lines trace file back into plain span records.

Tolerant by design: a trace file may be cut mid-line (the process was killed) or hold a line
some other tool wrote. Those lines are skipped and reported, never raised.
Ids may be hex (OTLP/JSON, what servetrace writes) or base64 (protobuf's plain JSON mapping).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.traces.schema import REQUEST_ID, SCHEMA_VERSION, SCHEMA_VERSION_KEY

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Event:
    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


class SpanReadings:
    """What both span types (this reader's SpanRecord, the explorer's records.Span) derive alike."""

    __slots__ = ()
    start_ns: int
    end_ns: int
    attributes: Any

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def request_id(self) -> str | None:
        value = self.attributes.get(REQUEST_ID)
        return None if value is None else str(value)


@dataclass
class SpanRecord(SpanReadings):
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[Event]
    links: list[Link]
    status: str
    status_message: str
    resource: dict[str, Any]
    scope: str


@dataclass
class SkippedLine:
    line_number: int
    reason: str


@dataclass
class TraceFile:
    spans: list[SpanRecord]
    skipped: list[SkippedLine]
    path: str = ""

    def by_trace(self) -> dict[str, list[SpanRecord]]:
        traces: dict[str, list[SpanRecord]] = {}
        for span in self.spans:
            traces.setdefault(span.trace_id, []).append(span)
        return traces

    def named(self, name: str) -> list[SpanRecord]:
        return [s for s in self.spans if s.name == name]

    def span(self, span_id: str) -> SpanRecord | None:
        for s in self.spans:
            if s.span_id == span_id:
                return s
        return None


class TraceFileError(ValueError):
    """The trace file cannot be read at all."""


class SchemaVersionError(TraceFileError):
    """The trace was written by a newer servetrace: its spans may mean what this reader does not know.
    Raised, not skipped like a bad line: a reader that shows part of such a file would mislead."""


def check_schema_version(resource: dict[str, Any]) -> None:
    """Raise SchemaVersionError unless this reader knows the resource's trace schema. A resource
    without servetrace.schema.version is version 1 (every trace written before the key existed)."""
    value = resource.get(SCHEMA_VERSION_KEY)
    if value is None:
        return
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise SchemaVersionError(f"{SCHEMA_VERSION_KEY} is {value!r}, not a version number") from None
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"this trace uses servetrace's trace schema version {version}; this servetrace reads versions "
            f"1 to {SCHEMA_VERSION}: open it with a newer servetrace")


def _id(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    try:
        int(text, 16)
        if len(text) in (16, 32):
            return text.lower()
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True).hex()
    except (binascii.Error, ValueError):
        raise ValueError(f"bad trace/span id {text!r}") from None


def any_value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue (a JSON object) as a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes_of(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes_of(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    """An OTLP attribute list (JSON objects with key and value) as a dict; a repeated key's last value wins."""
    return {item["key"]: any_value(item.get("value", {})) for item in items or []}


def kind_name(value: Any) -> str:
    """A span kind (its number, or its enum name) as SpanRecord.kind names it: SERVER, INTERNAL ..."""
    if isinstance(value, str):
        return value.removeprefix("SPAN_KIND_")
    return SPAN_KINDS.get(int(value or 0), str(value))


def status_name(code: int | str) -> str:
    """A status code (its number, or its enum name) as SpanRecord.status names it: UNSET, OK, ERROR."""
    return code.removeprefix("STATUS_CODE_") if isinstance(code, str) else STATUS_CODES.get(int(code), str(code))


def _status(status: dict[str, Any] | None) -> tuple[str, str]:
    status = status or {}
    return status_name(status.get("code", 0)), status.get("message", "")


def parse_request(message: dict[str, Any]) -> list[SpanRecord]:
    """The spans of one ExportTraceServiceRequest (as a JSON object)."""
    spans = []
    for resource_spans in message.get("resourceSpans", []):
        resource = attributes_of(resource_spans.get("resource", {}).get("attributes"))
        check_schema_version(resource)
        for scope_spans in resource_spans.get("scopeSpans", []):
            scope = scope_spans.get("scope", {}).get("name", "")
            for raw in scope_spans.get("spans", []):
                status, message_text = _status(raw.get("status"))
                spans.append(
                    SpanRecord(
                        trace_id=_id(raw["traceId"]),
                        span_id=_id(raw["spanId"]),
                        parent_span_id=_id(raw.get("parentSpanId")) or None,
                        name=raw["name"],
                        kind=kind_name(raw.get("kind", 0)),
                        start_ns=int(raw.get("startTimeUnixNano", 0)),
                        end_ns=int(raw.get("endTimeUnixNano", 0)),
                        attributes=attributes_of(raw.get("attributes")),
                        events=[
                            Event(e.get("name", ""), int(e.get("timeUnixNano", 0)), attributes_of(e.get("attributes")))
                            for e in raw.get("events", [])
                        ],
                        links=[
                            Link(_id(link["traceId"]), _id(link["spanId"]), attributes_of(link.get("attributes")))
                            for link in raw.get("links", [])
                        ],
                        status=status,
                        status_message=message_text,
                        resource=resource,
                        scope=scope,
                    )
                )
    return spans


def read_trace_file(path: str | Path) -> TraceFile:
    """All spans of an OTLP/JSON-lines file, sorted by start time; bad lines are skipped and listed."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trace file at {path}")
    if path.is_dir():
        raise TraceFileError(f"{path} is a directory, not a trace file")
    spans: list[SpanRecord] = []
    skipped: list[SkippedLine] = []
    with path.open("rb") as handle:
        for number, raw_line in enumerate(handle, 1):
            line = raw_line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict) or "resourceSpans" not in message:
                    raise ValueError("not an ExportTraceServiceRequest (no resourceSpans)")
                spans.extend(parse_request(message))
            except SchemaVersionError:
                raise
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                truncated = not raw_line.endswith(b"\n")
                reason = "truncated last line" if truncated else f"{type(exc).__name__}: {exc}"
                skipped.append(SkippedLine(number, reason))
    spans.sort(key=lambda s: (s.start_ns, s.end_ns))
    return TraceFile(spans, skipped, str(path))
