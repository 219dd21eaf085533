"""Traces carry their schema version on the resource (servetrace.schema.version); both readers
(the reference reader and the explorer's loader) open version 1 (no key: every trace written
before it existed) and the current version, and refuse a newer one with one clear message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracer.cli import main
from tracer.traces.schema import REQUEST_ID, SCHEMA_VERSION, SCHEMA_VERSION_KEY
from tracer.traces.trace_file import SchemaVersionError, read_trace_file
from tracer.tui.loader import load_trace
from tracer.tui.model import build_model

READERS = {"reference": read_trace_file, "explorer": load_trace}


def _line(version: int | None) -> str:
    resource = [{"key": "service.name", "value": {"stringValue": "servetrace-mini"}}]
    if version is not None:
        resource.append({"key": SCHEMA_VERSION_KEY, "value": {"intValue": str(version)}})
    span = {"traceId": "0" * 31 + "1", "spanId": "0" * 15 + "1", "name": "http.request", "kind": 2,
            "startTimeUnixNano": "1000", "endTimeUnixNano": "2000",
            "attributes": [{"key": REQUEST_ID, "value": {"stringValue": "r1"}}]}
    return json.dumps({"resourceSpans": [{"resource": {"attributes": resource},
                                          "scopeSpans": [{"scope": {"name": "servetrace"}, "spans": [span]}]}]})


def _trace(tmp_path: Path, *versions: int | None) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(_line(v) + "\n" for v in versions))
    return path


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("version", [None, 1, SCHEMA_VERSION])
def test_a_trace_of_version_1_or_the_current_version_opens(tmp_path, reader, version):
    trace = READERS[reader](_trace(tmp_path, version))
    assert [s.name for s in trace.spans] == ["http.request"] and trace.skipped == []
    if reader == "explorer":
        assert list(build_model(trace).requests) == ["r1"]


@pytest.mark.parametrize("reader", READERS)
def test_a_newer_schema_version_is_refused_naming_both_versions(tmp_path, reader):
    # One newer line among readable ones refuses the file: showing the rest would mislead.
    path = _trace(tmp_path, None, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError) as refused:
        READERS[reader](path)
    assert f"version {SCHEMA_VERSION + 1}" in str(refused.value)
    assert f"1 to {SCHEMA_VERSION}" in str(refused.value) and "newer servetrace" in str(refused.value)


def test_the_explorer_command_says_why_it_will_not_open_a_newer_trace(tmp_path, capsys):
    path = _trace(tmp_path, SCHEMA_VERSION + 1)
    assert main(["tui", "--summary", str(path)]) == 2
    assert f"schema version {SCHEMA_VERSION + 1}" in capsys.readouterr().err
