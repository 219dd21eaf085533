"""SGLang's KV bookkeeping for one request: its req_to_token row, the part of it the radix tree
owns, the lock on its tree path; and the pool operations of an extend and a decode.

Mirrors: sglang.srt.mem_cache.allocation:alloc_for_extend, sglang.srt.mem_cache.common:release_kv_cache (sglang 0.5.23)
The pool is KV slots (page_size slots a page, page 0 reserved) over engine.radix_cache's tree,
which already reproduces SGLang's RadixCache results. Slot ids never reach a scheduling
decision (only counts do), so a freed page goes to the back of the free list as SGLang's
allocators (need_sort=False) put it, and nothing more about the order is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.math_utils import cdiv
from engine.radix_cache import RadixCache, TreeNode
from engine.radix_kv_manager import PagedTokenAllocator


@dataclass
class ReqKV:
    """Mirrors: sglang.srt.managers.schedule_batch:Req (sglang 0.5.23)
    Its KV state only: prefix_len, extend_end, last_node / lock, and kv.{kv_committed_len,
    kv_allocated_len, cache_protected_len}."""

    row: list[int] = field(default_factory=list)  # req_to_token[row, :allocated]
    prefix_len: int = 0
    prefix_slots: list[int] = field(default_factory=list)  # the match's device indices
    last_node: TreeNode | None = None
    lock: TreeNode | None = None
    extend_end: int = 0
    committed: int = 0
    cache_protected_len: int = 0
    num_matched_prefix_tokens: int = 0
    req: Any = None  # the request this state is for: handed to the tree's lookups, as match_kv_cache hands its Req

    @property
    def holds_kv(self) -> bool:
        return bool(self.row)


class SglangKV:
    """The tree and the pool, and the request-level operations SGLang runs on them."""

    def __init__(self, num_pages: int, page_size: int, enable_caching: bool) -> None:
        self.page_size = self.block_size = page_size
        self.num_pages = num_pages
        self.pool = PagedTokenAllocator(num_pages, page_size)  # SGLang's paged allocator (token allocator at page size 1)
        self.tree = RadixCache(None, page_size=page_size, disable=not enable_caching)
        self.tree.token_to_kv_pool_allocator = self.pool  # the tree frees evicted slots into the pool

    # -- capacity --------------------------------------------------------------------

    # The two views the engine's tracing and tests read off any KV manager (engine.kv_manager.KVManager).
    def get_num_free_blocks(self) -> int:
        """Free pages plus what the tree could evict."""
        return self.available_and_evictable() // self.page_size

    @property
    def usage(self) -> float:
        return 1.0 - self.get_num_free_blocks() / max(self.num_pages - 1, 1)

    def available_and_evictable(self) -> int:
        # Mirrors: sglang.srt.mem_cache.prefill_budget:PrefillBudget._available_and_evictable (sglang 0.5.23)
        return self.pool.available_size() + self.tree.evictable_size()

    def evict_to_free_tokens(self, num_tokens: int) -> None:
        # Mirrors: sglang.srt.mem_cache.allocator.base:BaseTokenToKVPoolAllocator.evict_to_free_tokens (sglang 0.5.23)
        shortfall = num_tokens - self.pool.available_size()
        if shortfall > 0 and not self.tree.disable:
            self.tree.evict(shortfall)

    def check_decode_capacity(self, kvs: list[ReqKV]) -> bool:
        # Mirrors: sglang.srt.managers.schedule_batch:ScheduleBatch.check_decode_mem (sglang 0.5.23)
        # A decode needs a new page for each request whose committed KV ends on a page boundary;
        # checking evicts (sglang/srt/mem_cache/allocator/base.py:171-185 BaseTokenToKVPoolAllocator.check_decode_capacity).
        num_tokens = sum(1 for kv in kvs if kv.committed % self.page_size == 0) * self.page_size
        self.evict_to_free_tokens(num_tokens)
        return self.pool.available_size() >= num_tokens

    # -- prefix match and lock ---------------------------------------------------------

    def match(self, kv: ReqKV, token_ids: list[int], next_round: bool = False) -> int:
        # Mirrors: sglang.srt.mem_cache.common:match_kv_cache (sglang 0.5.23); adopts the hit as the prefix.
        result = self.tree.match_prefix(token_ids, req=kv.req)
        kv.prefix_len, kv.prefix_slots, kv.last_node = result.prefix_len, result.device_indices, result.last_node
        # What lpm sorts by: the hit capped one token short of the ids matched, not page-aligned
        # (sglang/srt/mem_cache/common.py:260-261 match_kv_cache, with
        # sglang/srt/managers/schedule_batch.py:1766-1768 Req._compute_max_prefix_len): a waiting request whose whole prompt is
        # cached sorts below one that hits as many tokens and has more after them.
        kv.num_matched_prefix_tokens = min(result.prefix_len, max(len(token_ids) - 1, 0))
        if next_round:
            # Req.init_next_round_input (schedule_batch.py:1692): the hit is the tree's, not the request's to free.
            kv.cache_protected_len = result.prefix_len
        return result.prefix_len

    def lock(self, node: TreeNode | None) -> TreeNode:
        node = node or self.tree.root_node
        self.tree.inc_lock_ref(node)
        return node

    def unlock(self, node: TreeNode | None) -> None:
        if node is not None:
            self.tree.dec_lock_ref(node)

    # -- extend and decode -----------------------------------------------------------------

    def alloc_for_extend(self, kvs: list[ReqKV], extend_lens: list[int]) -> None:
        # Mirrors: sglang.srt.mem_cache.allocation:alloc_for_extend (sglang 0.5.23) (evict first: :152
        # alloc_token_slots for page 1, :175 alloc_paged_token_slots_extend's extend + bs * page_size)
        p = self.page_size
        total = sum(extend_lens)
        self.evict_to_free_tokens(total if p == 1 else total + len(kvs) * p)
        for kv, extend_len in zip(kvs, extend_lens):
            if not kv.row:
                kv.row = list(kv.prefix_slots)  # _prefix_kv_indices (allocation.py:363)
            seq_len = kv.prefix_len + extend_len
            have = cdiv(len(kv.row), p) if kv.row else 0
            pages = self.pool.alloc_pages(cdiv(seq_len, p) - have)
            if pages is None:
                raise RuntimeError("alloc_for_extend: out of KV slots the admission budget promised")
            kv.row = self._extend_row(kv.row, pages, seq_len)
            kv.committed = seq_len

    def alloc_for_decode(self, kvs: list[ReqKV]) -> None:
        # Mirrors: sglang.srt.mem_cache.allocation:alloc_for_decode_default (sglang 0.5.23)
        p = self.page_size
        self.evict_to_free_tokens(len(kvs) * p)
        for kv in kvs:
            pages: list[int] | None = []
            if kv.committed % p == 0:  # the last page is full: the next token starts a new one
                pages = self.pool.alloc_pages(1)
                if pages is None:
                    raise RuntimeError("alloc_for_decode: out of KV slots after check_decode_mem")
            kv.row = self._extend_row(kv.row, pages, kv.committed + 1)
            kv.committed += 1

    def _extend_row(self, row: list[int], pages: list[int], seq_len: int) -> list[int]:
        """Slots up to seq_len: the rest of the last partial page first, then the new pages."""
        p = self.page_size
        slots = list(row)
        if slots and len(slots) % p:
            last_page = slots[-1] // p
            slots += [last_page * p + i for i in range(len(slots) % p, p)]
        for page in pages:
            slots += [page * p + i for i in range(p)]
        return slots[:seq_len]

    # -- publishing and releasing ------------------------------------------------------

    def checkpoint(self, kv: ReqKV, token_ids: list[int], num_prompt_tokens: int, up_to: int) -> None:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.checkpoint (sglang 0.5.23)
        # (sglang/srt/mem_cache/radix_cache.py:510-543 RadixCache.checkpoint, with RadixCache._insert_cache's
        # split_prompt)
        if self.tree.disable:
            return
        p = self.page_size
        key_len = up_to // p * p
        key = token_ids[:key_len]
        result = self.tree.insert(key, kv.row[:key_len])
        prompt_len = num_prompt_tokens // p * p
        if 0 < prompt_len < key_len:
            # Split the leaf at the prompt boundary, so eviction can take the outputs alone.
            self.tree.insert(key[:prompt_len], kv.row[:prompt_len])
        self.pool.free(kv.row[kv.cache_protected_len:result.prefix_len])  # duplicates of what the tree held
        match = self.tree.match_prefix(key)
        kv.row[:len(match.device_indices)] = match.device_indices
        kv.cache_protected_len = len(match.device_indices)
        self.unlock(kv.lock)
        kv.lock = kv.last_node = self.lock(match.last_node)

    def checkpoint_unfinished(self, kv: ReqKV, token_ids: list[int], num_prompt_tokens: int) -> None:
        # Mirrors: sglang.srt.mem_cache.common:checkpoint_kv_cache (sglang 0.5.23)
        self.checkpoint(kv, token_ids, num_prompt_tokens, kv.extend_end)
        kv.prefix_len = kv.extend_end

    def release(self, kv: ReqKV, token_ids: list[int], num_prompt_tokens: int, checkpoint: bool) -> None:
        # Mirrors: sglang.srt.mem_cache.common:release_kv_cache (sglang 0.5.23)
        if not kv.holds_kv:
            return
        owned = kv.committed
        if checkpoint:
            self.checkpoint(kv, token_ids, num_prompt_tokens, owned)
        self.pool.free(kv.row[kv.cache_protected_len:])  # own part, and any over-allocation past it
        self.unlock(kv.lock)
        kv.lock, kv.row = None, []

    def retract(self, kv: ReqKV, remaining: int, retract_decode_steps: int) -> None:
        # Mirrors: sglang.srt.managers.schedule_batch:release_req (sglang 0.5.23), then Req.reset_for_retract
        self.release(kv, [], 0, checkpoint=False)
        self.evict_to_free_tokens(remaining * retract_decode_steps)  # use the freed room at once
        kv.prefix_len = kv.cache_protected_len = kv.committed = kv.num_matched_prefix_tokens = 0
        kv.last_node, kv.prefix_slots, kv.extend_end = None, [], 0
