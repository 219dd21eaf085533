"""Read a trace file for the explorer: tracer.traces.trace_file's spans, decoded about 10x faster.

A servetrace step span carries its batch as arrays of OTLP AnyValues (one JSON object per
request id), so a 100,000-span file holds millions of tiny objects. msgspec decodes each span
straight into a tracer.tui.records.Span, leaving attribute lists raw until read (the tricks
that make it fast are tracer.tui.reader's). A line the typed schema does not fit (an id in
base64 or upper case, an unexpected shape) goes through tracer.traces.trace_file.parse_request,
so both readers accept the same lines. Unreadable lines are skipped and listed, never raised.

One difference, by design: attribute lists are checked when first read, not when the line is
read, so a span whose attribute list is malformed is shown (with the reference reader's
lenient decoding, or an '<unreadable: ...>' value) where the reference reader skips its line.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Union

import msgspec
from msgspec import Struct, field

from tracer.traces.schema import EXTERNAL_ID
from tracer.traces.trace_file import (
    SchemaVersionError, SkippedLine, SpanRecord, TraceFile, TraceFileError, check_schema_version, parse_request,
)
from tracer.tui.memory import gc_paused
from tracer.tui.reader import KeyValue, canonical_hex, ints_of, keys_absent_from, lines_of, typed_attributes
from tracer.tui.records import Span

__all__ = ["RARE_KEYS", "LoadedTrace", "ints_of", "load_trace", "parse_export"]
_trace_id, _span_id, _parent_id = attrgetter("trace_id"), attrgetter("span_id"), attrgetter("parent_span_id")
_start, _end, _links, _raw_events = attrgetter("start_ns"), attrgetter("end_ns"), attrgetter("links"), attrgetter("raw_events")


class _Scope(Struct):
    name: str = ""


class _ScopeSpans(Struct):
    scope: _Scope = field(default_factory=_Scope)
    spans: list[Span] = []


class _Resource(Struct):
    attributes: list[KeyValue] = []


class _ResourceSpans(Struct):
    resource: _Resource = field(default_factory=_Resource)
    scopeSpans: list[_ScopeSpans] = []


class _Request(Struct):
    resourceSpans: list[_ResourceSpans]


_decoder = msgspec.json.Decoder(_Request)

# Keys most traces never carry, each costing the model a look at every span when it might be
# there: the loader says which ones the whole file lacks (one scan of its bytes each).
RARE_KEYS = (EXTERNAL_ID,)


@dataclass
class LoadedTrace(TraceFile):
    absent_keys: frozenset[str] = frozenset()  # keys no span of the file carries (of RARE_KEYS)


def _spans(message: _Request) -> list[Span]:
    out: list[Span] = []
    groups: list[tuple[dict, str, list[Span]]] = []
    for resource_spans in message.resourceSpans:
        resource = typed_attributes(resource_spans.resource.attributes)
        check_schema_version(resource)  # once per resource (a process's batch of spans), not per span
        for scope_spans in resource_spans.scopeSpans:
            groups.append((resource, scope_spans.scope.name, scope_spans.spans))
            out.extend(scope_spans.spans)
    starts, ends = iter(ints_of(list(map(_start, out)))), iter(ints_of(list(map(_end, out))))
    for resource, scope, spans in groups:
        for span, start, end in zip(spans, starts, ends):  # zip takes no more than `spans` holds
            span.resource = resource
            span.scope = scope
            span.start_ns = start
            span.end_ns = end
    if "" in map(_parent_id, out):
        for span in out:
            if span.parent_span_id == "":
                span.parent_span_id = None
    if any(map(_raw_events, out)):  # rare; a bad time rejects the line, as the reference reader does
        for span in out:
            for event in span.raw_events:
                int(event.timeUnixNano)
    links = list(chain.from_iterable(map(_links, out)))
    if not (canonical_hex(list(map(_trace_id, out)), 32) and canonical_hex(list(map(_span_id, out)), 16)
            and canonical_hex([p for p in map(_parent_id, out) if p is not None])
            and canonical_hex(list(map(_trace_id, links)), 32) and canonical_hex(list(map(_span_id, links)), 16)):
        raise ValueError("ids not in canonical hex")
    return out


def parse_export(line: bytes | memoryview) -> list[Union[Span, SpanRecord]]:
    """The spans of one OTLP/JSON ExportTraceServiceRequest (a line of a trace file, or one
    export a live server posted); raises ValueError (or a msgspec error) on a line neither the
    typed schema nor the reference reader can read, SchemaVersionError on a newer schema."""
    try:
        return _spans(_decoder.decode(line))
    except SchemaVersionError:
        raise
    except (msgspec.ValidationError, ValueError):
        # Not our typed shape: let the reference reader decide (it raises on real garbage).
        message = msgspec.json.decode(line)
        if not isinstance(message, dict) or "resourceSpans" not in message:
            raise ValueError("not an ExportTraceServiceRequest (no resourceSpans)") from None
        return parse_request(message)


_parse_line = parse_export  # its earlier name (tests/test_tui_listen.py reads it)


def load_trace(path: str | Path) -> LoadedTrace:
    """All readable spans of an OTLP/JSON-lines file, sorted by start; bad lines listed in `skipped`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trace file at {path}")
    if path.is_dir():
        raise TraceFileError(f"{path} is a directory, not a trace file")
    spans: list[Union[Span, SpanRecord]] = []
    skipped: list[SkippedLine] = []
    data = path.read_bytes()
    absent_keys = keys_absent_from(data, RARE_KEYS)
    with gc_paused():
        for number, last_byte, line in lines_of(data):
            try:
                spans.extend(parse_export(line))
            except SchemaVersionError:
                raise
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, msgspec.DecodeError) as exc:
                if not bytes(line).strip():  # a blank line: nothing to read, nothing to report
                    continue
                truncated = last_byte != b"\n"
                reason = "truncated last line" if truncated else f"{type(exc).__name__}: {exc}"
                skipped.append(SkippedLine(number, reason))
    # By start, longest first on ties: two stable sorts, cheaper than a tuple key per span.
    spans.sort(key=attrgetter("end_ns"), reverse=True)
    spans.sort(key=_start)
    return LoadedTrace(spans, skipped, str(path), absent_keys)

