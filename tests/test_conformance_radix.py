"""Conformance of our RadixCache with SGLang 0.5.23's, on replayed request workloads.

tests/test_radix_cache.py compares the two trees on random low-level operation sequences. Here
the unit is a request's life in SGLang's scheduler (match + lock on admission, evict under pool
pressure, insert + free duplicates + unlock on finish), replayed for whole workloads with
overlapping requests: both trees must report the same match length, tokens evicted, insert
prefix length, evictable / protected sizes and free slots after every event.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.replay import workload as W
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.sglang import compare_radix_logs, replay_radix
from tracer.replay.workload import WorkloadRequest

pytest.importorskip("sglang.srt.mem_cache.radix_cache")


def replay_both(workload: list[WorkloadRequest], config: ReplayConfig, page_size: int = 1):
    ours = replay_radix("mini", workload, config, page_size)
    theirs = replay_radix("sglang", workload, config, page_size)
    comparison = compare_radix_logs(ours, theirs)
    assert comparison["agree"], comparison["divergence"]
    return ours


def totals(log) -> tuple[int, int]:
    return sum(r.matched for r in log.records), sum(r.evicted for r in log.records)


def test_shared_system_prompts_match_and_evict_identically():
    workload = W.shared_prefix(num_requests=30, num_system_prompts=3, system_len=96)
    log = replay_both(workload, ReplayConfig(num_blocks=64, radix_concurrency=4))
    matched, evicted = totals(log)
    assert matched >= 20 * 96
    assert evicted > 0


def test_multi_turn_history_is_matched_identically_with_pages():
    workload = W.multi_turn(num_conversations=5, num_turns=4)
    for page_size in (1, 4, 16):
        log = replay_both(workload, ReplayConfig(num_blocks=48, radix_concurrency=2), page_size)
        matched, evicted = totals(log)
        assert matched > 0 and evicted > 0
        assert all(r.matched % page_size == 0 for r in log.records)


def test_sharegpt_like_lengths_under_pool_pressure():
    workload = W.sharegpt_like(num_requests=150, max_prompt_len=512, max_output_len=128)
    log = replay_both(workload, ReplayConfig(num_blocks=96, radix_concurrency=6))
    assert totals(log)[1] > 0


def test_a_request_larger_than_the_pool_is_skipped_by_both():
    workload = [WorkloadRequest("big", 0, W.pseudo_random_ids("big", 200), 8),
                WorkloadRequest("small", 1, W.pseudo_random_ids("small", 20), 8)]
    log = replay_both(workload, ReplayConfig(block_size=16, num_blocks=8))
    assert log.skipped == ["big"]


@st.composite
def radix_workloads(draw):
    """Prompts that branch off each other's prefixes (and off earlier outputs) at random points."""
    prompts: list[list[int]] = []
    requests = []
    for i in range(draw(st.integers(1, 20))):
        if prompts and draw(st.booleans()):
            base = prompts[draw(st.integers(0, len(prompts) - 1))]
            base = base[: draw(st.integers(0, len(base)))]
        else:
            base = []
        prompt = base + [draw(st.integers(100, 110)) for _ in range(draw(st.integers(1 if not base else 0, 24)))]
        if not prompt:
            prompt = [100]
        request = WorkloadRequest(f"q{i}", i, prompt, draw(st.integers(1, 12)))
        if draw(st.booleans()):  # the next turn of this one: its prompt + its forced output
            prompts.append(prompt + request.forced_output())
        prompts.append(prompt)
        requests.append(request)
    config = ReplayConfig(block_size=1, num_blocks=draw(st.integers(24, 160)), radix_concurrency=draw(st.integers(1, 5)))
    return requests, config, draw(st.sampled_from([1, 2, 4]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(radix_workloads())
def test_random_replayed_workloads_give_sglangs_results(case):
    workload, config, page_size = case
    replay_both(workload, config, page_size)
