"""Async scheduling with "ngram_gpu" speculation, as vLLM 0.33 schedules it: the scheduler gives
every sampling request k placeholder drafts and counts 1 + k output placeholders, the model runner
proposes the drafts from the tokens it just sampled and puts them in, and the scheduler learns
the rejections one step late.

Greedy output in fp32 must be token for token transformers' (which the synchronous engine without
speculation equals: tests/test_engine.py, tests/test_spec_decode_engine.py), in a batch under
preemption in an 11-block pool and chunked prefill, on a prefix-cache hit, with a stop string that
falls among accepted drafts and an abort with a step in flight. The scheduler's counters are
checked after every step against what vLLM's AsyncScheduler keeps
(vllm/v1/core/sched/async_scheduler.py:24-49 AsyncScheduler._update_after_schedule,
vllm/v1/core/sched/scheduler.py:2346-2364 Scheduler.update_from_output,
vllm/v1/core/sched/scheduler.py:2744-2769 Scheduler._update_request_with_output), and every output
against the rollback it must cause.
"""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.request import RequestStatus
from engine.sampling_params import SamplingParams
from tests.conftest import oracle_greedy
from tests.engine_checks import abort_in_flight_and_finish, assert_pool_empty, in_flight, preemptions
from tests.test_spec_decode_engine import GREEDY, MAX_TOKENS, PROMPTS

K = 4
SPEC = SpeculativeConfig(method="ngram_gpu", num_speculative_tokens=K, prompt_lookup_min=2, prompt_lookup_max=4)
COUNT = "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9\nCount: 1, 2, 3,"


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    # 11 usable blocks of 16 tokens cannot hold eight requests at once, and a budget of 64 tokens cuts
    # the copy-heavy prompt into prefill chunks: preemption and chunked prefill in the batched run.
    engine = LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"),
        cache=CacheConfig(block_size=16, num_blocks=12),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512, async_scheduling=True),
        speculative=SPEC,
    ))
    engine.scheduler.update_from_output = checked_update(engine)
    return engine


@pytest.fixture(scope="module")
def expected(hf_oracle, engine) -> list[list[int]]:
    return [oracle_greedy(hf_oracle, engine.render(p), MAX_TOKENS) for p in PROMPTS]


def checked_update(engine: LLMEngine):
    """update_from_output, checked: a step's output resolves its 1 + k placeholders and takes its
    rejected drafts off num_computed_tokens (vLLM: num_rejected from the tokens returned)."""
    scheduler = engine.scheduler
    original = scheduler.update_from_output

    def update(scheduler_output, model_runner_output):
        before = {rid: (r.num_computed_tokens, r.num_output_placeholders, r.status) for rid, r in scheduler.requests.items()}
        outputs = original(scheduler_output, model_runner_output)
        index = {rid: i for i, rid in enumerate(model_runner_output.req_ids)}
        for rid in scheduler_output.num_scheduled_tokens:
            request = scheduler.requests.get(rid)
            if rid not in before or request is None:
                continue  # finished before this output arrived, or by it
            computed, placeholders, status = before[rid]
            sampled = model_runner_output.sampled_token_ids[index[rid]]
            drafts = scheduler_output.scheduled_spec_decode_tokens.get(rid, [])
            assert set(drafts) <= {-1}, "under async scheduling the scheduler only ever holds placeholder drafts"
            if status == RequestStatus.PREEMPTED or not sampled:
                # Stale output of a preempted request, or a prefill chunk: no counter moves.
                assert (request.num_computed_tokens, request.num_output_placeholders) == (computed, placeholders)
                continue
            num_rejected = len(drafts) - (len(sampled) - 1)
            assert request.num_computed_tokens == computed - num_rejected, rid
            assert request.num_output_placeholders == placeholders - 1 - len(drafts), rid
        return outputs

    return update


def assert_counts_match_the_step_in_flight(engine: LLMEngine) -> None:
    """After each call one step at most is in flight; a request it samples for counts 1 + its drafts as
    placeholders, all but the last of them as computed, and holds k placeholder drafts for the next."""
    steps = in_flight(engine)
    assert len(steps) <= 1
    step = steps[0] if steps else None
    for request in list(engine.scheduler.running) + list(engine.scheduler.waiting):
        rid = request.request_id
        scheduled = step.num_scheduled_tokens.get(rid, 0) if step else 0
        assert request.num_in_flight_tokens == scheduled, rid
        if request.status == RequestStatus.PREEMPTED:
            assert (request.num_output_placeholders, request.spec_token_ids) == (0, [])
            assert request.num_stale_output_tokens == scheduled
            continue
        if request.status != RequestStatus.RUNNING:
            continue
        if not scheduled or request.is_prefill_chunk:
            assert request.num_output_placeholders == 0, rid
            continue
        drafts = step.scheduled_spec_decode_tokens.get(rid, [])
        assert request.num_output_placeholders == 1 + len(drafts), rid
        assert request.num_computed_tokens + 1 == request.num_tokens + request.num_output_placeholders, rid
        assert request.spec_token_ids == [-1] * K, rid


def run_checked(engine: LLMEngine, prompts: list[str], params: SamplingParams) -> dict:
    final = {}
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", engine.render(prompt), params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
        assert_counts_match_the_step_in_flight(engine)
    return final


