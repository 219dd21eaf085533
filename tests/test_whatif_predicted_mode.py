"""whatif's predicted traces say which engine and mode predicted them: `--engines mini-sglang` is our
engine in the catalog's mode sglang (engines.mini.modes.sglang), so its traces carry
servetrace.engine.mode as our SGLang mode's own do, and explain and the explorer read them with
SGLang's logic under the mode's label, not as plain mini (vLLM's logic)."""
from __future__ import annotations

import pytest

from tracer.replay.whatif.clock import TimedLog, TimedStep
from tracer.replay.whatif.predicted_trace import write_predicted_trace
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file
from tracer.tui.model import build_model


def predicted(tmp_path, engine: str):
    log = TimedLog(engine, "predicted", [TimedStep(0.0, 0.01, {"a": 20}, [], [], []),
                                         TimedStep(0.01, 0.02, {"a": 1, "b": 20}, [], ["a"], [])],
                   {"a": 0.0, "b": 0.005}, {"a": [0.01, 0.02], "b": [0.02]})
    path = write_predicted_trace(log, tmp_path / f"trace-{engine}.jsonl", {"a": 20, "b": 20}, 10**18, f"{engine}-changed")
    return read_trace_file(path)


@pytest.mark.parametrize("engine, expected", [
    ("mini-sglang", ("mini", "sglang", "mini-sglang", "sglang")),
    ("mini", ("mini", "", "mini", "vllm")),
    ("vllm-0.33.0", ("vllm", "", "vllm", "vllm")),
])
def test_a_predicted_trace_names_the_engine_and_mode_that_predicted_it(tmp_path, engine, expected):
    trace = predicted(tmp_path, engine)
    timeline = read_timeline(trace.spans)
    assert (timeline.engine, timeline.mode, timeline.label, timeline.mirrors) == expected
    assert build_model(trace).engine_label == expected[2]
    assert [life.name for life in timeline.requests] == ["a", "b"]
