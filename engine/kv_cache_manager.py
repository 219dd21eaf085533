"""The scheduler's view of the paged KV cache: prefix hits, slot allocation, freeing.

Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager (vllm 0.33.0)
For a model with one full-attention KV cache group, with the coordinator (UnitaryKVCacheCoordinator, or
KVCacheCoordinatorNoPrefixCache when caching is off) and the single-type manager
(single_type_kv_cache_manager.FullAttentionManager) flattened into this one class.
Left out because this engine has no use for them: KV connectors and external tokens,
encoder / cross-attention, EAGLE, sliding windows, partial-block hits, KV events, the
watermark (0 by default upstream). Upstream returns KVCacheBlocks (one list per group);
with one group this returns the list itself.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from engine.block_pool import BlockPool, KVCacheBlock
from engine.math_utils import cdiv
from engine.request import Request


@dataclass
class PrefixCacheStats:
    """Prefix-cache hit statistics since the last make_prefix_cache_stats().

    Mirrors: vllm.v1.metrics.stats:PrefixCacheStats (vllm 0.33.0); queries and hits count tokens;
    requests resumed after preemption are counted apart.
    """

    reset: bool = False
    requests: int = 0
    queries: int = 0
    hits: int = 0
    preempted_requests: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0

    def record(self, num_tokens: int, num_hits: int, preempted: bool) -> None:
        # Mirrors: vllm.v1.metrics.stats:PrefixCacheStats.record (vllm 0.33.0)
        if preempted:
            self.preempted_requests += 1
            self.preempted_queries += num_tokens
            self.preempted_hits += num_hits
        else:
            self.requests += 1
            self.queries += num_tokens
            self.hits += num_hits


class KVCacheManager:
    """engine.kv_manager.KVManager with vLLM's semantics: hash prefix caching over a BlockPool."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        max_model_len: int | None = None,
        log_stats: bool = True,
    ) -> None:
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        # None: no model-length cap beyond what the pool can hold.
        self.max_model_len = max_model_len if max_model_len is not None else num_blocks * block_size
        self.log_stats = log_stats
        self.prefix_cache_stats: PrefixCacheStats | None = PrefixCacheStats() if log_stats else None
        self.block_pool = BlockPool(num_blocks, enable_caching)
        # request id -> its blocks, in token order (FullAttentionManager.req_to_blocks).
        self.req_to_blocks: defaultdict[str, list[KVCacheBlock]] = defaultdict(list)
        # request id -> how many of its leading blocks are in the prefix cache. Only
        # running requests are tracked; a preempted request starts over.
        self.num_cached_block: dict[str, int] = {}

    # -- queries -------------------------------------------------------------------------

    @property
    def usage(self) -> float:
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.usage (vllm 0.33.0)
        return self.block_pool.get_usage()

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def get_blocks(self, request_id: str) -> list[KVCacheBlock]:
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.get_blocks (vllm 0.33.0)
        return list(self.req_to_blocks.get(request_id) or [])

    def get_block_ids(self, request_id: str) -> list[int]:
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.get_block_ids (vllm 0.33.0) (one group)
        return [block.block_id for block in self.req_to_blocks.get(request_id) or []]

    # -- prefix cache ----------------------------------------------------------------------

    def get_computed_blocks(
        self, request: Request, max_cache_hit_length: int | None = None
    ) -> tuple[list[KVCacheBlock], int]:
        """The longest run of cached full blocks at the start of the request, and its length
        in tokens. Nothing is reserved yet: allocate_slots takes the references."""
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.get_computed_blocks (vllm 0.33.0)
        if not self.enable_caching:
            return [], 0
        # A full hit must still recompute the last token to get its logits; hits are whole
        # blocks, so that can mean recomputing the whole last block.
        if max_cache_hit_length is None:
            max_cache_hit_length = request.num_tokens - 1
        # Mirrors: vllm.v1.core.single_type_kv_cache_manager:FullAttentionManager.find_longest_cache_hit (vllm 0.33.0)
        computed_blocks: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[: max_cache_hit_length // self.block_size]:
            cached_block = self.block_pool.get_cached_block(block_hash)
            if cached_block is None:
                break  # hashes are chained: after one miss, every later block misses too
            computed_blocks.append(cached_block)
        return computed_blocks, len(computed_blocks) * self.block_size

    def record_prefix_cache_stats(self, request: Request, num_hits: int) -> None:
        """Count a request's lookup; vLLM's scheduler calls this once the request is admitted,
        so lookups of requests that did not fit are not counted."""
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.record_prefix_cache_stats (vllm 0.33.0)
        if self.prefix_cache_stats is None or not self.enable_caching:
            return
        self.prefix_cache_stats.record(request.num_tokens, num_hits, preempted=request.num_preemptions > 0)

    def make_prefix_cache_stats(self) -> PrefixCacheStats | None:
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.make_prefix_cache_stats (vllm 0.33.0)
        if self.prefix_cache_stats is None:
            return None
        stats, self.prefix_cache_stats = self.prefix_cache_stats, PrefixCacheStats()
        return stats

    def reset_prefix_cache(self) -> bool:
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.reset_prefix_cache (vllm 0.33.0)
        if not self.block_pool.reset_prefix_cache():
            return False
        if self.prefix_cache_stats is not None:
            self.prefix_cache_stats.reset = True
        return True

    # -- allocation ------------------------------------------------------------------------

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[KVCacheBlock] | None = None,
        num_lookahead_tokens: int = 0,
        full_sequence_must_fit: bool = False,
    ) -> list[KVCacheBlock] | None:
        """Give the request slots for num_new_tokens more tokens (after its computed ones and
        the prefix hit new_computed_blocks). Returns the newly allocated blocks, or None,
        changing nothing, when the pool cannot supply them."""
        # Mirrors: vllm.v1.core.kv_cache_manager:KVCacheManager.allocate_slots (vllm 0.33.0)
        if num_new_tokens == 0 and num_new_computed_tokens == 0:
            raise ValueError("num_new_tokens must be greater than 0 when there are no computed tokens to adopt")
        if num_new_tokens < 0 or num_new_computed_tokens < 0 or num_lookahead_tokens < 0:
            raise ValueError("token counts passed to allocate_slots must not be negative")
        new_computed_blocks = list(new_computed_blocks or [])
        if len(new_computed_blocks) * self.block_size != num_new_computed_tokens:
            raise ValueError(
                f"{len(new_computed_blocks)} computed blocks do not cover {num_new_computed_tokens} computed tokens"
            )

        total_computed_tokens = min(request.num_computed_tokens + num_new_computed_tokens, self.max_model_len)

        if full_sequence_must_fit:
            # Admission gate (vLLM's scheduler_reserve_full_isl, on by default): a waiting
            # request is admitted only if its whole sequence fits, not just its first chunk,
            # so chunked prefill cannot over-admit and thrash.
            full_num_tokens = min(request.num_tokens, self.max_model_len)
            if self._get_num_blocks_to_allocate(
                request.request_id, full_num_tokens, new_computed_blocks
            ) > self.block_pool.get_num_free_blocks():
                return None
        num_tokens_need_slot = min(total_computed_tokens + num_new_tokens + num_lookahead_tokens, self.max_model_len)

        num_blocks_to_allocate = self._get_num_blocks_to_allocate(
            request.request_id, num_tokens_need_slot, new_computed_blocks
        )
        if num_blocks_to_allocate > self.block_pool.get_num_free_blocks():
            return None

        if new_computed_blocks:
            # Take the hit blocks first, so allocating the new blocks cannot evict them.
            self._add_computed_blocks(request.request_id, new_computed_blocks)
        new_blocks = self._allocate_new_blocks(request.request_id, num_tokens_need_slot)

        # Cache full blocks as soon as they are scheduled, not once computed: a request
        # admitted in the same step may then hit them. Lookahead tokens are not final.
        self.cache_blocks(request, min(total_computed_tokens + num_new_tokens, request.num_tokens))
        return new_blocks

    def _get_num_blocks_to_allocate(
        self, request_id: str, num_tokens: int, new_computed_blocks: Sequence[KVCacheBlock]
    ) -> int:
        # Mirrors: vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager.get_num_blocks_to_allocate (vllm 0.33.0)
        num_required_blocks = cdiv(num_tokens, self.block_size)
        num_req_blocks = len(self.req_to_blocks.get(request_id, ()))
        if request_id in self.num_cached_block:
            # A running request has no new prefix hits.
            assert not new_computed_blocks
            return max(num_required_blocks - num_req_blocks, 0)
        num_new_blocks = max(num_required_blocks - (len(new_computed_blocks) + num_req_blocks), 0)
        # A hit block with no references sits in the free queue; touching it takes it out,
        # so it costs a free block just like a new one.
        num_evictable_blocks = sum(block.ref_cnt == 0 and not block.is_null for block in new_computed_blocks)
        return num_new_blocks + num_evictable_blocks

    def _add_computed_blocks(self, request_id: str, new_computed_blocks: list[KVCacheBlock]) -> None:
        # Mirrors: vllm.v1.core.kv_cache_coordinator:KVCacheCoordinator.allocate_new_computed_blocks (vllm 0.33.0)
        # and SingleTypeKVCacheManager.add_local_computed_blocks
        if request_id in self.num_cached_block:
            raise ValueError(f"request {request_id!r} is running and cannot take new prefix-hit blocks")
        request_blocks = self.req_to_blocks[request_id]
        assert not request_blocks, "prefix-hit blocks are only added on a request's first allocation"
        self.block_pool.touch(new_computed_blocks)
        request_blocks.extend(new_computed_blocks)
        self.num_cached_block[request_id] = len(request_blocks)

    def _allocate_new_blocks(self, request_id: str, num_tokens: int) -> list[KVCacheBlock]:
        # Mirrors: vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager.allocate_new_blocks (vllm 0.33.0)
        request_blocks = self.req_to_blocks[request_id]
        num_new_blocks = cdiv(num_tokens, self.block_size) - len(request_blocks)
        if num_new_blocks <= 0:
            return []
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
        request_blocks.extend(new_blocks)
        return new_blocks

    def cache_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Put the request's full blocks among its first num_computed_tokens in the prefix cache."""
        # Mirrors: vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager.cache_blocks (vllm 0.33.0)
        if not self.enable_caching:
            return
        num_cached_blocks = self.num_cached_block.get(request.request_id, 0)
        num_full_blocks = min(num_computed_tokens, len(request.block_hashes) * self.block_size) // self.block_size
        if num_cached_blocks >= num_full_blocks:
            return
        self.block_pool.cache_full_blocks(
            request, self.req_to_blocks[request.request_id], num_cached_blocks, num_full_blocks
        )
        self.num_cached_block[request.request_id] = num_full_blocks

    def free(self, request: Request) -> None:
        """Release the request's blocks (finish, abort or preemption). Cached blocks stay
        hittable in the free queue until reused."""
        # Mirrors: vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager.free (vllm 0.33.0)
        request_blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_block.pop(request.request_id, None)
        # Reverse order: a request's tail blocks are the least likely to be shared, so
        # they are evicted first.
        self.block_pool.free_blocks(reversed(request_blocks))
