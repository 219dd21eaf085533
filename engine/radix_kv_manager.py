"""The SGLang way of sharing prefixes, behind the scheduler's KV-manager interface (engine.kv_manager.KVManager).

SGLang keeps no block hashes: finished requests insert their tokens into a radix tree whose
values are KV slots, and a new request takes the longest matching path, locking it so that
eviction (LRU over unlocked leaves) cannot take it away. Here the tree (engine.radix_cache)
runs with page_size = block_size over a page allocator, so every request's KV still lives in
whole blocks and the model runner reads it through the same block tables.

Mirrors: sglang.srt.managers.schedule_batch:Req.init_next_round_input, sglang.srt.mem_cache.allocation:alloc_for_extend, sglang.srt.mem_cache.common:release_kv_cache (sglang 0.5.23)
In order: match_prefix on all tokens but the last; take the slots, evicting from the tree when
the allocator runs short; insert a finished request and free the rest. alloc_for_extend takes no
lock: SGLang locks the matched node at admission, when PrefillAdder commits a request
(sglang/srt/managers/schedule_policy.py:1691 PrefillAdder._commit_prefill_admission), and our
allocate_slots is that admission point, so it locks there too.
Deliberate difference: running requests are not re-inserted after each prefill chunk (SGLang
0.5.23 publishes every finished chunk through checkpoint_kv_cache -> RadixCache.checkpoint:
sglang/srt/mem_cache/common.py:271-280 checkpoint_kv_cache,
sglang/srt/mem_cache/radix_cache.py:510 RadixCache.checkpoint), so a prompt becomes shareable
when its request finishes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.math_utils import cdiv
from engine.radix_cache import RadixCache, TreeNode
from engine.request import Request, RequestStatus


class PagedTokenAllocator:
    """KV slots handed out a page (block) at a time.

    Mirrors: sglang.srt.mem_cache.allocator.paged:PagedTokenToKVPoolAllocator (sglang 0.5.23)
    Page 0 is reserved, like vLLM's null block, so the two cache modes have the same usable pool.
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        self.page_size = page_size
        self.num_pages = num_pages
        self.free_pages: list[int] = list(range(1, num_pages))

    def available_size(self) -> int:
        return len(self.free_pages) * self.page_size

    def alloc_pages(self, n: int) -> list[int] | None:
        if n > len(self.free_pages):
            return None
        pages, self.free_pages = self.free_pages[:n], self.free_pages[n:]
        return pages

    def free(self, indices: Sequence[int]) -> None:
        """Free the pages that hold these slots (the tree frees by slot, we own whole pages)."""
        pages = sorted({int(i) // self.page_size for i in indices})
        self.free_pages.extend(pages)


class RadixPrefixHit(Sequence[int]):
    """A match_prefix hit as the scheduler carries it from get_computed_blocks to allocate_slots:
    the matched pages (what the scheduler sees) and the tree node the match ended at (what
    allocate_slots locks). Passing it explicitly keeps the manager free of per-call state."""

    __slots__ = ("pages", "last_node", "num_tokens")

    def __init__(self, pages: list[int], last_node: TreeNode, num_tokens: int) -> None:
        self.pages = pages
        self.last_node = last_node
        self.num_tokens = num_tokens

    def __getitem__(self, index):  # type: ignore[override]
        return self.pages[index]

    def __len__(self) -> int:
        return len(self.pages)

    def __repr__(self) -> str:
        return f"RadixPrefixHit(pages={self.pages}, num_tokens={self.num_tokens})"


@dataclass
class _RequestKV:
    pages: list[int] = field(default_factory=list)
    locked_node: TreeNode | None = None
    cached_len: int = 0  # leading tokens whose pages belong to the tree


class RadixKVCacheManager:
    """engine.kv_manager.KVManager with SGLang's semantics."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True, max_model_len: int | None = None) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.max_model_len = max_model_len or num_blocks * block_size
        self.allocator = PagedTokenAllocator(num_blocks, block_size)
        self.tree = RadixCache(self.allocator, page_size=block_size, disable=not enable_caching)
        self.req_kv: dict[str, _RequestKV] = {}

    @property
    def usage(self) -> float:
        return 1.0 - self.get_num_free_blocks() / max(self.num_blocks - 1, 1)

    def get_num_free_blocks(self) -> int:
        """Free pages plus pages the tree could evict: what an allocation can get."""
        return len(self.allocator.free_pages) + self.tree.evictable_size() // self.block_size

    def get_block_ids(self, request_id: str) -> list[int]:
        kv = self.req_kv.get(request_id)
        return list(kv.pages) if kv else []

    def get_computed_blocks(self, request: Request) -> tuple[RadixPrefixHit | list[int], int]:
        # Mirrors: sglang.srt.managers.schedule_batch:Req.init_next_round_input (sglang 0.5.23)
        # The last token is always recomputed, so match on all tokens but the last.
        if not self.enable_caching:
            return [], 0
        match = self.tree.match_prefix(request.all_token_ids[: request.num_tokens - 1])
        pages = [slot // self.block_size for slot in match.device_indices[:: self.block_size]]
        return RadixPrefixHit(pages, match.last_node, match.prefix_len), match.prefix_len

    def record_prefix_cache_stats(self, request: Request, num_hits: int) -> None:
        """SGLang counts cache hits in its scheduler metrics; nothing to keep here."""

    def reset_prefix_cache(self) -> bool:
        """Empty the tree (SGLang's flush_cache, which also refuses while requests hold KV)."""
        if self.req_kv:
            return False
        self.tree.evict(self.tree.evictable_size())
        self.tree.reset()
        return True

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] | None = None,
        num_lookahead_tokens: int = 0,
        full_sequence_must_fit: bool = False,
    ) -> list[int] | None:
        # Mirrors: sglang.srt.mem_cache.allocation:alloc_for_extend (sglang 0.5.23)
        # Page granularity; the lock taken here is SGLang's admission lock (PrefillAdder._commit_prefill_admission).
        kv = self.req_kv.get(request.request_id)
        hit = new_computed_blocks if kv is None and isinstance(new_computed_blocks, RadixPrefixHit) else None
        locks = hit is not None and hit.num_tokens > 0
        matched_pages = list(new_computed_blocks or [])
        have_pages = len(kv.pages) if kv else len(matched_pages)
        total = min(request.num_computed_tokens + num_new_computed_tokens + num_new_tokens, self.max_model_len)
        to_alloc = max(cdiv(total, self.block_size) - have_pages, 0)
        need = to_alloc
        if full_sequence_must_fit:
            need = max(need, cdiv(min(request.num_tokens, self.max_model_len), self.block_size) - have_pages)
        if locks:
            self.tree.inc_lock_ref(hit.last_node)  # lock before evicting, so the hit survives
        if need > len(self.allocator.free_pages):
            self.tree.evict((need - len(self.allocator.free_pages)) * self.block_size)
        if need > len(self.allocator.free_pages):
            if locks:
                self.tree.dec_lock_ref(hit.last_node)
            return None
        new_pages = self.allocator.alloc_pages(to_alloc) or []
        if kv is None:
            kv = self.req_kv[request.request_id] = _RequestKV(pages=matched_pages)
            if locks:
                kv.locked_node, kv.cached_len = hit.last_node, hit.num_tokens
        kv.pages.extend(new_pages)
        return new_pages

    def free(self, request: Request) -> None:
        # Mirrors: sglang.srt.mem_cache.common:release_kv_cache (sglang 0.5.23)
        kv = self.req_kv.pop(request.request_id, None)
        if kv is None:
            return
        slots = [p * self.block_size + i for p in kv.pages for i in range(self.block_size)]
        finished_normally = request.status in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)
        locked = kv.locked_node or self.tree.root_node
        if finished_normally and self.enable_caching:
            # The last sampled token has no KV yet: only num_computed_tokens are in the cache.
            num_kv = min(request.num_computed_tokens, len(slots))
            self.tree.cache_finished_request(request.all_token_ids[:num_kv], slots[:num_kv], locked, kv.cached_len)
            # Pages past the last token with KV were reserved but never written.
            unused = kv.pages[cdiv(num_kv, self.block_size):] if num_kv else kv.pages
            self.allocator.free([p * self.block_size for p in unused])
        else:
            if kv.locked_node is not None:
                self.tree.dec_lock_ref(kv.locked_node)
            own = kv.pages[kv.cached_len // self.block_size:]
            self.allocator.free([p * self.block_size for p in own])
