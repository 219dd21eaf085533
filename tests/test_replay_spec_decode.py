"""Replay with speculative decoding: the same forced drafts and acceptance lengths through vLLM 0.33's
real Scheduler and ours agree step by step: tokens scheduled (drafts included), the drafts each
step verified and accepted, num_computed_tokens after the rollback of rejected drafts, the
SchedulerOutput's block tables and the free blocks, under chunked prefill, prefix-cache hits and
preemption. A planted rollback bug (one rejected token too few) is caught. The same under async
scheduling (AsyncScheduler + step_with_batch_queue, "ngram_gpu"): placeholder drafts, the rollback
one step late; a planted bug that leaves rejected drafts among the placeholders is caught."""
from __future__ import annotations

import dataclasses

import pytest

from engine.scheduler import Scheduler
from tracer.replay.compare import compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import drive, make_scheduler_runner
from tracer.replay.speculation import forced_drafts, verified_output
from tracer.replay.workload import WorkloadRequest

SHARED = list(range(100, 140))  # 40 tokens: two and a half blocks of 16 shared by half the requests


def workload() -> list[WorkloadRequest]:
    requests = []
    for i in range(8):
        prompt = (SHARED if i % 2 == 0 else []) + [1000 + 37 * i + j for j in range(9 + 5 * i)]
        requests.append(WorkloadRequest(id=f"r{i}", arrival_step=2 * i, prompt_token_ids=prompt, max_tokens=20 + 3 * i))
    # A prompt of 33 tokens whose first 32 are cached when it arrives: one token left, which vLLM
    # pads to 1 + k tokens with placeholder drafts.
    requests.append(WorkloadRequest(id="hit", arrival_step=30, prompt_token_ids=SHARED[:32] + [7], max_tokens=6))
    requests.append(WorkloadRequest(id="hit2", arrival_step=31, prompt_token_ids=SHARED[:32] + [7], max_tokens=6))
    return requests


CONFIG = ReplayConfig(block_size=16, num_blocks=12, max_num_seqs=6, max_num_batched_tokens=48, num_speculative_tokens=3)


@pytest.fixture(scope="module")
def logs():
    return {engine: drive(make_scheduler_runner(engine, CONFIG), workload()) for engine in ("mini", "vllm")}


def test_ours_and_vllms_scheduler_agree_on_every_step_with_speculation(logs):
    comparison = compare_logs(logs["mini"], logs["vllm"])
    assert comparison.agree, comparison.divergence
    steps = logs["vllm"].steps
    spec = [entry for step in steps for entry in step.spec]
    assert sum(drafted for _, drafted, _ in spec) > 100
    assert any(accepted < drafted for _, drafted, accepted in spec), "some drafts must be rejected"
    assert any(accepted == drafted > 0 for _, drafted, accepted in spec), "some drafts must all be accepted"
    assert any(step.preempted for step in steps), "the pool was meant to force preemption"
    assert any(a.cached_tokens for step in steps for a in step.admitted), "shared prefixes should hit the cache"
    # "hit" is admitted with one token left and scheduled 1 + k (k placeholder drafts, none accepted).
    admitted = next(step for step in steps if any(a.request_id == "hit" for a in step.admitted))
    assert ["hit", 1 + CONFIG.num_speculative_tokens] in admitted.scheduled
    assert ["hit", CONFIG.num_speculative_tokens, 0] in admitted.spec


def test_a_planted_short_rollback_is_caught(monkeypatch, logs):
    original = Scheduler.update_from_output

    def keeps_one_rejected(self, scheduler_output, model_runner_output):
        outputs = original(self, scheduler_output, model_runner_output)
        for req_id, drafts in scheduler_output.scheduled_spec_decode_tokens.items():
            request = self.requests.get(req_id)
            index = model_runner_output.req_ids.index(req_id)
            if request is not None and len(model_runner_output.sampled_token_ids[index]) - 1 < len(drafts):
                request.num_computed_tokens += 1  # one rejected draft counted as computed
        return outputs

    monkeypatch.setattr(Scheduler, "update_from_output", keeps_one_rejected)
    comparison = compare_logs(drive(make_scheduler_runner("mini", CONFIG), workload()), logs["vllm"])
    assert not comparison.agree
    assert "num_computed_tokens" in comparison.divergence.fields or "scheduled" in comparison.divergence.fields


def test_forced_drafts_force_the_acceptance_length():
    forced = [5, 6, 7, 8, 9, 10]
    for num_outputs in range(len(forced)):
        drafts = forced_drafts("r", forced, num_outputs, 10 + num_outputs, 3, 1000)
        out = verified_output(forced, num_outputs, drafts)
        # The agreeing drafts plus one, all of them the forced output.
        accepted = len(out) - 1
        assert drafts[:accepted] == forced[num_outputs: num_outputs + accepted]
        assert out[: len(forced) - num_outputs] == forced[num_outputs: num_outputs + len(out)]


# vLLM 0.33's default: its AsyncScheduler in step_with_batch_queue's order, "ngram_gpu" speculation.
ASYNC_CONFIG = dataclasses.replace(CONFIG, async_scheduling=True)


def async_workload() -> list[WorkloadRequest]:
    # One more cache hit with one token left, admitted beside decodes only: padded to 1 + k.
    return workload() + [WorkloadRequest(id="hit3", arrival_step=52, prompt_token_ids=SHARED[:32] + [7], max_tokens=6)]


@pytest.fixture(scope="module")
def async_logs():
    return {engine: drive(make_scheduler_runner(engine, ASYNC_CONFIG), async_workload()) for engine in ("mini", "vllm")}


def test_ours_and_vllms_async_scheduler_agree_on_every_step_with_speculation(async_logs):
    comparison = compare_logs(async_logs["mini"], async_logs["vllm"])
    assert comparison.agree, comparison.divergence
    steps = async_logs["vllm"].steps
    spec = [entry for step in steps for entry in step.spec]
    # Every decode is scheduled 1 + k: the scheduler holds k placeholders whatever the drafter finds.
    assert {drafted for _, drafted, _ in spec} == {CONFIG.num_speculative_tokens}
    assert any(accepted < drafted for _, drafted, accepted in spec), "some drafts must be rejected"
    assert any(accepted == drafted for _, drafted, accepted in spec), "some drafts must all be accepted"
    assert any(step.preempted for step in steps), "the pool was meant to force preemption"
    assert any(a.cached_tokens for step in steps for a in step.admitted), "shared prefixes should hit the cache"
    admitted = next(step for step in steps if any(a.request_id == "hit3" for a in step.admitted))
    assert ["hit3", 1 + CONFIG.num_speculative_tokens] in admitted.scheduled  # padded, as synchronously
    assert ["hit3", CONFIG.num_speculative_tokens, 0] in admitted.spec


def test_a_planted_rollback_that_keeps_the_rejected_placeholders_is_caught(monkeypatch, async_logs):
    from engine.spec_decode import scheduling

    def keeps_placeholders(request, scheduled_spec_token_ids, new_token_ids, stats):
        num_rejected = len(scheduled_spec_token_ids) - (len(new_token_ids) - 1)
        request.num_computed_tokens -= num_rejected  # the rejected drafts' placeholders stay counted
        stats.observe_draft(len(scheduled_spec_token_ids), len(new_token_ids) - 1)

    monkeypatch.setattr(scheduling, "roll_back_rejected", keeps_placeholders)
    comparison = compare_logs(drive(make_scheduler_runner("mini", ASYNC_CONFIG), async_workload()), async_logs["vllm"])
    assert not comparison.agree
    assert {"scheduled", "num_computed_tokens"} & set(comparison.divergence.fields)
