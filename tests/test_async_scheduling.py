"""Async scheduling (AsyncScheduler + the batch queue) against the synchronous engine.

vLLM 0.33's default schedules step N+1 while step N runs, with an output placeholder for the
token N samples. Whatever that reorders, greedy output in fp32 must be token for token the
synchronous engine's: batched, under preemption in a tiny KV pool, with a stop string and an
abort. The placeholder counters are checked after every step against the steps in flight.
"""
from __future__ import annotations

import pytest

from engine.async_scheduler import AsyncScheduler
from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.request import RequestStatus
from engine.sampling_params import SamplingParams
from tests.engine_checks import abort_in_flight_and_finish, assert_pool_empty, in_flight, preemptions
from tests.test_engine import PROMPTS

MAX_TOKENS = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


# 9 usable blocks of 16 tokens cannot hold all eight requests' prompts and outputs at once, and a
# budget of 32 tokens cuts the long prompts into chunks: preemption and chunked prefill in every run.
def make_engine(async_scheduling: bool, num_blocks: int = 10, max_batched: int = 32) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=ModelConfig(dtype="float32"),  # the promise: identical greedy output in fp32
            cache=CacheConfig(block_size=16, num_blocks=num_blocks),
            scheduler=SchedulerConfig(
                max_num_seqs=8, max_num_batched_tokens=max_batched, max_model_len=512, async_scheduling=async_scheduling
            ),
        )
    )


@pytest.fixture(scope="module")
def sync_engine() -> LLMEngine:
    return make_engine(False)


@pytest.fixture(scope="module")
def async_engine() -> LLMEngine:
    engine = make_engine(True)
    assert isinstance(engine.scheduler, AsyncScheduler) and engine.batch_queue is not None
    return engine


def assert_placeholders_match_steps_in_flight(engine: LLMEngine) -> None:
    """A request's placeholders are the steps in flight that sample for it; its in-flight tokens
    are what those steps scheduled; a decoding request counts its placeholders as computed."""
    steps = in_flight(engine)
    for request in list(engine.scheduler.running) + list(engine.scheduler.waiting):
        scheduled = [so.num_scheduled_tokens[request.request_id] for so in steps if request.request_id in so.num_scheduled_tokens]
        assert request.num_in_flight_tokens == sum(scheduled), request.request_id
        if request.status == RequestStatus.PREEMPTED:
            assert request.num_output_placeholders == 0
            assert request.num_stale_output_tokens == request.num_in_flight_tokens
            continue
        assert request.num_stale_output_tokens == 0
        known = request.num_tokens + request.num_output_placeholders
        assert request.num_computed_tokens <= known
        # Every step in flight that reached the end of the known tokens samples one token.
        assert request.num_output_placeholders <= len(scheduled) <= 2
        if request.num_computed_tokens == known and scheduled:
            assert request.num_output_placeholders >= 1, request.request_id


def test_batched_greedy_with_preemption_equals_the_synchronous_engine(sync_engine, async_engine):
    expected = [(o.output_token_ids, o.finish_reason) for o in sync_engine.generate(PROMPTS, GREEDY)]
    assert {reason for _, reason in expected} == {"stop", "length"}  # an EOS stop among them
    engine = async_engine
    final = {}
    with preemptions(engine) as preempted_in_flight:
        rids = [engine.add_request(None, engine.render(p), GREEDY).request_id for p in PROMPTS]
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    final[out.request_id] = out
            assert_placeholders_match_steps_in_flight(engine)
    assert preempted_in_flight, "the pool was meant to be too small to run everything at once"
    # Preempted with a step of theirs in flight: that output arrives stale and is kept.
    assert any(n > 0 for n in preempted_in_flight)
    assert [(final[rid].output_token_ids, final[rid].finish_reason) for rid in rids] == expected
    assert_pool_empty(engine)


