"""Conformance: our scheduler + block manager make vLLM 0.33's decisions, step for step.

Each scenario drives one workload through engine.scheduler.Scheduler and through the real
vllm.v1.core.sched.scheduler.Scheduler + KVCacheManager (on the CPU, forced outputs in place of
a model) under the same config, and requires every step to agree: which requests ran and how
many tokens each, prefix-cache hits on admission, preemptions, finishes, the queues and the
free-block count after the step. Each scenario also checks that it exercises what it is named
after, so a scenario that stopped reaching its case fails instead of passing vacuously.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.math_utils import cdiv
from tracer.replay import workload as W
from tracer.replay.compare import compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import drive, make_scheduler_runner
from tracer.replay.runners.records import full_states
from tracer.replay.workload import WorkloadRequest


@pytest.fixture(scope="module", autouse=True)
def vllm_imported():
    """Import vLLM once for the module (several seconds); skip cleanly where it is absent."""
    pytest.importorskip("vllm")
    from tracer.replay.runners.vllm import _vllm

    _vllm()


def replay_both(workload: list[WorkloadRequest], config: ReplayConfig):
    mini = drive(make_scheduler_runner("mini", config), workload)
    vllm = drive(make_scheduler_runner("vllm", config), workload)
    comparison = compare_logs(mini, vllm)
    assert mini.stalled is None and vllm.stalled is None, (mini.stalled, vllm.stalled)
    assert comparison.agree, _describe(comparison)
    return vllm


def _describe(comparison) -> str:
    d = comparison.divergence
    if d is None:
        return f"step counts differ: {comparison.left_steps} vs {comparison.right_steps}"
    return (f"first divergence at step {d.step} on {d.fields}\n  mini: {d.left}\n  vllm: {d.right}\n"
            f"  hints: {d.explanation}")


def total(log, what: str) -> int:
    if what == "preempted":
        return sum(len(s.preempted) for s in log.steps)
    if what == "cached":
        return sum(a.cached_tokens for s in log.steps for a in s.admitted)
    if what == "resumed":
        return sum(a.resumed for s in log.steps for a in s.admitted)
    raise ValueError(what)


def finished_ids(log) -> set[str]:
    return {rid for s in log.steps for rid, _ in s.finished}


def largest_chunk(log, request_id: str) -> int:
    return max(n for s in log.steps for rid, n in s.scheduled if rid == request_id)


def test_prefix_sharing_hits_agree():
    workload = W.shared_prefix(num_requests=24, num_system_prompts=3, system_len=96)
    log = replay_both(workload, ReplayConfig(num_blocks=96, max_num_batched_tokens=128))
    assert total(log, "cached") >= 16 * 96  # later requests of each system prompt hit its 6 blocks
    assert finished_ids(log) == {r.id for r in workload}


def test_chunked_prefill_of_long_prompts_agrees():
    workload = W.long_prompts(num_requests=6, prompt_len=(150, 400))
    log = replay_both(workload, ReplayConfig(num_blocks=160, max_num_batched_tokens=64))
    # A prompt longer than the step budget is split across steps.
    assert all(largest_chunk(log, r.id) <= 64 for r in workload)
    assert any(sum(1 for s in log.steps for rid, n in s.scheduled if rid == r.id and n > 1) > 1 for r in workload)


def test_preemption_under_a_near_full_pool_agrees():
    workload = W.memory_pressure(num_requests=10, max_tokens=(40, 80))
    log = replay_both(workload, ReplayConfig(num_blocks=24, max_num_batched_tokens=128))
    assert total(log, "preempted") >= 3
    assert total(log, "resumed") >= 3
    assert min(s.num_free_blocks for s in log.steps) <= 1


def test_preempted_requests_resume_from_their_own_cached_blocks():
    # Prefix caching keeps a preempted request's full blocks hashed: on resume they are hits.
    workload = W.memory_pressure(num_requests=8, prompt_len=(40, 70), max_tokens=(50, 90), seed=3)
    log = replay_both(workload, ReplayConfig(num_blocks=30, max_num_batched_tokens=256))
    resumed_hits = [a.cached_tokens for s in log.steps for a in s.admitted if a.resumed]
    assert resumed_hits and max(resumed_hits) > 0


class RecordingRunner:
    """Keeps each SchedulerOutput the wrapped runner's real scheduler returned."""

    def __init__(self, runner):
        self.runner, self.outputs = runner, []
        original = runner.schedule

        def schedule():
            self.outputs.append(original())
            return self.outputs[-1]

        runner.schedule = schedule