def test_batched_greedy_under_preemption_and_chunked_prefill_equals_transformers(engine, expected):
    stats = engine.scheduler.spec_decoding_stats
    accepted_before = stats.num_accepted_tokens
    with preemptions(engine) as preempted_in_flight:
        final = run_checked(engine, PROMPTS * 2, GREEDY)
    assert preempted_in_flight and any(n > 0 for n in preempted_in_flight), "meant to preempt with a step in flight"
    assert [final[f"r{i}"].output_token_ids for i in range(8)] == expected * 2
    assert stats.num_accepted_tokens - accepted_before >= MAX_TOKENS // 2, "the copy-heavy prompt should accept drafts"
    assert_pool_empty(engine)


def test_a_prefix_cache_hit_keeps_the_output(engine, expected):
    engine.generate(PROMPTS[0], GREEDY)
    again = engine.generate(PROMPTS[0], GREEDY)[0]
    assert again.num_cached_tokens >= 16
    assert again.output_token_ids == expected[0]
    assert_pool_empty(engine)


def test_a_stop_string_among_accepted_drafts_ends_where_the_text_first_holds_it(engine, hf_oracle):
    prompt_ids = engine.render(COUNT)
    reference = oracle_greedy(hf_oracle, prompt_ids, 16)
    decode = engine.tokenizer.hf.decode
    # The shortest continuation whose text holds the stop string: where the synchronous engine stops.
    n = next(n for n in range(1, len(reference) + 1) if " 6" in decode(reference[:n]))
    stats = engine.scheduler.spec_decoding_stats
    accepted_before = stats.num_accepted_tokens
    out = engine.generate(COUNT, SamplingParams(temperature=0, max_tokens=16, stop=[" 6"]))[0]
    assert stats.num_accepted_tokens > accepted_before, "the count is meant to be copied from the prompt"
    assert (out.output_token_ids, out.finish_reason, out.stop_reason) == (reference[:n], "stop", " 6")
    assert_pool_empty(engine)


def test_an_abort_with_a_step_in_flight_drops_its_output_and_frees_blocks(engine, expected):
    engine.add_request("to-abort", engine.render(PROMPTS[0]), SamplingParams(max_tokens=50))
    engine.add_request("stays", engine.render(PROMPTS[0]), GREEDY)
    # Aborted once a decode step of it, with placeholder drafts, is in flight.
    finished = abort_in_flight_and_finish(engine, "to-abort", lambda step: step.scheduled_spec_decode_tokens.get("to-abort"))
    assert list(finished) == ["stays"] and finished["stays"].output_token_ids == expected[0]
    assert "to-abort" not in engine.model_runner.worker_drafts.states  # the runner dropped its copy
    assert_pool_empty(engine)


def test_spec_spans_account_for_the_schedulers_counts(engine, tmp_path):
    """spec.verify counts what the rejection sampler verified: the scheduler's placeholder drafts
    less those the runner trimmed, and also the steps whose output a finished request drops."""
    from tracer.instrument import tracing
    from tracer.traces import schema
    from tracer.traces.trace_file import read_trace_file

    stats, worker = engine.scheduler.spec_decoding_stats, engine.model_runner.worker_drafts
    drafts_before, accepted_before, trimmed_before = stats.num_draft_tokens, stats.num_accepted_tokens, worker.num_trimmed_drafts
    dropped = {"drafts": 0, "accepted": 0}
    checked = engine.scheduler.update_from_output

    def update(scheduler_output, model_runner_output):
        for rid, sampled in zip(model_runner_output.req_ids, model_runner_output.sampled_token_ids):
            request = engine.scheduler.requests.get(rid)
            if sampled and (request is None or request.is_finished):
                dropped["drafts"] += len(scheduler_output.scheduled_spec_decode_tokens.get(rid, ()))
                dropped["accepted"] += len(sampled) - 1
        return checked(scheduler_output, model_runner_output)

    path = tmp_path / "trace.jsonl"
    with tracing.traced("mini", path) as report:
        engine.scheduler.update_from_output = update
        try:
            engine.generate([PROMPTS[0], PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=16))
        finally:
            engine.scheduler.update_from_output = checked
    assert report.failed == {}
    trace = read_trace_file(path)
    verifies, proposes = trace.named("spec.verify"), trace.named("spec.propose")
    assert verifies and proposes
    assert {s.trace_id for s in verifies + proposes} <= {s.trace_id for s in trace.named("engine.step")}
    total = lambda records, key: sum(s.attributes[key] for s in records)  # noqa: E731
    verified, accepted = total(verifies, schema.SPEC_NUM_DRAFT), total(verifies, schema.SPEC_NUM_ACCEPTED)
    trimmed = worker.num_trimmed_drafts - trimmed_before
    assert verified + trimmed == stats.num_draft_tokens - drafts_before + dropped["drafts"]
    assert accepted == stats.num_accepted_tokens - accepted_before + dropped["accepted"] > 0
    assert total(verifies, schema.SPEC_NUM_REJECTED) == verified - accepted
    assert total(proposes, schema.SPEC_NUM_DRAFT) >= verified  # every verified draft was proposed


def test_a_constrained_request_is_refused_before_it_is_queued(engine):
    # Async speculation proposes its drafts on the model thread, where no grammar checks them
    # (the rows for them are placeholders): a constrained request would be served wrong, so it is a
    # clear error (a 400 behind the server) and nothing is queued.
    from engine.structured_output.params import StructuredOutputError, StructuredOutputsParams

    params = SamplingParams(temperature=0.0, max_tokens=8, structured_outputs=StructuredOutputsParams(regex="(ab)+c"))
    with pytest.raises(StructuredOutputError, match="ngram_gpu"):
        engine.generate(["Repeat: ab ab ab c"], params)
    assert not engine.scheduler.has_unfinished_requests()
