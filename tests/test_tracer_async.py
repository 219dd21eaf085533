"""Our engine with async scheduling, traced: the schedule of step N+1 overlaps the forward of step N.

Each LLMEngine.step call is one step trace. Under async scheduling a call schedules step N+1 and
hands its model execution to the batch queue's model thread, then applies step N's output; the
model.execute span of N+1 nests in the trace of the call that scheduled it and outlives it. The
schedule span of N+1 links (servetrace.link overlap) to the model.execute of N running as it
began, and names that step (servetrace.step.overlaps_step).
"""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tracer.instrument import tracing
from tracer.traces.schema import (
    LINK_KIND, LINK_OVERLAP, OVERLAPS_STEP, PLACEHOLDER_REQUESTS_IN_FLIGHT, PLACEHOLDERS_ADDED, STEP, WAITED_STEP,
)
from tracer.traces.trace_file import read_trace_file
from tracer.tui.model import build_model

PROMPTS = ["The capital of France is", "Write a short story about bees."]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def async_engine():
    return LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256, async_scheduling=True),
    ))


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory, async_engine):
    engine = async_engine
    path = tmp_path_factory.mktemp("mini-async") / "trace.jsonl"
    with tracing.traced("mini", path):
        outputs = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    return path, read_trace_file(path), outputs


def test_every_scheduled_step_has_one_model_execution_in_the_trace_that_scheduled_it(traced_run):
    _, trace, _ = traced_run
    schedules = {s.attributes[STEP]: s for s in trace.named("scheduler.schedule") if s.attributes.get("servetrace.batch.total_tokens")}
    executes = {s.attributes[STEP]: s for s in trace.named("model.execute")}
    assert set(executes) == set(schedules) and len(executes) == MAX_TOKENS  # one prefill step, then decodes
    for step, execute in executes.items():
        assert execute.trace_id == schedules[step].trace_id
        assert execute.start_ns >= schedules[step].end_ns
    # The forward and the sample run on the queue's worker, often after their step has ended: they
    # are still written, inside the model.execute of their step.
    for name in ("model.forward", "sampler.sample"):
        parts = trace.named(name)
        assert len(parts) == MAX_TOKENS, name
        assert {p.parent_span_id for p in parts} == {e.span_id for e in executes.values()}, name


def test_the_schedule_of_step_n_plus_1_overlaps_and_links_the_forward_of_step_n(traced_run):
    _, trace, _ = traced_run
    by_span_id = {s.span_id: s for s in trace.spans}
    executes = {s.attributes[STEP]: s for s in trace.named("model.execute")}
    overlapped = 0
    for schedule in trace.named("scheduler.schedule"):
        links = [link for link in schedule.links if link.attributes.get(LINK_KIND) == LINK_OVERLAP]
        if not links:
            assert OVERLAPS_STEP not in schedule.attributes
            continue
        (link,) = links
        execute = by_span_id[link.span_id]
        assert execute.name == "model.execute"
        assert schedule.attributes[OVERLAPS_STEP] == execute.attributes[STEP] == schedule.attributes[STEP] - 1
        # In time: the schedule began while that execution ran.
        assert execute.start_ns <= schedule.start_ns <= execute.end_ns
        overlapped += 1
    # Every schedule after the first (the empty ones at the end included) may begin while the step
    # before it runs; the first has nothing to overlap.
    assert 1 <= overlapped <= len(trace.named("scheduler.schedule")) - 1
    assert len(executes) == MAX_TOKENS


def test_the_explorer_reads_the_async_trace_and_keeps_batches_to_requests(traced_run):
    _, trace, outputs = traced_run
    model = build_model(trace)
    assert set(model.requests) >= {o.request_id for o in outputs}
    for step in model.steps:
        assert set(step.request_ids) <= set(model.requests), "an overlap link was taken for a request"


def test_the_waterfall_names_the_step_a_schedule_overlaps(traced_run):
    from tracer.tui.tables import hop_text
    from tracer.tui.timeline import build_waterfall

    _, trace, outputs = traced_run
    model = build_model(trace)
    waterfall = build_waterfall(model, model.requests[outputs[0].request_id])
    marked = [row for row in waterfall.rows if OVERLAPS_STEP in row.span.attributes]
    assert marked, "no schedule row of the request's steps overlaps a forward"
    for row in marked:
        assert hop_text(row.span) == f"scheduler.schedule \u2225 step {row.span.attributes[OVERLAPS_STEP]}"
    # Drawn in time: the execution it overlaps starts before the schedule and ends after it began.
    rows = waterfall.rows
    for row in marked:
        earlier = [r for r in rows[: rows.index(row)] if r.span.name == "model.execute"]
        assert earlier and earlier[-1].span.end_ns >= row.span.start_ns


