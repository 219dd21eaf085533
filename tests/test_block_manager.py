"""Behaviour of the paged KV block manager (engine.block_pool, engine.kv_cache_manager),
and its decisions against vLLM 0.33.0's real KVCacheManager on the same operations."""
from __future__ import annotations

import os

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.block_pool import BlockPool, update_block_hashes
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams

BLOCK_SIZE = 4


def make_request(request_id: str, token_ids: list[int], block_size: int = BLOCK_SIZE) -> Request:
    request = Request(request_id, list(token_ids), SamplingParams(max_tokens=16))
    update_block_hashes(request, block_size)
    return request


def admit(manager: KVCacheManager, request: Request, budget: int | None = None) -> tuple[list[int], int] | None:
    """What the scheduler does for a waiting request; returns (new block ids, hit tokens)."""
    hit_blocks, num_hit = manager.get_computed_blocks(request)
    num_new = request.num_tokens - num_hit if budget is None else min(budget, request.num_tokens - num_hit)
    new_blocks = manager.allocate_slots(request, num_new, num_hit, hit_blocks)
    if new_blocks is None:
        return None
    request.num_computed_tokens = num_hit + num_new
    return [block.block_id for block in new_blocks], num_hit


def free_queue_ids(manager: KVCacheManager) -> list[int]:
    return [block.block_id for block in manager.block_pool.free_block_queue.get_all_free_blocks()]


# -- specifications ---------------------------------------------------------------------


def test_shared_system_prompt_is_a_prefix_hit():
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    system_prompt = list(range(100, 108))  # two full blocks
    first = make_request("a", system_prompt + [1, 2, 3])
    second = make_request("b", system_prompt + [7, 8])
    assert admit(manager, first) == ([1, 2, 3], 0)
    new_ids, num_hit = admit(manager, second)
    assert num_hit == 8
    assert manager.get_block_ids("b")[:2] == manager.get_block_ids("a")[:2] == [1, 2]
    assert new_ids == [4]
    assert [manager.block_pool.blocks[i].ref_cnt for i in (1, 2, 3, 4)] == [2, 2, 1, 1]


def test_full_prefix_hit_still_recomputes_the_last_token():
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    prompt = list(range(8))  # exactly two blocks
    admit(manager, make_request("a", prompt))
    same = make_request("b", prompt)
    hit_blocks, num_hit = manager.get_computed_blocks(same)
    # Hits are whole blocks and at most num_tokens - 1 tokens: the last block is recomputed.
    assert num_hit == 4 and [b.block_id for b in hit_blocks] == [1]
    longer = make_request("c", prompt + [9])
    assert manager.get_computed_blocks(longer)[1] == 8


def test_freed_cached_blocks_stay_hittable_until_reused():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    first = make_request("a", list(range(8)))
    admit(manager, first)
    manager.free(first)
    assert manager.get_num_free_blocks() == 7
    _, num_hit = admit(manager, make_request("b", list(range(8)) + [50]))
    assert num_hit == 8


def test_cached_blocks_are_evicted_least_recently_freed_first_tail_first():
    manager = KVCacheManager(num_blocks=10, block_size=BLOCK_SIZE)
    old = make_request("old", [1] * 8 + [0])  # blocks 1, 2 cached; 3 partial
    new = make_request("new", [2] * 8 + [0])  # blocks 4, 5 cached; 6 partial
    admit(manager, old)
    admit(manager, new)
    manager.free(old)
    manager.free(new)
    # Un-hashed blocks go to the front (reused first), the tail of each request first;
    # hashed blocks go to the back in the order freed, again tail first.
    assert free_queue_ids(manager) == [6, 3, 7, 8, 9, 2, 1, 5, 4]
    # Needing all 9 free blocks evicts the old request's blocks before the new one's.
    taker = make_request("taker", list(range(200, 220)))
    assert admit(manager, taker) == ([6, 3, 7, 8, 9], 0)
    assert manager.get_computed_blocks(make_request("x", [1] * 8 + [0]))[1] == 8
    manager.allocate_slots(taker, 12)
    assert manager.get_block_ids("taker")[5:] == [2, 1, 5]
    assert manager.get_computed_blocks(make_request("y", [1] * 8 + [0]))[1] == 0
    assert manager.get_computed_blocks(make_request("z", [2] * 8 + [0]))[1] == 4  # block 4 survives


