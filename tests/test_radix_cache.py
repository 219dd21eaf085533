"""Behaviour of the SGLang-style radix prefix cache (engine.radix_cache), and its results
against SGLang 0.5.23's real RadixCache and TokenToKVPoolAllocator on the same operations."""
from __future__ import annotations

import itertools
from array import array

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.radix_cache import RadixCache, TokenToKVPoolAllocator


def logical_clock():
    """Strictly increasing times, so LRU order in these tests never depends on the real clock."""
    counter = itertools.count()
    return lambda: float(next(counter))


def make_cache(page_size: int = 1, pool_size: int = 256) -> RadixCache:
    return RadixCache(TokenToKVPoolAllocator(pool_size), page_size=page_size, clock=logical_clock())


def insert_request(cache: RadixCache, tokens: list[int]) -> int:
    """Allocate slots for tokens, insert them, free what the tree did not keep (SGLang's
    release path); returns the prefix length already present."""
    slots = cache.token_to_kv_pool_allocator.alloc(len(tokens))
    result = cache.insert(tokens, slots)
    cache.token_to_kv_pool_allocator.free(slots[: result.prefix_len])
    cache.token_to_kv_pool_allocator.free(slots[len(tokens) // cache.page_size * cache.page_size :])
    return result.prefix_len


def sizes_are_consistent(cache: RadixCache) -> None:
    nodes = list(cache.iter_nodes())
    assert all(node.lock_ref >= 0 for node in nodes)
    assert cache.evictable_size() == sum(len(n.key) for n in nodes if n.lock_ref == 0)
    assert cache.protected_size() == sum(len(n.key) for n in nodes if n.lock_ref > 0)
    assert cache.evictable_size() + cache.protected_size() == cache.total_size()
    assert cache.evictable_leaves == {n for n in nodes if not n.children and n.lock_ref == 0}
    for node in nodes:
        assert len(node.key) == len(node.value) and len(node.key) % cache.page_size == 0
        assert node.parent.children[cache._child_key(node.key)] is node


# -- specifications ---------------------------------------------------------------------


def test_match_returns_the_longest_cached_prefix_and_its_slots():
    cache = make_cache()
    cache.insert([1, 2, 3, 4], [10, 20, 30, 40])
    result = cache.match_prefix([1, 2, 3, 9])
    assert result.prefix_len == 3 and result.device_indices == [10, 20, 30]
    assert cache.match_prefix([9, 1]).prefix_len == 0
    assert cache.match_prefix([]).last_node is cache.root_node


def test_partial_match_splits_the_node():
    cache = make_cache()
    cache.insert([1, 2, 3, 4], [10, 20, 30, 40])
    result = cache.match_prefix([1, 2, 7])
    assert result.last_node.key == [1, 2] and result.last_node.value == [10, 20]
    (child,) = result.last_node.children.values()
    assert child.key == [3, 4] and child.value == [30, 40] and child.parent is result.last_node
    sizes_are_consistent(cache)


def test_insert_returns_the_prefix_length_already_present():
    cache = make_cache()
    assert cache.insert([1, 2, 3]).prefix_len == 0
    assert cache.insert([1, 2, 3]).prefix_len == 3
    assert cache.insert([1, 2, 4, 5]).prefix_len == 2
    assert cache.insert([8, 9]).prefix_len == 0
    assert cache.total_size() == 3 + 2 + 2
    sizes_are_consistent(cache)


def test_evict_frees_least_recently_used_unlocked_leaves_first():
    cache = make_cache(pool_size=32)
    allocator = cache.token_to_kv_pool_allocator
    insert_request(cache, [1, 1, 1])  # slots 1-3
    insert_request(cache, [2, 2, 2])  # slots 4-6
    insert_request(cache, [3, 3, 3])  # slots 7-9
    cache.match_prefix([1, 1, 1])  # [1,1,1] is now the most recent
    assert cache.evict(4) == 6  # whole leaves: [2,2,2] then [3,3,3]
    assert allocator.free_slots[-6:] == [4, 5, 6, 7, 8, 9]
    assert cache.match_prefix([1, 1, 1]).prefix_len == 3
    assert cache.evictable_size() == 3


def test_evicting_a_leaf_can_make_its_parent_evictable():
    cache = make_cache()
    insert_request(cache, [1, 2, 3])
    insert_request(cache, [1, 2, 4])  # splits: [1,2] -> {[3], [4]}
    assert cache.evict(100) == 4
    assert cache.total_size() == 0 and not cache.root_node.children


def test_locked_nodes_are_protected_from_eviction():
    cache = make_cache()
    insert_request(cache, [1, 2, 3, 4])
    insert_request(cache, [5, 6])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    assert cache.inc_lock_ref(node) == -4
    assert (cache.evictable_size(), cache.protected_size()) == (2, 4)
    assert cache.evict(100) == 2
    assert cache.match_prefix([1, 2, 3, 4]).prefix_len == 4
    assert cache.dec_lock_ref(node) == 4
    assert (cache.evictable_size(), cache.protected_size()) == (4, 0)
    with pytest.raises(RuntimeError, match="unlocked"):
        cache.dec_lock_ref(node)


def test_page_size_cuts_keys_to_whole_pages():
    cache = make_cache(page_size=4)
    assert cache.insert(list(range(10))).prefix_len == 0
    assert cache.total_size() == 8  # the partial page [8, 9] is not cached
    assert cache.match_prefix(list(range(7))).prefix_len == 4
    assert cache.match_prefix(list(range(6)) + [99, 99]).prefix_len == 4
    assert cache.match_prefix([0, 1, 2]).prefix_len == 0
    assert cache.insert(list(range(4)) + [7, 7, 7, 7]).prefix_len == 4
    sizes_are_consistent(cache)


def test_request_lifecycle_keeps_kv_in_the_tree_and_frees_the_rest():
    cache = make_cache(pool_size=16)
    allocator = cache.token_to_kv_pool_allocator
    tokens = [1, 2, 3, 4, 5]
    slots = allocator.alloc(5)
    lock = cache.match_prefix(tokens).last_node
    cache.inc_lock_ref(lock)
    slots, lock = cache.cache_unfinished_request(tokens[:3], slots, lock, cache_protected_len=0)
    assert cache.protected_size() == 3
    cache.cache_finished_request(tokens, slots, lock, cache_protected_len=3)
    assert (cache.evictable_size(), cache.protected_size(), allocator.available_size()) == (5, 0, 11)
    # A second request with the same prompt reuses the tree's slots and frees its duplicates.
    second = allocator.alloc(5)
    cache.cache_finished_request(tokens, second, cache.root_node, cache_protected_len=0)
    assert allocator.available_size() == 11


def test_allocator_hands_out_slots_from_one_and_refuses_beyond_capacity():
    allocator = TokenToKVPoolAllocator(4)
    assert allocator.alloc(3) == [1, 2, 3]
    assert allocator.alloc(2) is None
    allocator.free([2])
    assert allocator.alloc(2) == [4, 2]
    assert allocator.available_size() == 0


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="page_size"):
        RadixCache(page_size=0)
    with pytest.raises(ValueError, match="one KV slot per token"):
        make_cache().insert([1, 2, 3], [1])
    with pytest.raises(ValueError, match="size"):
        TokenToKVPoolAllocator(0)


# -- random operation sequences -----------------------------------------------------------

# Keys grow from a few shared stems, so matches split nodes and leaves compete for eviction.
STEMS = [[], [1, 1, 2, 2], [1, 1, 3, 3, 3, 3], [2, 2, 2, 2, 2, 2]]
keys = st.builds(
    lambda stem, suffix: STEMS[stem] + suffix,
    st.integers(0, len(STEMS) - 1),
    st.lists(st.integers(0, 3), max_size=6),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("request"), keys),
        st.tuples(st.just("request"), keys),
        st.tuples(st.just("insert"), keys),
        st.tuples(st.just("match"), keys),
        st.tuples(st.just("lock"), keys),
        st.tuples(st.just("unlock"), st.integers(0, 7)),
        st.tuples(st.just("evict"), st.integers(0, 8)),
    ),
    min_size=4,
    max_size=40,
)