def test_each_schedule_reserves_placeholders_and_each_applied_step_was_waited_on(traced_run):
    # overlap.placeholders (AsyncScheduler._update_after_schedule) nests in every schedule; the
    # prefill reserves one placeholder per request, each decode one more while the step before it
    # is still in flight. overlap.wait (BatchQueue._apply_oldest) nests in the engine step that
    # applied a step, holds that step's scheduler.update, and names the step it waited on: the one
    # scheduled by the call before (the queue holds two).
    _, trace, _ = traced_run
    by_id = {s.span_id: s for s in trace.spans}
    schedules = {s.attributes[STEP]: s for s in trace.named("scheduler.schedule")}
    placeholders = {s.attributes[STEP]: s for s in trace.named("overlap.placeholders")}
    assert set(placeholders) == set(schedules)
    for step, span in placeholders.items():
        assert by_id[span.parent_span_id] is schedules[step]
    decoding = [s for s in placeholders.values() if s.attributes[PLACEHOLDERS_ADDED]]
    assert len(decoding) == MAX_TOKENS and all(s.attributes[PLACEHOLDERS_ADDED] == len(PROMPTS) for s in decoding)
    assert [s.attributes[PLACEHOLDER_REQUESTS_IN_FLIGHT] for s in decoding] == [0] + [len(PROMPTS)] * (MAX_TOKENS - 1)
    waits = trace.named("overlap.wait")
    assert sorted(w.attributes[WAITED_STEP] for w in waits) == sorted(schedules)
    for wait in waits:
        assert by_id[wait.parent_span_id].name == "engine.step"
        updates = [s for s in trace.spans if s.parent_span_id == wait.span_id and s.name == "scheduler.update"]
        assert len(updates) == 1
        scheduled_beside = [s for s in trace.spans if s.trace_id == wait.trace_id and s.name == "scheduler.schedule"]
        if scheduled_beside:  # a call that scheduled before it waited: the step it waited on came one call earlier
            assert scheduled_beside[0].attributes[STEP] == wait.attributes[WAITED_STEP] + 1


@pytest.fixture(scope="module")
def staggered_trace(tmp_path_factory, async_engine):
    """Two requests that finish at different steps, through the async engine, traced."""
    path = tmp_path_factory.mktemp("mini-async-staggered") / "trace.jsonl"
    with tracing.traced("mini", path):
        for rid, prompt, max_tokens in (("short", "Name a colour.", 2), ("long", "Count to ten, slowly.", 5)):
            async_engine.add_request(rid, async_engine.render(prompt), SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        while async_engine.has_unfinished_requests():
            async_engine.step()
    return path


def test_replay_from_trace_of_an_async_run_drives_the_async_scheduler_pair(staggered_trace, tmp_path):
    # The trace records the setting (servetrace.config.async_scheduling): replay --from-trace drives
    # vLLM 0.33's AsyncScheduler and ours in step_with_batch_queue's order, and both agree with the
    # engine's own steps: a finish is applied one call after its step was scheduled.
    import json

    from tracer.replay.from_trace import load_replayable, replay_config, replay_from_trace
    from tracer.replay.runners.base import drive
    from tracer.replay.runners.mini import MiniRunner
    from tracer.replay.trace_compare import compare_with_trace

    run = load_replayable(staggered_trace)
    assert run.async_scheduling and replay_config(run).async_scheduling
    result = replay_from_trace(staggered_trace, ["mini", "vllm"], tmp_path / "out", run=run)
    assert [c.engine for c in result.comparisons] == ["mini", "vllm-0.33.0"]
    assert result.agree, [c.to_json() for c in result.comparisons]
    assert json.loads((tmp_path / "out" / "compare-trace.json").read_text())["config"]["async_scheduling"] is True
    # The synchronous order (what --from-trace drove before) reports the short request's finish a
    # step early: the comparison catches it.
    synchronous = compare_with_trace("mini", drive(MiniRunner(run.config), run.workload), run.steps)
    assert not synchronous.agree and synchronous.divergence.fields == ["finished"]
