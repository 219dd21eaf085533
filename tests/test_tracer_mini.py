"""Our engine traced end to end: an offline generate of two requests sharing a prefix.

The engine imports nothing of the tracer; the catalog's hooks alone produce the trace. The
span tree must match the engine's own account of what happened (outputs, cached tokens).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanProcessor

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tracer.instrument import hooks, otel, step_parts, tracing
from tracer.traces.trace_file import read_trace_file

SYSTEM = "You are a careful assistant who answers questions about cooking, briefly and precisely. " * 3
PROMPTS = [SYSTEM + "How long should I boil an egg?", SYSTEM + "What is the best oil for frying?"]
TOKEN_BUDGET = 64
STEP_CHILDREN = {"scheduler.schedule", "model.execute", "scheduler.update"}


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=64, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=TOKEN_BUDGET, max_model_len=256),
    ))


@pytest.fixture(scope="module")
def traced_run(engine, tmp_path_factory):
    path = tmp_path_factory.mktemp("mini") / "trace.jsonl"
    with tracing.traced("mini", path) as report:
        outputs = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    return read_trace_file(path), outputs, report


def test_every_mini_target_was_hooked(traced_run):
    _, _, report = traced_run
    assert report.failed == {} and report.deferred == []
    assert len(report.installed) == len(hooks.load_catalog().targets("mini"))


def test_a_traced_run_whose_body_fails_still_restores_the_engine_and_stops_exporting(engine, tmp_path):
    """tracing.traced tears down whatever the body does: the originals back, no provider left, the
    request roots forgotten, and what was traced before the failure is on disk."""
    from tracer.instrument import otel
    from tracer.instrument.registry import registry

    path = tmp_path / "failed.jsonl"
    with pytest.raises(RuntimeError, match="the body failed"):
        with tracing.traced("mini", path) as report:
            assert report.installed and otel.active_tracer() is not None
            engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
            raise RuntimeError("the body failed")
    assert hooks.installed() == [] and hooks.deferred() == [] and otel.active_tracer() is None
    assert registry.get(next(iter(read_trace_file(path).named("engine.enqueue"))).request_id) is None


def test_each_request_is_one_trace(traced_run):
    trace, outputs, _ = traced_run
    enqueues = {s.request_id: s for s in trace.named("engine.enqueue")}
    assert set(enqueues) == {o.request_id for o in outputs}
    renders = trace.named("request.render")
    assert len(renders) == 2 and len({s.trace_id for s in renders}) == 2
    for output in outputs:
        enqueue = enqueues[output.request_id]
        # Offline, render runs before the request has an id: it starts the trace and the
        # enqueue that follows joins it.
        (render,) = [s for s in renders if s.trace_id == enqueue.trace_id]
        assert render.parent_span_id is None and enqueue.parent_span_id == render.span_id
        assert enqueue.attributes["gen_ai.usage.input_tokens"] == render.attributes["gen_ai.usage.input_tokens"] == len(output.prompt_token_ids)
        assert enqueue.attributes["gen_ai.request.max_tokens"] == 6
        request_spans = [s for s in trace.spans if s.request_id == output.request_id and s.name != "engine.enqueue"]
        assert {s.name for s in request_spans} >= {"kv.match_prefix", "kv.allocate", "kv.free"}
        for span in request_spans:
            assert (span.trace_id, span.parent_span_id) == (render.trace_id, render.span_id), span.name
        # Each step that produced its tokens detokenized them in one batch span linked to it.
        detokenized = [s for s in trace.named("detokenize") if output.request_id in s.attributes["servetrace.batch.request_ids"]]
        assert len(detokenized) == len(output.output_token_ids) == 6
        for span in detokenized:
            assert (render.trace_id, render.span_id) in {(link.trace_id, link.span_id) for link in span.links}
        # The last kv.free reports the finish.
        (free,) = [s for s in request_spans if s.name == "kv.free"]
        assert free.attributes["gen_ai.response.finish_reasons"] == ["length"]
        assert free.attributes["gen_ai.usage.output_tokens"] == 6


def test_the_second_request_hits_the_shared_prefix(traced_run):
    trace, outputs, _ = traced_run
    lookups = {s.request_id: s for s in trace.named("kv.match_prefix")}
    first, second = (lookups[o.request_id] for o in outputs)
    assert first.attributes["servetrace.kv.cached_tokens"] == 0
    cached = second.attributes["servetrace.kv.cached_tokens"]
    assert cached > 0 and cached % 16 == 0
    assert cached == outputs[1].num_cached_tokens


def test_each_engine_step_is_a_trace_linked_to_its_batch(traced_run):
    trace, outputs, _ = traced_run
    render_of = {e.request_id: next(r for r in trace.named("request.render") if r.trace_id == e.trace_id)
                 for e in trace.named("engine.enqueue")}
    steps = trace.named("engine.step")
    assert len(steps) >= 6 and all(s.parent_span_id is None for s in steps)
    assert len({s.trace_id for s in steps}) == len(steps)
    for step in steps:
        children = [s for s in trace.spans if s.parent_span_id == step.span_id]
        # detokenize is there whenever the step produced tokens (a step that only prefills a chunk has none).
        assert {c.name for c in children} - {"detokenize"} == STEP_CHILDREN
        (update,) = [c for c in children if c.name == "scheduler.update"]
        assert ("detokenize" in {c.name for c in children}) == (update.attributes["servetrace.step.num_outputs"] > 0)
        (execute,) = [c for c in children if c.name == "model.execute"]
        grandchildren = {s.name for s in trace.spans if s.parent_span_id == execute.span_id}
        assert grandchildren == {"model.forward", "sampler.sample"}
        batch = step.attributes["servetrace.batch.request_ids"]
        assert {(link.trace_id, link.span_id) for link in step.links} == {
            (render_of[rid].trace_id, render_of[rid].span_id) for rid in batch}
        assert sum(step.attributes["servetrace.batch.num_scheduled_tokens"]) == step.attributes["servetrace.batch.total_tokens"]
    # The first step prefills both prompts, the second from its cache hit on and only as far
    # as the token budget allows (chunked prefill).
    first = steps[0]
    assert first.attributes["servetrace.batch.num_prefill"] == 2 and first.attributes["servetrace.batch.num_decode"] == 0
    first_prompt = len(outputs[0].prompt_token_ids)
    second_uncached = len(outputs[1].prompt_token_ids) - outputs[1].num_cached_tokens
    assert first.attributes["servetrace.batch.num_scheduled_tokens"] == [first_prompt, min(second_uncached, TOKEN_BUDGET - first_prompt)]
    assert steps[-1].attributes["servetrace.batch.num_decode"] >= 1
    forward_tokens = [s.attributes["servetrace.model.num_tokens"] for s in trace.named("model.forward")]
    assert forward_tokens == [s.attributes["servetrace.batch.total_tokens"] for s in steps]
    # On a CPU there is no CUDA-event timing.
    assert all("servetrace.gpu.forward_ms" not in s.attributes for s in trace.named("model.forward"))


def test_request_spans_inside_a_step_link_back_to_it(traced_run):
    trace, _, _ = traced_run
    step_ids = {s.span_id for s in trace.spans if s.name in ("engine.step", "scheduler.schedule", "scheduler.update")}
    for span in trace.named("kv.allocate") + trace.named("kv.free"):
        step_links = [link for link in span.links if link.attributes.get("servetrace.link") == "step"]
        assert len(step_links) == 1 and step_links[0].span_id in step_ids


def test_the_parts_of_a_step_keep_their_own_times(traced_run):
    """The step's parts are created with the step's end (tracer.instrument.step_parts), yet each
    span has the times of its own call: nested in its parent's, in the order the engine ran them."""
    trace, _, _ = traced_run
    by_id = {s.span_id: s for s in trace.spans}
    for step in trace.named("engine.step"):
        parts = {s.name: s for s in trace.spans if s.trace_id == step.trace_id and s.span_id != step.span_id}
        for part in parts.values():
            parent = by_id[part.parent_span_id]
            assert parent.start_ns <= part.start_ns < part.end_ns <= parent.end_ns
        order = [parts[name] for name in ("scheduler.schedule", "model.forward", "sampler.sample", "scheduler.update")]
        assert all(a.end_ns <= b.start_ns for a, b in zip(order, order[1:]))