class MiniDriver:
    def __init__(self, page_size: int, pool_size: int) -> None:
        self.allocator = TokenToKVPoolAllocator(pool_size)
        self.cache = RadixCache(self.allocator, page_size=page_size)

    def alloc(self, n):
        return self.allocator.alloc(n)

    def free(self, slots):
        self.allocator.free(slots)

    def insert(self, key, slots):
        return self.cache.insert(key, slots).prefix_len

    def match(self, key):
        result = self.cache.match_prefix(key)
        return result.prefix_len, result.device_indices, result.last_node

    def inc_lock(self, node):
        return self.cache.inc_lock_ref(node)

    def dec_lock(self, node):
        return self.cache.dec_lock_ref(node)

    def evict(self, n):
        return self.cache.evict(n)

    def state(self):
        return (self.cache.evictable_size(), self.cache.protected_size(), self.cache.total_size(), list(self.allocator.free_slots))


class SGLangDriver:
    def __init__(self, page_size: int, pool_size: int) -> None:
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator as SGLangAllocator
        from sglang.srt.mem_cache.radix_cache import RadixCache as SGLangRadixCache

        self.allocator = SGLangAllocator(pool_size, torch.int64, "cpu", None, False)
        self.cache = SGLangRadixCache.create_simulated(mock_allocator=self.allocator, page_size=page_size)

    @staticmethod
    def _key(tokens):
        from sglang.srt.mem_cache.radix_cache import RadixKey

        return RadixKey(array("q", tokens))

    def alloc(self, n):
        slots = self.allocator.alloc(n)
        return None if slots is None else slots.tolist()

    def free(self, slots):
        self.allocator.free(torch.tensor(slots, dtype=torch.int64))

    def insert(self, key, slots):
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams

        value = torch.tensor(slots, dtype=torch.int64)
        return self.cache.insert(InsertParams(key=self._key(key), value=value)).prefix_len

    def match(self, key):
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        result = self.cache.match_prefix(MatchPrefixParams(key=self._key(key)))
        node = result.last_device_node
        return result.device_prefix_len, self.cache.path_device_indices(node).tolist(), node

    def inc_lock(self, node):
        return self.cache.inc_lock_ref(node).delta

    def dec_lock(self, node):
        return self.cache.dec_lock_ref(node).delta

    def evict(self, n):
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        return self.cache.evict(EvictParams(num_tokens=n)).num_tokens_evicted

    def state(self):
        return (
            self.cache.evictable_size(),
            self.cache.protected_size(),
            self.cache.total_size(),
            self.allocator.free_pages.tolist(),
        )


