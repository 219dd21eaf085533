"""Conformance under async scheduling: our AsyncScheduler makes vLLM 0.33's AsyncScheduler's
decisions, step for step, both driven in EngineCore.step_with_batch_queue's order.

vLLM 0.33 serves with async scheduling by default (a batch queue of 2: step N+1 is scheduled
before step N's tokens reach the scheduler, with output placeholders). Replay with
ReplayConfig.async_scheduling drives vllm.v1.core.sched.async_scheduler.AsyncScheduler and
engine.async_scheduler.AsyncScheduler through tracer/replay/runners/batch_queue.py and compares
every step as the synchronous replay does, output shape included: the conformance scenarios of
tests/test_conformance.py, then a hypothesis search over tests/search_strategies.py's space.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from engine.async_scheduler import AsyncScheduler
from tests.search_strategies import SearchCase, SearchStats, observe, search_cases
from tracer.replay import workload as W
from tracer.replay.compare import compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import drive, make_scheduler_runner
from tracer.replay.workload import WorkloadRequest

SEARCH_EXAMPLES = 100


@pytest.fixture(scope="module", autouse=True)
def vllm_imported():
    pytest.importorskip("vllm")
    from tracer.replay.runners.vllm import _vllm

    _vllm()


def replay_both(workload: list[WorkloadRequest], config: ReplayConfig):
    config = replace(config, async_scheduling=True)
    runners = [make_scheduler_runner(engine, config) for engine in ("mini", "vllm")]
    assert isinstance(runners[0].scheduler, AsyncScheduler)
    assert type(runners[1].scheduler).__name__ == "AsyncScheduler"
    mini, vllm = (drive(runner, workload) for runner in runners)
    comparison = compare_logs(mini, vllm)
    assert mini.stalled is None and vllm.stalled is None, (mini.stalled, vllm.stalled)
    d = comparison.divergence
    assert comparison.agree, (f"first divergence at step {d.step} on {d.fields}\n  mini: {d.left}\n  vllm: {d.right}"
                              if d else f"step counts differ: {comparison.left_steps} vs {comparison.right_steps}")
    return vllm


SCENARIOS = {
    "prefix-sharing": (W.shared_prefix(num_requests=24, num_system_prompts=3, system_len=96),
                       ReplayConfig(num_blocks=96, max_num_batched_tokens=128)),
    "chunked-prefill": (W.long_prompts(num_requests=6, prompt_len=(150, 400)), ReplayConfig(num_blocks=160, max_num_batched_tokens=64)),
    "memory-pressure": (W.memory_pressure(num_requests=10, max_tokens=(40, 80)), ReplayConfig(num_blocks=24, max_num_batched_tokens=128)),
    "resume-from-cache": (W.memory_pressure(num_requests=8, prompt_len=(40, 70), max_tokens=(50, 90), seed=3),
                          ReplayConfig(num_blocks=30, max_num_batched_tokens=256)),
    "priority-preemption": (W.priorities(num_requests=16, levels=3),
                            ReplayConfig(num_blocks=20, max_num_batched_tokens=64, policy="priority")),
    "max-num-seqs": (W.bursts(num_bursts=3, burst_size=10, gap_steps=10),
                     ReplayConfig(num_blocks=128, max_num_seqs=4, max_num_batched_tokens=64)),
    "long-prefill-threshold": (W.long_prompts(num_requests=5, prompt_len=(120, 240), arrival_every=1),
                               ReplayConfig(num_blocks=128, max_num_batched_tokens=128, long_prefill_token_threshold=40)),
    "unchunked": (W.long_prompts(num_requests=6, prompt_len=(150, 400), arrival_every=0),
                  ReplayConfig(num_blocks=160, max_num_batched_tokens=512, max_model_len=512, enable_chunked_prefill=False)),
    "multi-turn": (W.multi_turn(num_conversations=4, num_turns=4), ReplayConfig(num_blocks=96, max_num_batched_tokens=64)),
    "sharegpt-like": (W.sharegpt_like(num_requests=80, requests_per_step=0.5, max_prompt_len=512, max_output_len=96),
                      ReplayConfig(num_blocks=120, max_num_batched_tokens=256, max_num_seqs=16)),
    "no-prefix-caching": (W.shared_prefix(num_requests=12),
                          ReplayConfig(num_blocks=96, max_num_batched_tokens=128, enable_prefix_caching=False)),
    "max-model-len": ([WorkloadRequest(f"r{i}", 0, W.pseudo_random_ids(f"p{i}", 50 + 10 * i), max_tokens=64) for i in range(4)],
                      ReplayConfig(num_blocks=64, max_num_batched_tokens=128, max_model_len=96)),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_conformance_scenarios_agree_under_async_scheduling(name):
    workload, config = SCENARIOS[name]
    log = replay_both(workload, config)
    assert {rid for s in log.steps for rid, _ in s.finished} == {r.id for r in workload}
    if name in ("memory-pressure", "resume-from-cache", "priority-preemption", "sharegpt-like"):
        assert any(s.preempted for s in log.steps), "the scenario was meant to preempt"


def test_the_batch_queue_order_is_not_the_synchronous_one():
    # One request, 3 tokens: synchronously each step schedules and applies its own output; in
    # step_with_batch_queue's order the first call only schedules, and each later call applies the
    # step before the one it schedules, so the finish comes one call later.
    workload = [WorkloadRequest("r", 0, W.pseudo_random_ids("r", 20), max_tokens=3)]
    config = ReplayConfig(num_blocks=16)
    sync_log = drive(make_scheduler_runner("vllm", config), workload)
    async_log = replay_both(workload, config)
    assert [s.finished for s in sync_log.steps] == [[], [], [["r", "length"]]]
    assert [s.finished for s in async_log.steps] == [[], [], [], [["r", "length"]], [], []]
    # No step is wasted past max_tokens (the fourth call schedules nothing); then one empty step
    # carries the finished id to the model runner (has_requests) and a last call drains the queue.
    assert [len(s.scheduled) for s in async_log.steps] == [1, 1, 1, 0, 0, 0]


def test_generated_workloads_agree_under_async_scheduling():
    stats = SearchStats()

    @settings(derandomize=True, max_examples=SEARCH_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow], phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(search_cases())
    def check(case: SearchCase) -> None:
        log = replay_both(case.workload(), case.config)
        stats.record(observe(case, log))

    check()
    assert stats.examples >= SEARCH_EXAMPLES // 2
    assert stats.share("preempted") >= 0.1, stats.counts
    for name in ("resumed", "prefix-hit", "chunked-prefill"):
        assert stats.counts.get(name), (name, stats.counts)


def test_a_planted_placeholder_bug_is_caught(monkeypatch):
    # Ours forgets to resolve the placeholder of a returned token: it schedules the request as if a
    # step were still in flight. The scenarios must catch it.
    honest = AsyncScheduler._update_request_with_output

    def unresolved(self, request, new_token_ids):
        placeholders = request.num_output_placeholders
        result = honest(self, request, new_token_ids)
        request.num_output_placeholders = placeholders
        return result

    monkeypatch.setattr(AsyncScheduler, "_update_request_with_output", unresolved)
    with pytest.raises(AssertionError, match="first divergence"):
        replay_both(*SCENARIOS["memory-pressure"])


def test_a_traced_async_replay_emits_placeholder_spans_from_vllms_async_scheduler(tmp_path):
    # The overlap.placeholders hop wraps AsyncScheduler._update_after_schedule, vLLM 0.33's and
    # ours (tracer/catalog/hops.yaml). A traced replay with async scheduling runs vLLM's real one,
    # so its trace holds one span per schedule, nested in that scheduler.schedule, and the two
    # engines' spans agree on what each schedule reserved: prefill chunks reserve nothing, a
    # decode one placeholder, and a request scheduled while its previous step is in flight holds two.
    from tracer.catalog.hops import load_catalog
    from tracer.replay.session import run_replay
    from tracer.traces.schema import (
        ENGINE, PLACEHOLDER_REQUESTS_IN_FLIGHT, PLACEHOLDERS_ADDED, PLACEHOLDERS_OUTSTANDING, STEP,
    )
    from tracer.traces.trace_file import read_trace_file

    assert load_catalog().hop("overlap.placeholders").targets["vllm"][0].spec == \
        "vllm.v1.core.sched.async_scheduler:AsyncScheduler._update_after_schedule"
    workload = W.long_prompts(num_requests=3, prompt_len=(70, 130), max_tokens=(6, 10))
    config = ReplayConfig(num_blocks=64, max_num_batched_tokens=64, async_scheduling=True)
    result = run_replay(workload, config, ["mini", "vllm"], tmp_path / "out")
    assert result.agree, result.notes
    seen = {}
    for engine in ("mini", "vllm"):
        trace = read_trace_file(tmp_path / "out" / f"trace-{engine}.jsonl")
        schedules = {s.span_id: s for s in trace.named("scheduler.schedule")}
        placeholders = trace.named("overlap.placeholders")
        assert placeholders and len(placeholders) == len(schedules), engine
        for span in placeholders:
            assert span.resource[ENGINE] == engine
            assert span.parent_span_id in schedules and span.trace_id == schedules[span.parent_span_id].trace_id
        seen[engine] = [(s.attributes[PLACEHOLDERS_ADDED], s.attributes[PLACEHOLDERS_OUTSTANDING],
                         s.attributes[PLACEHOLDER_REQUESTS_IN_FLIGHT]) for s in sorted(placeholders, key=lambda s: s.attributes[STEP])]
    assert seen["vllm"] == seen["mini"]
    added = [a for a, _, _ in seen["vllm"]]
    batch_sizes = [len(s.scheduled) for s in result.logs["vllm"].steps if s.scheduled]
    assert any(a < n for a, n in zip(added, batch_sizes)), "a prefill chunk reserves no placeholder"
    assert max(in_flight for _, _, in_flight in seen["vllm"]) >= 2, "decodes scheduled with their previous step in flight"