def test_a_resumed_request_is_sent_as_vllm_sends_it():
    # vLLM's own SchedulerOutput: a resumed request is in scheduled_cached_reqs.resumed_req_ids
    # with its whole new block table, never in scheduled_new_reqs
    # (vllm/v1/core/sched/scheduler.py:1922-1978 Scheduler._make_cached_request_data). Ours too.
    workload = W.memory_pressure(num_requests=8, prompt_len=(40, 70), max_tokens=(50, 90), seed=3)
    config = ReplayConfig(num_blocks=30, max_num_batched_tokens=256)
    mini, vllm = (RecordingRunner(make_scheduler_runner(e, config)) for e in ("mini", "vllm"))
    logs = [drive(r.runner, workload) for r in (mini, vllm)]
    comparison = compare_logs(*logs)
    assert comparison.agree, _describe(comparison)
    resumed_steps = 0
    for ours, theirs in zip(mini.outputs, vllm.outputs, strict=True):
        their_resumed = theirs.scheduled_cached_reqs.resumed_req_ids
        assert ours.scheduled_cached_reqs.resumed_req_ids == their_resumed
        assert not their_resumed & {n.req_id for n in theirs.scheduled_new_reqs}
        assert not their_resumed & {n.req_id for n in ours.scheduled_new_reqs}
        for req_id in their_resumed:
            index = theirs.scheduled_cached_reqs.req_ids.index(req_id)
            (their_table,) = theirs.scheduled_cached_reqs.new_block_ids[index]
            ours_index = ours.scheduled_cached_reqs.req_ids.index(req_id)
            assert ours.scheduled_cached_reqs.new_block_ids[ours_index] == their_table
        resumed_steps += bool(their_resumed)
    assert resumed_steps >= 2, "the workload was meant to preempt and resume"
    # The replay log carries that shape, and compare checks it: flip one resumed request to "new".
    step = next(s for s in logs[0].steps if any(kind == "resumed" for _, kind, _, _ in s.output))
    entry = next(e for e in step.output if e[1] == "resumed")
    entry[1] = "new"
    tampered = compare_logs(*logs)
    assert not tampered.agree and tampered.divergence.fields == ["output"]


def test_priority_policy_with_preemption_agrees():
    workload = W.priorities(num_requests=16, levels=3)
    log = replay_both(workload, ReplayConfig(num_blocks=20, max_num_batched_tokens=64, policy="priority"))
    assert total(log, "preempted") >= 1
    # The victims are never the most urgent level while a less urgent request runs.
    priority = {r.id: r.priority for r in workload}
    for step in log.steps:
        for victim in step.preempted:
            assert priority[victim] > 0 or all(priority[r] == 0 for r in step.running)


def test_max_num_seqs_limits_the_running_queue_identically():
    workload = W.bursts(num_bursts=3, burst_size=10, gap_steps=10)
    log = replay_both(workload, ReplayConfig(num_blocks=128, max_num_seqs=4, max_num_batched_tokens=64))
    assert max(len(s.running) for s in log.steps) == 4
    assert any(len(s["waiting"]) > 0 and len(s["running"]) == 4 for s in full_states(log.steps))


def test_long_prefill_token_threshold_caps_chunks_identically():
    workload = W.long_prompts(num_requests=5, prompt_len=(120, 240), arrival_every=1)
    config = ReplayConfig(num_blocks=128, max_num_batched_tokens=128, long_prefill_token_threshold=40)
    log = replay_both(workload, config)
    # While other requests exist, a prefill takes at most the threshold per step.
    assert max(n for s in full_states(log.steps) for _, n in s["scheduled"] if len(s["running"]) + len(s["waiting"]) > 1) <= 40