def serve_request(driver, key: list[int], page_size: int) -> tuple:
    """One request's life in SGLang's scheduler: match and lock its prefix, allocate slots
    for the rest (evicting when short), then cache its KV in the tree and unlock."""
    prefix_len, prefix_slots, node = driver.match(key)
    lock_delta = driver.inc_lock(node)
    num_needed = len(key) - prefix_len
    evicted = 0
    new_slots = driver.alloc(num_needed)
    if new_slots is None:
        evicted = driver.evict(num_needed)
        new_slots = driver.alloc(num_needed)
    if new_slots is None:
        driver.dec_lock(node)
        return prefix_len, lock_delta, evicted, None
    slots = prefix_slots + new_slots
    inserted_prefix_len = driver.insert(key, slots)
    driver.free(slots[prefix_len:inserted_prefix_len])  # duplicates of cached KV
    driver.free(slots[max(prefix_len, len(key) // page_size * page_size) :])  # the partial page
    unlock_delta = driver.dec_lock(node)
    return prefix_len, lock_delta, evicted, inserted_prefix_len, unlock_delta


def run_operations(driver, ops, page_size: int, check=None) -> list:
    """Drive a cache the way a serving loop does; record every observable result."""
    trace, locked = [], []
    for op in ops:
        kind, arg = op
        if kind == "request":
            trace.append(("request", *serve_request(driver, arg, page_size)))
        elif kind == "insert":
            slots = driver.alloc(len(arg))
            if slots is None:
                trace.append(("insert", None))
            else:
                prefix_len = driver.insert(arg, slots)
                driver.free(slots[:prefix_len])  # duplicates of cached KV
                driver.free(slots[len(arg) // page_size * page_size :])  # the partial page
                trace.append(("insert", prefix_len))
        elif kind == "match":
            prefix_len, indices, _ = driver.match(arg)
            trace.append(("match", prefix_len, indices))
        elif kind == "lock":
            prefix_len, _, node = driver.match(arg)
            locked.append(node)
            trace.append(("lock", prefix_len, driver.inc_lock(node)))
        elif kind == "unlock" and locked:
            trace.append(("unlock", driver.dec_lock(locked.pop(arg % len(locked)))))
        elif kind == "evict":
            trace.append(("evict", driver.evict(arg)))
        trace.append(("state", driver.state()))
        if check is not None:
            check()
    for node in locked:
        driver.dec_lock(node)
    trace.append(("end", driver.state()))
    return trace


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, page_size=st.sampled_from([1, 2, 4]), pool_size=st.integers(8, 40))
def test_random_operations_keep_sizes_consistent(ops, page_size, pool_size):
    driver = MiniDriver(page_size, pool_size)
    run_operations(driver, ops, page_size, check=lambda: sizes_are_consistent(driver.cache))
    assert driver.cache.protected_size() == 0
    driver.cache.evict(10**9)
    assert driver.cache.total_size() == 0
    assert sorted(driver.allocator.free_slots) == list(range(1, pool_size + 1))  # no slot leaked


# -- differential: the real SGLang 0.5.23 RadixCache --------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, page_size=st.sampled_from([1, 2, 4]), pool_size=st.integers(8, 40))
# Least recently used, not first inserted: the match refreshes the older leaf.
@example(ops=[("insert", [1, 1]), ("insert", [2, 2]), ("match", [1, 1]), ("evict", 1)], page_size=1, pool_size=16)
# A parent whose last child is evicted joins the eviction order at its own access time.
@example(
    ops=[("insert", [1, 1, 2]), ("insert", [1, 1, 3]), ("insert", [2, 2]), ("match", [1, 1]), ("evict", 5)],
    page_size=1,
    pool_size=16,
)
# Splits and matches only at page boundaries.
@example(ops=[("insert", [1, 1, 2, 2]), ("match", [1, 1, 2, 3]), ("request", [1, 1, 2, 3, 3])], page_size=2, pool_size=8)
def test_same_results_as_sglang_radix_cache(ops, page_size, pool_size):
    # Both trees stamp nodes with time.monotonic(); LRU order depends only on the order of
    # those stamps, which the same operations reproduce (no two leaves share a stamp).
    ours = run_operations(MiniDriver(page_size, pool_size), ops, page_size)
    upstream = run_operations(SGLangDriver(page_size, pool_size), ops, page_size)
    assert ours == upstream