@settings(max_examples=60, deadline=None)
@given(new_blocks=st.sampled_from([None, [], [0], [0, 1]]), num_new_computed=st.sampled_from([None, 0, 16]))
def test_an_allocation_ends_dropped_exactly_when_its_after_extractor_marks_it_drop(engine, new_blocks, num_new_computed):
    """kv.allocate's DROP_IF (asked before the after-extractor, so a dropped span costs no extractor)
    drops what the after-extractor's DROP drops, and nothing else: no allocation span is lost."""
    from tracer.instrument.extractors import mini
    from tracer.traces.schema import DROP

    manager = engine.scheduler.kv_cache_manager
    blocks = None if new_blocks is None else [manager.block_pool.blocks[i] for i in new_blocks]
    args = {"self": manager, "request": None, "num_new_tokens": 1}
    if num_new_computed is not None:
        args["num_new_computed_tokens"] = num_new_computed
    assert mini.DROP_IF["kv.allocate"](args, blocks) == bool(mini.allocate_after(args, blocks).get(DROP))


@settings(max_examples=15, deadline=None)
@given(prompt_lengths=st.lists(st.integers(1, 120), min_size=1, max_size=6), max_tokens=st.integers(1, 40),
       repeat_prefix=st.booleans())
def test_an_allocation_is_skipped_before_the_call_only_where_it_would_end_dropped(engine, prompt_lengths, max_tokens,
                                                                                  repeat_prefix):
    """kv.allocate's SKIP_IF (asked with the call's arguments, before it runs: a skipped call opens no
    span at all) says True only of calls whose result DROP_IF then drops, on the engine's own calls
    (chunked prefill, prefix hits, decode, preemption in a 64-block pool); and it does skip decode
    steps that fit their last block, the common case it is for."""
    from tracer.instrument.extractors import mini

    manager = engine.scheduler.kv_cache_manager
    allocate, verdicts = manager.allocate_slots, []

    def checked(request, num_new_tokens, *rest, **kwargs):
        args = {"self": manager, "request": request, "num_new_tokens": num_new_tokens, **kwargs}
        args.update(zip(("num_new_computed_tokens", "new_computed_blocks", "num_lookahead_tokens", "full_sequence_must_fit"), rest))
        skipped = mini.SKIP_IF["kv.allocate"](args)
        result = allocate(request, num_new_tokens, *rest, **kwargs)
        verdicts.append((skipped, mini.DROP_IF["kv.allocate"](args, result)))
        return result

    base = list(range(7, 7 + 120))
    prompts = [(base if repeat_prefix else list(range(i * 131, i * 131 + 120)))[:n] for i, n in enumerate(prompt_lengths)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager, "allocate_slots", checked)
        engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    assert verdicts and all(dropped for skipped, dropped in verdicts if skipped)
    if max_tokens > 16:  # some decode step fits its block: it was skipped
        assert any(skipped for skipped, _ in verdicts)


