"""`servetrace explain` names grammar-compile: a constrained request waits in
WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR while its grammar compiles, beside other requests or alone."""
from __future__ import annotations

from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file


def explain_behind_a_slow_compile(path, monkeypatch, prompts: list[str], params: list):
    """prompts through the shared engine, traced to path, with every grammar compile planted to last
    until the engine has run three more steps; returns the trace's timeline, the last request's
    output (the constrained one) and explain's split of its time."""
    import time

    from tests.test_server import shared_engine
    from tracer.instrument import tracing

    engine = shared_engine()
    backend = engine.structured_output_manager.backend
    compile_now, first_step = backend.compile, engine.scheduler.current_step

    def slow_compile(*key):
        while engine.scheduler.current_step < first_step + 3:
            time.sleep(0.005)
        return compile_now(*key)

    monkeypatch.setattr(backend, "compile", slow_compile)
    with tracing.traced("mini", path):
        constrained = engine.generate(prompts, params)[-1]
    timeline = read_timeline(read_trace_file(path).spans)
    return timeline, constrained, split_time(timeline, timeline.find(constrained.request_id))


def test_a_request_waiting_on_a_slow_grammar_compile_is_named(tmp_path, monkeypatch):
    """Structured output (issue 22): a request waits in WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR while its
    grammar compiles on a compile thread. The compile is planted to last three engine steps of
    another request; in each of them the constrained request heads the queue, waiting on it."""
    from engine.sampling_params import SamplingParams
    from engine.structured_output import StructuredOutputsParams

    params = [SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=2, structured_outputs=StructuredOutputsParams(regex=r"[x-z]{2}-slow"))]
    _, _, split = explain_behind_a_slow_compile(tmp_path / "grammar.jsonl", monkeypatch, ["Tell me a story.", "A code:"], params)
    waits = [n for n in split.steps if n.what == "waiting: grammar-compile"]
    assert len(waits) >= 2 and "WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR" in waits[0].detail, [vars(n) for n in split.steps]
    assert split.parts.get("waiting: grammar-compile", 0) > 0 and split.residual_ms <= 0.01 * split.wall_ms


def test_a_request_waiting_for_its_grammar_alone_waits_in_the_empty_steps_the_loop_runs(tmp_path, monkeypatch):
    """With nobody else to run, the engine still steps while the grammar compiles (vLLM 0.33's busy loop
    steps while scheduler.has_requests(), core.py:1608-1614, and each step schedules, core.py:675-677):
    those steps schedule nobody, so their traces link to no request, and explain reads them as the
    constrained request's waiting, for grammar-compile, instead of one uncaused gap."""
    from engine.sampling_params import SamplingParams
    from engine.structured_output import StructuredOutputsParams

    path = tmp_path / "grammar-alone.jsonl"
    params = SamplingParams(temperature=0, max_tokens=2, structured_outputs=StructuredOutputsParams(regex=r"[x-z]{2}-alone"))
    timeline, constrained, split = explain_behind_a_slow_compile(path, monkeypatch, ["A code:"], [params])  # three empty steps at least
    waits = [n for n in split.steps if n.what == "waiting: grammar-compile"]
    assert len(waits) >= 2 and "WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR" in waits[0].detail, [vars(n) for n in split.steps]
    assert split.parts["waiting: grammar-compile"] > split.parts.get("waiting: for the next step", 0)
    assert split.residual_ms <= 0.01 * split.wall_ms
    # Issue #13's rule: every trace is rooted at a request, or at a step root linking to one. An empty
    # step links to the head it left waiting (kind 'waiting'), so it is no orphan, and the explorer
    # does not count the head as in its batch.
    from tracer.traces import schema
    from tracer.tui.model import build_model

    trace = read_trace_file(path)
    shape = timeline.shape
    # (The compile thread's grammar.compile too: it joins the request's trace even when it begins before
    # the enqueue registered the request, tests/test_compile_span_root.py.)
    assert not shape.orphans, shape.describe_orphans()
    empty = [min(m, key=lambda s: s.start_ns) for m in shape.step_traces.values()
             if any(s.attributes.get(schema.BATCH_IDS) == [] for s in m)]
    assert len(empty) >= 2
    for root in empty:
        assert [(link.attributes.get(schema.LINK_KIND), link.attributes.get(schema.REQUEST_ID)) for link in root.links] == \
            [(schema.LINK_WAITING, constrained.request_id)]
    model = build_model(trace)
    idle = {root.span_id for root in empty}
    idle_steps = [step for step in model.steps if any(s.span_id in idle for s in step.spans)]
    assert len(idle_steps) == len(empty) and all(step.request_ids == [] for step in idle_steps)