def test_chunked_prefill_disabled_schedules_whole_prompts_only():
    workload = W.long_prompts(num_requests=6, prompt_len=(150, 400), arrival_every=0)
    config = ReplayConfig(num_blocks=160, max_num_batched_tokens=512, max_model_len=512, enable_chunked_prefill=False)
    log = replay_both(workload, config)
    prompt_len = {r.id: len(r.prompt_token_ids) for r in workload}
    for step in log.steps:
        for admission in step.admitted:
            scheduled = dict((rid, n) for rid, n in step.scheduled)
            assert scheduled[admission.request_id] == prompt_len[admission.request_id] - admission.cached_tokens


def test_bursts_agree():
    replay_both(W.bursts(num_bursts=4, burst_size=8, gap_steps=12), ReplayConfig(num_blocks=64, max_num_batched_tokens=96))


def test_multi_turn_chats_hit_their_history():
    workload = W.multi_turn(num_conversations=4, num_turns=4)
    log = replay_both(workload, ReplayConfig(num_blocks=96, max_num_batched_tokens=64))
    later_turns = {r.id for r in workload if not r.id.endswith(".t0")}
    hits = {a.request_id: a.cached_tokens for s in log.steps for a in s.admitted}
    assert all(hits[rid] > 0 for rid in later_turns)


def test_sharegpt_like_mix_agrees():
    workload = W.sharegpt_like(num_requests=80, requests_per_step=0.5, max_prompt_len=512, max_output_len=96)
    log = replay_both(workload, ReplayConfig(num_blocks=120, max_num_batched_tokens=256, max_num_seqs=16))
    assert total(log, "preempted") >= 1
    assert finished_ids(log) == {r.id for r in workload}


def test_prefix_caching_disabled_agrees():
    workload = W.shared_prefix(num_requests=12)
    log = replay_both(workload, ReplayConfig(num_blocks=96, max_num_batched_tokens=128, enable_prefix_caching=False))
    assert total(log, "cached") == 0


def test_max_model_len_caps_generation_identically():
    workload = [WorkloadRequest(f"r{i}", 0, W.pseudo_random_ids(f"p{i}", 50 + 10 * i), max_tokens=64) for i in range(4)]
    log = replay_both(workload, ReplayConfig(num_blocks=64, max_num_batched_tokens=128, max_model_len=96))
    assert {reason for s in log.steps for _, reason in s.finished} == {"length"}
    assert all(c <= 96 for s in log.steps for c in s.num_computed_tokens.values())


# -- random workloads and configs ---------------------------------------------------------


@st.composite
def workloads_and_configs(draw):
    block_size = draw(st.sampled_from([4, 8, 16]))
    num_prefixes = draw(st.integers(1, 3))
    prefixes = [W.pseudo_random_ids(f"prefix{i}", draw(st.integers(0, 40))) for i in range(num_prefixes)]
    requests = []
    for i in range(draw(st.integers(1, 12))):
        prompt = prefixes[draw(st.integers(0, num_prefixes - 1))] + W.pseudo_random_ids(f"s{i}", draw(st.integers(1, 60)))
        requests.append(WorkloadRequest(f"q{i}", draw(st.integers(0, 10)), prompt, draw(st.integers(1, 30)),
                                        priority=draw(st.integers(0, 2))))
    longest = max(len(r.prompt_token_ids) + r.max_tokens for r in requests)
    chunked = draw(st.booleans())
    max_model_len = 256
    max_num_seqs = draw(st.integers(1, 6))
    config = ReplayConfig(
        block_size=block_size,
        num_blocks=cdiv(longest, block_size) + 1 + draw(st.integers(0, 20)),  # from barely enough to roomy
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(max_num_seqs, draw(st.integers(16, 128))) if chunked else max_model_len,
        max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=draw(st.booleans()),
        policy=draw(st.sampled_from(["fcfs", "priority"])),
        long_prefill_token_threshold=draw(st.sampled_from([0, 0, 8, 24])),
    )
    return requests, config


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads_and_configs())
def test_random_workloads_agree_with_vllm(case):
    workload, config = case
    replay_both(workload, config)