def test_the_allocations_written_are_those_that_took_blocks(traced_run):
    """Decode steps that fit their last block leave no kv.allocate span; every other allocation does."""
    trace, outputs, _ = traced_run
    allocations = trace.named("kv.allocate")
    assert allocations and all(s.attributes["servetrace.kv.blocks_allocated"] > 0
                               or s.attributes.get("servetrace.kv.num_new_computed_tokens") for s in allocations)
    assert {s.request_id for s in allocations} == {o.request_id for o in outputs}


class _Ended(SpanProcessor):
    """A user's span processor: the names of the spans handed to it as they end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_end(self, span) -> None:
        self.names.append(span.name)


@pytest.mark.parametrize("batch", [True, False], ids=["batching exporter", "a span written as it ends"])
def test_closed_steps_are_created_together_every_steps_held_steps_and_all_at_a_flush(engine, tmp_path, monkeypatch, batch):
    """With a batching exporter, a closed step's spans wait for the pass over STEPS_HELD steps
    (tracer.instrument.step_parts), which the exporter would hold as long anyway; a flush creates
    what waits, and the file then holds every step whole. Without one, each step at its end."""
    monkeypatch.setattr(step_parts, "MAX_HELD_NS", 60 * 10**9)  # the count decides here, not a slow machine
    path = tmp_path / "held.jsonl"
    held = step_parts.STEPS_HELD
    with tracing.traced("mini", path, batch=batch):
        ended = _Ended()
        otel.provider().add_span_processor(ended)
        engine.add_request("held", engine.render(PROMPTS[0]), SamplingParams(temperature=0.0, max_tokens=held + 4, ignore_eos=True))
        for _ in range(held - 1):
            engine.step()
        assert ended.names.count("engine.step") == (0 if batch else held - 1)
        engine.step()
        assert ended.names.count("engine.step") == held
        assert ended.names.count("model.forward") == held
        engine.step()
        assert ended.names.count("engine.step") == (held if batch else held + 1)
        otel.flush()
        assert ended.names.count("engine.step") == held + 1
        while engine.has_unfinished_requests():
            engine.step()
    trace = read_trace_file(path)
    steps = trace.named("engine.step")
    assert len(steps) == held + 4  # one prefill step, then a token a step
    by_id = {s.span_id: s for s in trace.spans}
    for span in trace.spans:  # every part's parent on disk, in its own step's trace
        if span.parent_span_id is not None and span.name != "kv.allocate":
            assert by_id[span.parent_span_id].trace_id == span.trace_id, span.name
    for step in steps:
        assert {s.name for s in trace.spans if s.parent_span_id == step.span_id} >= STEP_CHILDREN
