"""The SchedulerOutput's shape is vLLM 0.33's: new requests whole, running and resumed ones as a diff.

A runner that only applies the diffs (a new request's table, a running request's new blocks, a
resumed request's replacement table) must hold exactly the block table the KV manager holds,
every step, under preemption. The shape against vLLM's own
SchedulerOutput is checked in tests/test_conformance.py.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import CacheConfig, SchedulerConfig
from engine.outputs import ModelRunnerOutput, SchedulerOutput
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


def make_scheduler(mode: str, num_blocks: int, block_size: int = 4, budget: int = 32) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=256, cache_mode=mode),
        CacheConfig(block_size=block_size, num_blocks=num_blocks),
        num_blocks,
    )


class ShadowRunner:
    """Keeps block tables from the outputs alone, as vLLM's V1 GPUModelRunner._update_states does."""

    def __init__(self) -> None:
        self.tables: dict[str, list[int]] = {}
        self.resumed: list[str] = []

    def apply(self, out: SchedulerOutput) -> None:
        for req_id in out.finished_req_ids:
            self.tables.pop(req_id, None)
        for new in out.scheduled_new_reqs:
            assert new.req_id not in self.tables, f"{new.req_id} was sent new twice (a resumed request is cached)"
            self.tables[new.req_id] = list(new.block_ids)
        cached = out.scheduled_cached_reqs
        assert cached.resumed_req_ids <= set(cached.req_ids)
        for req_id, new_block_ids in zip(cached.req_ids, cached.new_block_ids):
            if req_id in cached.resumed_req_ids:
                self.tables[req_id] = list(new_block_ids)
                self.resumed.append(req_id)
            elif new_block_ids is not None:
                self.tables[req_id].extend(new_block_ids)
        sent = [n.req_id for n in out.scheduled_new_reqs] + cached.req_ids
        assert sorted(sent) == sorted(out.num_scheduled_tokens), "every scheduled request is sent exactly once"


def run(scheduler: Scheduler, prompts: list[list[int]], max_tokens: int) -> ShadowRunner:
    for i, prompt in enumerate(prompts):
        scheduler.add_request(Request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=i))
    shadow = ShadowRunner()
    for _ in range(500):
        if not scheduler.has_unfinished_requests():
            break
        out = scheduler.schedule()
        shadow.apply(out)
        for req_id in out.num_scheduled_tokens:
            assert shadow.tables[req_id] == scheduler.kv_cache_manager.get_block_ids(req_id)
        sampled = []
        for req_id, n in out.num_scheduled_tokens.items():
            request = scheduler.requests[req_id]
            sampled.append([7] if out.num_computed_tokens[req_id] + n >= request.num_tokens else [])
        scheduler.update_from_output(out, ModelRunnerOutput(list(out.num_scheduled_tokens), sampled))
    assert not scheduler.has_unfinished_requests()
    return shadow


def test_a_resumed_request_is_cached_with_its_whole_new_table():
    scheduler = make_scheduler("vllm", num_blocks=9)
    shadow = ShadowRunner()
    for i in range(3):
        scheduler.add_request(Request(f"r{i}", [10 + i] * 8, SamplingParams(max_tokens=12, ignore_eos=True), arrival_time=i))
    preempted: set[str] = set()
    for _ in range(200):
        if not scheduler.has_unfinished_requests():
            break
        out = scheduler.schedule()
        shadow.apply(out)
        preempted |= out.preempted_req_ids
        cached = out.scheduled_cached_reqs
        for req_id in cached.resumed_req_ids:
            index = cached.req_ids.index(req_id)
            assert req_id in preempted
            assert cached.new_block_ids[index] == scheduler.kv_cache_manager.get_block_ids(req_id)
            # A resumed request recomputes from its prefix-cache hit (0 here: its blocks were freed
            # and reused by the others) and is not in the new list.
            assert req_id not in [n.req_id for n in out.scheduled_new_reqs]
        sampled = [[7] if scheduler.requests[r].num_computed_tokens >= scheduler.requests[r].num_tokens else []
                   for r in out.num_scheduled_tokens]
        scheduler.update_from_output(out, ModelRunnerOutput(list(out.num_scheduled_tokens), sampled))
    assert preempted and shadow.resumed, "the pool was meant to force a preemption and a resume"


@settings(max_examples=40, deadline=None)
@given(
    num_blocks=st.integers(11, 24),  # the longest request (36 tokens) needs 9 of the usable blocks
    prompts=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=20), min_size=1, max_size=8),
    max_tokens=st.integers(1, 16),
)
def test_diffs_rebuild_the_managers_block_tables(num_blocks, prompts, max_tokens):
    run(make_scheduler("vllm", num_blocks), prompts, max_tokens)
