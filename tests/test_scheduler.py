"""The scheduler on its own (no model: sampled tokens are forced), in both cache modes.

Random workloads must never leak a block or drive a ref count negative, whatever mix of
prefix sharing, chunked prefill, preemption and aborts they produce; and SGLang mode must
admit the request with the longest cached prefix first.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import CacheConfig, SchedulerConfig
from engine.outputs import ModelRunnerOutput
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sglang_scheduler import SglangScheduler


def make_scheduler(mode: str, num_blocks: int = 16, block_size: int = 4, budget: int = 32, max_seqs: int = 4) -> Scheduler | SglangScheduler:
    # cache_mode picks the loop as LLMEngine does: vLLM's Scheduler or SGLang's.
    scheduler_class = SglangScheduler if mode == "sglang" else Scheduler
    return scheduler_class(
        SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=256, cache_mode=mode),
        CacheConfig(block_size=block_size, num_blocks=num_blocks),
        num_blocks,
    )


def run_step(scheduler: Scheduler, rng: random.Random) -> None:
    out = scheduler.schedule()
    sampled = []
    for request_id, n in out.num_scheduled_tokens.items():
        request = scheduler.requests[request_id]
        done = out.num_computed_tokens[request_id] + n >= request.num_tokens
        sampled.append([rng.randrange(100, 200)] if done else [])
    scheduler.update_from_output(out, ModelRunnerOutput(list(out.num_scheduled_tokens), sampled))


def check_invariants(scheduler: Scheduler) -> None:
    kv = scheduler.kv_cache_manager
    if scheduler.scheduler_config.cache_mode == "vllm":
        assert all(block.ref_cnt >= 0 for block in kv.block_pool.blocks)
        holders: dict[int, int] = {}
        for blocks in kv.req_to_blocks.values():
            for block in blocks:
                holders[block.block_id] = holders.get(block.block_id, 0) + 1
        for block in kv.block_pool.blocks[1:]:
            assert block.ref_cnt == holders.get(block.block_id, 0)
    else:
        tree = kv.tree
        assert all(node.lock_ref >= 0 for node in tree.iter_nodes())
        assert tree.evictable_size() + tree.protected_size() == tree.total_size()


workloads = st.lists(
    st.tuples(
        st.integers(0, 2),  # which shared prefix
        st.integers(1, 30),  # own prompt tokens
        st.integers(1, 12),  # max_tokens
        st.booleans(),  # abort midway?
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(workload=workloads, mode=st.sampled_from(["vllm", "sglang"]), seed=st.integers(0, 1000))
def test_random_workloads_never_leak_blocks(workload, mode, seed):
    rng = random.Random(seed)
    scheduler = make_scheduler(mode)
    prefixes = [[1] * 10, list(range(2, 14)), []]
    aborts = []
    for i, (prefix, own, max_tokens, abort) in enumerate(workload):
        prompt = prefixes[prefix] + [rng.randrange(20, 90) for _ in range(own)]
        scheduler.add_request(Request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=i))
        if abort:
            aborts.append(f"r{i}")
    for step in range(400):
        if not scheduler.has_unfinished_requests():
            break
        run_step(scheduler, rng)
        check_invariants(scheduler)
        if step == 3 and aborts:
            scheduler.finish_requests(aborts, RequestStatus.FINISHED_ABORTED)
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.get_num_free_blocks() == 15  # every block but the null block


def test_sglang_mode_admits_the_longest_cached_prefix_first():
    rng = random.Random(0)
    scheduler = make_scheduler("sglang", num_blocks=64, budget=64, max_seqs=1)
    shared = list(range(1, 17))
    scheduler.add_request(Request("warm", shared + [50], SamplingParams(max_tokens=1, ignore_eos=True)))
    while scheduler.has_unfinished_requests():
        run_step(scheduler, rng)
    scheduler.add_request(Request("cold", [90] * 17, SamplingParams(max_tokens=1, ignore_eos=True), arrival_time=1))
    scheduler.add_request(Request("hot", shared + [60], SamplingParams(max_tokens=1, ignore_eos=True), arrival_time=2))
    out = scheduler.schedule()
    assert [r.req_id for r in out.scheduled_new_reqs] == ["hot"]  # despite arriving later
    assert out.num_computed_tokens["hot"] == 16


def test_vllm_mode_keeps_arrival_order():
    scheduler = make_scheduler("vllm", num_blocks=64, budget=64, max_seqs=1)
    scheduler.add_request(Request("first", [90] * 17, SamplingParams(max_tokens=1), arrival_time=1))
    scheduler.add_request(Request("second", [91] * 17, SamplingParams(max_tokens=1), arrival_time=2))
    assert [r.req_id for r in scheduler.schedule().scheduled_new_reqs] == ["first"]