def test_placeholders_step_by_step(async_engine):
    engine = async_engine
    for i, prompt in enumerate(PROMPTS[:4]):
        engine.add_request(f"ph-{i}", engine.render(prompt), GREEDY)
    calls = outputs_seen = 0
    max_placeholders = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        calls += 1
        outputs_seen += bool(outputs)
        assert len(engine.batch_queue) <= 2
        assert_placeholders_match_steps_in_flight(engine)
        max_placeholders = max([max_placeholders] + [r.num_output_placeholders for r in engine.scheduler.running])
    # The first call only schedules; after it, every call schedules one step and applies one.
    assert calls > outputs_seen
    assert max_placeholders == 1  # one step of lookahead, one sampled token per step
    assert_pool_empty(engine)


def test_max_tokens_wastes_no_step_but_a_stop_token_does(sync_engine, async_engine):
    prompt = sync_engine.render("The capital of France is")

    def times_scheduled(engine: LLMEngine, params: SamplingParams) -> tuple[int, list[int]]:
        count = 0
        original = engine.scheduler.schedule

        def spy():
            nonlocal count
            out = original()
            count += "one" in out.num_scheduled_tokens
            return out

        engine.scheduler.schedule = spy
        try:
            engine.add_request("one", prompt, params)
            tokens: list[int] = []
            while engine.has_unfinished_requests():
                tokens += [t for o in engine.step() for t in o.new_token_ids]
        finally:
            del engine.scheduler.schedule
        return count, tokens

    sync_count, sync_tokens = times_scheduled(sync_engine, SamplingParams(temperature=0, max_tokens=6))
    async_count, async_tokens = times_scheduled(async_engine, SamplingParams(temperature=0, max_tokens=6))
    assert async_tokens == sync_tokens and async_count == sync_count == 6
    # Stop on the third token: the step after it was scheduled before the stop was seen, and is dropped.
    stop = SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[sync_tokens[2]])
    sync_count, sync_stopped = times_scheduled(sync_engine, stop)
    async_count, async_stopped = times_scheduled(async_engine, stop)
    assert async_stopped == sync_stopped == sync_tokens[:3]
    assert (sync_count, async_count) == (3, 4)
    assert_pool_empty(async_engine)


def test_stop_string_is_handled_one_step_late_with_the_same_text(sync_engine, async_engine):
    params = SamplingParams(temperature=0, max_tokens=12, stop=[" 6"])
    expected = sync_engine.generate("Count: 1, 2, 3, 4,", params)[0]
    out = async_engine.generate("Count: 1, 2, 3, 4,", params)[0]
    assert (out.text, out.finish_reason, out.stop_reason) == (expected.text, "stop", " 6")
    assert out.output_token_ids == expected.output_token_ids
    assert_pool_empty(async_engine)


def test_abort_with_a_step_in_flight_drops_its_output_and_frees_blocks(async_engine):
    engine = async_engine
    engine.add_request("to-abort", engine.render("A long story about dragons"), SamplingParams(max_tokens=50))
    engine.add_request("stays", engine.render("A short poem"), SamplingParams(temperature=0, max_tokens=8))
    finished = abort_in_flight_and_finish(engine, "to-abort", lambda step: "to-abort" in step.num_scheduled_tokens)
    assert list(finished) == ["stays"] and len(finished["stays"].output_token_ids) == 8
    assert_pool_empty(engine)


def test_structured_requests_beside_free_ones_give_the_synchronous_output(sync_engine, async_engine):
    # A structured request's bitmask (and jump-forward) needs its tokens: the batch queue applies the
    # step in flight before scheduling one with such a request running (vLLM defers its sampling).
    from engine.structured_output import StructuredOutputsParams

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    params = [SamplingParams(temperature=0, max_tokens=24, structured_outputs=StructuredOutputsParams(json=schema)),
              SamplingParams(temperature=0, max_tokens=24, structured_outputs=StructuredOutputsParams(choice=["yes", "no"])),
              GREEDY]
    prompts = ["A person as JSON:", "Is the sky blue? Answer yes or no:", PROMPTS[1]]
    expected = [(o.output_token_ids, o.finish_reason) for o in sync_engine.generate(prompts, params)]
    assert [(o.output_token_ids, o.finish_reason) for o in async_engine.generate(prompts, params)] == expected
    assert_pool_empty(async_engine)
