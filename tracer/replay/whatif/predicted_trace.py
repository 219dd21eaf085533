"""A timed replay written as a servetrace trace (OTLP/JSON lines) the explorer opens as any other:
one trace per request rooted at its enqueue hop, one per step rooted at the step hop with the
batch on its schedule child, linked to the requests it ran. Its resource says the clock it carries
(servetrace.clock: "predicted" for whatif), and the explorer labels its time columns by it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tracer.catalog.hops import load_catalog
from tracer.replay.whatif.clock import TimedLog
from tracer.traces.schema import (
    BATCH_IDS, BATCH_PREEMPTED, BATCH_SIZE, BATCH_TOKENS, BATCH_TOTAL, CLOCK, ENGINE, ENGINE_MODE, ENGINE_VERSION, FINISH_REASONS,
    INPUT_TOKENS,
    LINK_KIND, LINK_REQUEST, OUTPUT_TOKENS, REQUEST_ID, SCHEMA_VERSION, SCHEMA_VERSION_KEY, SERVICE_NAME, STEP,
)

WHATIF_SCOPE = "servetrace-whatif"  # the instrumentation scope its spans name (the tracer's is "servetrace")


def _value(value: Any) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attributes: dict) -> list[dict]:
    return [{"key": k, "value": _value(v)} for k, v in attributes.items() if v is not None]


def _id(text: str, hex_len: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:hex_len]


def engine_and_mode(label: str) -> tuple[str, str | None]:
    """The catalog engine and mode a replay's engine label names: 'mini-sglang' is our engine in mode
    sglang (engines.mini.modes.sglang), so the trace is explained with SGLang's logic, as our mode's own."""
    catalog = load_catalog()
    for name, spec in catalog.engines.items():
        for mode, found in spec.modes.items():
            if found.label == label:
                return name, mode
    return label.split("-")[0], None


def write_predicted_trace(log: TimedLog, path: str | Path, prompt_lens: dict[str, int], origin_ns: int,
                          label: str, engine_version: str | None = None) -> Path:
    """origin_ns: the wall time the run's second 0 maps to (the trace's first arrival)."""
    catalog = load_catalog()
    (enqueue,) = [h for h in catalog.with_role("enqueue")]
    (step_root,) = [h for h in catalog.with_role("step_root")]
    (schedule,) = [h for h in catalog.with_role("batch")]
    ns = lambda s: str(origin_ns + int(round(s * 1e9)))  # noqa: E731
    engine, mode = engine_and_mode(log.engine)
    # The mode rides on the spans, as the tracer stamps a mode target's (tracer/instrument/spans.py).
    stamp = {ENGINE_MODE: mode}
    spans, roots = [], {}
    finished = {rid for step in log.steps for rid in step.finished}  # forced outputs: each ends by length
    for rid, arrival in log.arrivals_s.items():
        times = log.token_times_s.get(rid) or [arrival]
        trace_id, span_id = _id(f"{label}:{rid}", 32), _id(f"{label}:{rid}:root", 16)
        roots[rid] = (trace_id, span_id)
        spans.append({"traceId": trace_id, "spanId": span_id, "name": enqueue, "kind": 1,
                      "startTimeUnixNano": ns(arrival), "endTimeUnixNano": ns(times[-1]),
                      "attributes": _attributes({REQUEST_ID: rid, INPUT_TOKENS: prompt_lens.get(rid),
                                                 OUTPUT_TOKENS: len(log.token_times_s.get(rid) or []),
                                                 FINISH_REASONS: ["length"] if rid in finished else None, **stamp})})
    for index, step in enumerate(log.steps):
        trace_id = _id(f"{label}:step:{index}", 32)
        root_id, child_id = _id(f"{label}:step:{index}:root", 16), _id(f"{label}:step:{index}:schedule", 16)
        ids = list(step.scheduled)
        links = [{"traceId": roots[r][0], "spanId": roots[r][1], "attributes": _attributes({LINK_KIND: LINK_REQUEST})}
                 for r in ids if r in roots]
        batch = {STEP: index, BATCH_IDS: ids, BATCH_TOKENS: [step.scheduled[r] for r in ids],
                 BATCH_TOTAL: sum(step.scheduled.values()), BATCH_SIZE: len(ids), BATCH_PREEMPTED: step.preempted}
        spans.append({"traceId": trace_id, "spanId": root_id, "name": step_root, "kind": 1, "links": links,
                      "startTimeUnixNano": ns(step.start_s), "endTimeUnixNano": ns(step.end_s),
                      "attributes": _attributes({STEP: index, **stamp})})
        spans.append({"traceId": trace_id, "spanId": child_id, "parentSpanId": root_id, "name": schedule, "kind": 1,
                      "startTimeUnixNano": ns(step.start_s), "endTimeUnixNano": ns(step.start_s),
                      "attributes": _attributes({**batch, **stamp})})
    resource = {SERVICE_NAME: f"servetrace-whatif-{label}", ENGINE: engine,
                ENGINE_VERSION: engine_version, SCHEMA_VERSION_KEY: SCHEMA_VERSION, CLOCK: "predicted", "process.pid": 0}
    path = Path(path)
    with path.open("w") as handle:
        for start in range(0, len(spans), 1000):
            message = {"resourceSpans": [{"resource": {"attributes": _attributes(resource)},
                                          "scopeSpans": [{"scope": {"name": WHATIF_SCOPE},
                                                          "spans": spans[start:start + 1000]}]}]}
            handle.write(json.dumps(message, separators=(",", ":")) + "\n")
    return path
