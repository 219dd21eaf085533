"""The sending side of bench/tui_listen_bench.py, run in a process of its own (`--client PORT`): copies
of a live trace regrouped into protobuf ExportTraceServiceRequests of BATCH_SPANS spans, posted over
one keep-alive HTTP connection at a rate."""
from __future__ import annotations

import base64
import http.client
import json
import re
import sys
import time
from pathlib import Path

BATCH_SPANS = 512
_TIMES = re.compile(rb'"((?:start|end)TimeUnixNano|timeUnixNano)":"(\d+)"')
_IDS = re.compile(rb'"(traceId|spanId|parentSpanId)":"([0-9a-f]+)"')


def _copy(line: bytes, k: int, shift_ns: int, request_ids: re.Pattern[bytes] | None) -> bytes:
    """One line of the sample as copy `k`: ids made unique, clock moved on by k * shift_ns."""
    line = _IDS.sub(lambda m: b'"%s":"%s%s"' % (m[1], b"%08x" % k if m[1] == b"traceId" else b"%04x" % k,
                                                m[2][8 if m[1] == b"traceId" else 4:]), line)
    line = _TIMES.sub(lambda m: b'"%s":"%d"' % (m[1], int(m[2]) + k * shift_ns), line)
    if request_ids is not None:
        line = request_ids.sub(lambda m: b'"%s-c%d"' % (m[1], k), line)
    return line


def _hex_to_base64(node: object) -> None:
    """OTLP/JSON writes ids in hex; protobuf's JSON mapping (ParseDict) wants bytes in base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _hex_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_to_base64(item)


def build_bodies(sample: Path, spans_wanted: int) -> tuple[list[tuple[bytes, int]], int]:
    """Protobuf bodies of about BATCH_SPANS spans each, from copies of the sample; (bodies, spans per copy)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tracer.tui.loader import load_trace
    from tracer.tui.model import build_model

    lines = [line for line in sample.read_bytes().splitlines() if line.strip()]
    model = build_model(load_trace(sample))
    ids = {rid for request in model.requests.values() for rid in request.ids}
    ids |= {rid for step in model.steps for rid in step.request_ids}
    request_ids = re.compile(b'"(' + b"|".join(re.escape(i.encode()) for i in sorted(ids, key=len, reverse=True)) + b')"') if ids else None
    per_copy = len(model.spans)
    shift = max(s.end_ns for s in model.spans) - min(s.start_ns for s in model.spans) + 1
    bodies: list[tuple[bytes, int]] = []
    pending: list[dict] = []
    count = 0
    k = 0
    while len(bodies) * BATCH_SPANS < spans_wanted:
        for line in lines:
            message = json.loads(_copy(line, k, shift, request_ids))
            pending.extend(message["resourceSpans"])
            count += sum(len(ss.get("spans", [])) for rs in message["resourceSpans"] for ss in rs.get("scopeSpans", []))
            if count >= BATCH_SPANS:
                request = {"resourceSpans": pending}
                _hex_to_base64(request)
                bodies.append((json_format.ParseDict(request, ExportTraceServiceRequest()).SerializeToString(), count))
                pending, count = [], 0
        k += 1
    return bodies, per_copy


def client(port: int, sample: Path, rate: float, seconds: float) -> dict:
    """Post bodies at `rate` spans/s for `seconds`; prints one JSON line when ready, one at the end."""
    bodies, per_copy = build_bodies(sample, int(rate * seconds))
    print(json.dumps({"ready": True, "bodies": len(bodies), "spans_per_copy": per_copy}), flush=True)
    sys.stdin.readline()  # go
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/x-protobuf"}
    sent = failed = 0
    start = time.perf_counter()
    for body, spans in bodies:
        due = start + sent / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        connection.request("POST", "/v1/traces", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            sent += spans
        else:
            failed += spans
    elapsed = time.perf_counter() - start
    return {"sent_spans": sent, "failed_spans": failed, "elapsed_s": elapsed, "bodies": len(bodies)}