def test_free_on_finish_returns_every_block():
    manager = KVCacheManager(num_blocks=12, block_size=BLOCK_SIZE)
    requests = [make_request(str(i), list(range(i, i + 10))) for i in range(3)]
    for request in requests:
        admit(manager, request)
    assert manager.get_num_free_blocks() == 11 - 9
    assert manager.usage == pytest.approx(9 / 11)
    for request in requests:
        manager.free(request)
    assert manager.get_num_free_blocks() == 11
    assert manager.usage == 0.0
    assert all(block.ref_cnt == 0 for block in manager.block_pool.blocks[1:])


def test_null_block_is_never_handed_out():
    pool = BlockPool(num_gpu_blocks=6, enable_caching=True)
    assert pool.null_block.block_id == 0 and pool.null_block.is_null
    assert pool.get_num_free_blocks() == 5
    assert sorted(block.block_id for block in pool.get_new_blocks(5)) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)


def test_allocation_failure_returns_none_and_changes_nothing():
    manager = KVCacheManager(num_blocks=6, block_size=BLOCK_SIZE)
    first = make_request("a", list(range(9)))
    admit(manager, first)  # blocks 1, 2 cached, 3 partial
    manager.free(first)  # free queue: 3, 4, 5, 2, 1
    # Both hit the 2 cached blocks, which sit in the free queue: touching them uses up free
    # blocks just like new ones. 20 tokens need 3 new blocks + 2 revived = 5 free: fits.
    fits = make_request("fits", list(range(9)) + list(range(100, 111)))
    # 24 tokens need 4 new + 2 revived = 6 > 5, though the 4 new blocks alone would fit.
    too_big = make_request("too_big", list(range(9)) + list(range(100, 115)))
    before = (free_queue_ids(manager), [b.ref_cnt for b in manager.block_pool.blocks])
    before_cache = {h: list(v) for h, v in manager.block_pool.cached_block_hash_to_block.items()}
    assert admit(manager, too_big) is None
    assert (free_queue_ids(manager), [b.ref_cnt for b in manager.block_pool.blocks]) == before
    assert {h: list(v) for h, v in manager.block_pool.cached_block_hash_to_block.items()} == before_cache
    assert manager.get_block_ids("too_big") == [] and "too_big" not in manager.req_to_blocks
    assert admit(manager, fits) == ([3, 4, 5], 8)


def test_caching_disabled_never_hits_and_reuses_freed_blocks_first():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE, enable_caching=False)
    first = make_request("a", list(range(8)))
    admit(manager, first)
    manager.free(first)
    assert free_queue_ids(manager)[:2] == [2, 1]
    assert manager.get_computed_blocks(make_request("b", list(range(9)))) == ([], 0)


def test_reset_prefix_cache_is_refused_while_blocks_are_held():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    request = make_request("a", list(range(9)))
    admit(manager, request)
    assert manager.reset_prefix_cache() is False
    manager.free(request)
    assert manager.reset_prefix_cache() is True
    assert manager.get_computed_blocks(make_request("b", list(range(9))))[1] == 0
    assert manager.make_prefix_cache_stats().reset is True


def test_prefix_cache_stats_count_admitted_lookups():
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    for request_id in ("a", "b"):
        request = make_request(request_id, list(range(9)))
        _, num_hit = admit(manager, request)
        manager.record_prefix_cache_stats(request, num_hit)
    stats = manager.make_prefix_cache_stats()
    assert (stats.requests, stats.queries, stats.hits) == (2, 18, 8)
    assert manager.make_prefix_cache_stats().queries == 0


