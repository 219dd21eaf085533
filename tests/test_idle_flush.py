"""When the engine goes idle, the spans are written out at once, the idle step's own span included
(a server stopped right after its last request must not leave that step's children orphaned)."""
from __future__ import annotations

from tracer.instrument import otel, spans
from tracer.instrument.hop_call import HopCall
from tracer.traces.schema import NUM_RUNNING, NUM_WAITING
from tracer.traces.trace_file import read_trace_file


def test_the_idle_step_is_on_disk_with_its_children_without_waiting_for_the_exporter(tmp_path):
    path = tmp_path / "trace.jsonl"
    otel.configure(trace_file=path, engine="mini")  # a batch exporter: 500 ms between rounds
    try:
        step = HopCall("engine.step", "mini", "step", "step", after=lambda args, result: {NUM_RUNNING: 0, NUM_WAITING: 0},
                       roles=frozenset({"step_root"}))
        child = HopCall("scheduler.update", "mini", "step", "update")
        opened = spans.begin(step, {})
        spans.end(spans.begin(child, {}), {})
        spans.end(opened, {})
        names = sorted(s.name for s in read_trace_file(path).spans)  # read before any flush of ours
    finally:
        otel.shutdown()
    assert names == ["engine.step", "scheduler.update"]