def test_bad_arguments_give_clear_errors():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    request = make_request("a", [1, 2, 3])
    with pytest.raises(ValueError, match="num_new_tokens"):
        manager.allocate_slots(request, 0)
    with pytest.raises(ValueError, match="do not cover"):
        manager.allocate_slots(request, 1, num_new_computed_tokens=4)
    with pytest.raises(ValueError, match="null block"):
        KVCacheManager(num_blocks=1, block_size=BLOCK_SIZE)
    with pytest.raises(ValueError, match="block_size"):
        KVCacheManager(num_blocks=8, block_size=0)


# -- random workloads ---------------------------------------------------------------------

PREFIXES = [[], [7, 7, 7, 7, 8, 8, 8, 8], [7, 7, 7, 7, 9, 9], [5] * 12]

prompts = st.builds(
    lambda prefix, suffix: (PREFIXES[prefix] + suffix) or [0],
    st.integers(0, len(PREFIXES) - 1),
    st.lists(st.integers(0, 2), max_size=8),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), prompts, st.integers(1, 12)),
        st.tuples(st.just("step"), st.integers(0, 7), st.integers(1, 8)),
        st.tuples(st.just("finish"), st.integers(0, 7)),
    ),
    min_size=1,
    max_size=40,
)


class Workload:
    """A tiny scheduler loop over any KV manager adapter: admission with prefix hits and
    chunked prefill, decode steps that append a token, preemption when blocks run out,
    finishing. Records every observable decision."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.running: list = []
        self.trace: list = []
        self.next_id = 0

    def run(self, ops) -> list:
        for op in ops:
            getattr(self, op[0])(*op[1:])
            self.trace.append(("free", self.adapter.num_free(), self.adapter.free_queue_ids()))
        for request in self.running:
            self.adapter.free(request)
        self.running.clear()
        self.trace.append(("end", self.adapter.num_free(), self.adapter.free_queue_ids()))
        return self.trace

    def add(self, prompt: list[int], chunk: int) -> None:
        request = self.adapter.new_request(str(self.next_id), prompt)
        self.next_id += 1
        hit_ids, num_hit = self.adapter.lookup(request)
        num_new = min(chunk, len(prompt) - num_hit)
        new_ids = self.adapter.allocate(request, num_new, num_hit)
        self.trace.append(("add", hit_ids, num_hit, new_ids))
        if new_ids is not None:
            request.num_computed_tokens = num_hit + num_new
            self.running.append(request)

    def step(self, index: int, chunk: int) -> None:
        if not self.running:
            return
        request = self.running[index % len(self.running)]
        if request.num_computed_tokens == request.num_tokens:
            self.adapter.append_token(request, request.num_tokens % 3)
        num_new = min(chunk, request.num_tokens - request.num_computed_tokens)
        new_ids = self.adapter.allocate(request, num_new, 0)
        self.trace.append(("step", request.request_id, new_ids, self.adapter.block_ids(request)))
        if new_ids is None:  # preempted: its blocks are freed and it is dropped here
            self.finish(index)
        else:
            request.num_computed_tokens += num_new

    def finish(self, index: int) -> None:
        if self.running:
            self.adapter.free(self.running.pop(index % len(self.running)))


class MiniAdapter:
    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        self.manager = KVCacheManager(num_blocks, BLOCK_SIZE, enable_caching=enable_caching, max_model_len=4096)
        self._hits: dict[str, list] = {}

    def new_request(self, request_id, prompt):
        return make_request(request_id, prompt)

    def lookup(self, request):
        blocks, num_hit = self.manager.get_computed_blocks(request)
        self._hits[request.request_id] = blocks
        return [b.block_id for b in blocks], num_hit

    def allocate(self, request, num_new, num_hit):
        blocks = self.manager.allocate_slots(request, num_new, num_hit, self._hits.pop(request.request_id, None))
        return None if blocks is None else [b.block_id for b in blocks]

    def append_token(self, request, token):
        request.append_output_token_ids([token])
        update_block_hashes(request, BLOCK_SIZE)

    def free(self, request):
        self.manager.free(request)

    def block_ids(self, request):
        return self.manager.get_block_ids(request.request_id)

    def num_free(self):
        return self.manager.get_num_free_blocks()

    def free_queue_ids(self):
        return free_queue_ids(self.manager)

    def check_invariants(self, live_requests) -> None:
        blocks = self.manager.block_pool.blocks
        holders = {b.block_id: 0 for b in blocks}
        for request in live_requests:
            for block_id in self.manager.get_block_ids(request.request_id):
                holders[block_id] += 1
        assert all(block.ref_cnt >= 0 for block in blocks)
        assert all(block.ref_cnt == holders[block.block_id] for block in blocks[1:])
        assert holders[0] == 0
        assert set(self.free_queue_ids()) == {b.block_id for b in blocks[1:] if b.ref_cnt == 0}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, num_blocks=st.integers(4, 14), enable_caching=st.booleans())
def test_random_workloads_never_leak_blocks_or_go_negative(ops, num_blocks, enable_caching):
    adapter = MiniAdapter(num_blocks, enable_caching)
    workload = Workload(adapter)
    for op in ops:
        getattr(workload, op[0])(*op[1:])
        adapter.check_invariants(workload.running)
    workload.run([])
    assert adapter.num_free() == num_blocks - 1
    assert all(block.ref_cnt == 0 for block in adapter.manager.block_pool.blocks)


# -- differential: the real vLLM 0.33.0 KVCacheManager -----------------------------------


class VllmAdapter:
    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_manager import KVCacheManager as VllmKVCacheManager
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

        init_none_hash(sha256)
        self.block_hasher = get_request_block_hasher(BLOCK_SIZE, sha256)
        spec = FullAttentionSpec(BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float32)
        config = KVCacheConfig(
            num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)]
        )
        self.manager = VllmKVCacheManager(
            config,
            max_model_len=4096,
            scheduler_block_size=BLOCK_SIZE,
            hash_block_size=BLOCK_SIZE,
            enable_caching=enable_caching,
        )
        self._hits: dict = {}

    def new_request(self, request_id, prompt):
        from vllm.sampling_params import SamplingParams as VllmSamplingParams
        from vllm.v1.request import Request as VllmRequest

        return VllmRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt),
            sampling_params=VllmSamplingParams(max_tokens=16),
            pooling_params=None,
            block_hasher=self.block_hasher,
        )

    def lookup(self, request):
        blocks, num_hit, _ = self.manager.get_computed_blocks(request)
        self._hits[request.request_id] = blocks
        return blocks.get_block_ids()[0], num_hit

    def allocate(self, request, num_new, num_hit):
        blocks = self.manager.allocate_slots(request, num_new, num_hit, self._hits.pop(request.request_id, None))
        return None if blocks is None else blocks.get_block_ids()[0]

    def append_token(self, request, token):
        request.append_output_token_ids([token])  # vLLM's request re-hashes itself

    def free(self, request):
        self.manager.free(request)

    def block_ids(self, request):
        return self.manager.get_block_ids(request.request_id)[0]

    def num_free(self):
        return self.manager.block_pool.get_num_free_blocks()

    def free_queue_ids(self):
        return [b.block_id for b in self.manager.block_pool.free_block_queue.get_all_free_blocks()]


def test_block_hashes_equal_vllms():
    upstream = VllmAdapter(8, True).new_request("a", list(range(37)))
    assert make_request("a", list(range(37))).block_hashes == upstream.block_hashes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, num_blocks=st.integers(4, 14), enable_caching=st.booleans())
# A hit on blocks that sit in the free queue: reviving them must count against free space.
@example(
    ops=[("add", [5] * 12, 12), ("finish", 0), ("add", [5] * 12 + [0, 1, 2, 0, 1, 2, 0, 1], 12)],
    num_blocks=5,
    enable_caching=True,
)
def test_same_decisions_as_vllm_kv_cache_manager(ops, num_blocks, enable_caching):
    ours = Workload(MiniAdapter(num_blocks, enable_caching)).run(ops)
    upstream = Workload(VllmAdapter(num_blocks, enable_caching)).run(ops)
    assert ours == upstream
