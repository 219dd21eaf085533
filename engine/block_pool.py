"""Paged KV blocks, their free queue and the prefix-cache hash map.

Mirrors: vllm.v1.core.block_pool:BlockPool, vllm.v1.core.kv_cache_utils:KVCacheBlock, vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue, vllm.v1.core.kv_cache_utils:hash_block_tokens, vllm.v1.core.kv_cache_utils:get_request_block_hasher (vllm 0.33.0)
Narrowed to one full-attention KV cache group whose hash block size equals its block size. That
narrowing drops the group id from the hash keys, partial-block hash entries, KV events,
metrics collectors and cross-pool frees; every decision that remains is upstream's:

- block 0 is the null block, popped off the free queue at start and never handed out;
- the free queue is ordered for reuse: popleft() takes the next block to reuse or evict;
- freeing puts un-hashed blocks at the front (reused first, LIFO) and hashed blocks at the
  back (evicted last, FIFO over the order they were freed in: LRU);
- a cached block stays in the hash map while it sits in the free queue and is only evicted
  from the map when get_new_blocks pops it for reuse.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

BlockHash = bytes


def sha256(obj: Any) -> bytes:
    # Mirrors: vllm.utils.hashing:sha256 (vllm 0.33.0); SHA-256 of the pickled object.
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


# Mirrors: vllm.v1.core.kv_cache_utils:init_none_hash (vllm 0.33.0) for sha256: the parent hash of a
# prompt's first block, seeded by PYTHONHASHSEED when set so hashes match vLLM's bit for bit.
NONE_HASH: BlockHash = sha256(os.getenv("PYTHONHASHSEED") or "vllm-none-hash")


def hash_block_tokens(
    parent_block_hash: BlockHash | None,
    block_token_ids: Sequence[int],
    extra_keys: tuple[Any, ...] | None = None,
) -> BlockHash:
    # Mirrors: vllm.v1.core.kv_cache_utils:hash_block_tokens (vllm 0.33.0) (hash_function=sha256)
    if not parent_block_hash:
        parent_block_hash = NONE_HASH
    return sha256((parent_block_hash, tuple(block_token_ids), extra_keys))


class HashableRequest(Protocol):
    all_token_ids: list[int]
    block_hashes: list[BlockHash]

    @property
    def num_tokens(self) -> int: ...


def update_block_hashes(request: HashableRequest, block_size: int) -> None:
    """Append to request.block_hashes the chained hash of every new full block."""
    # Mirrors: vllm.v1.core.kv_cache_utils:get_request_block_hasher (vllm 0.33.0) (request_block_hasher),
    # applied the way vllm.v1.request.Request.update_block_hashes applies it.
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    start = len(request.block_hashes) * block_size
    parent = request.block_hashes[-1] if request.block_hashes else None
    while start + block_size <= request.num_tokens:
        parent = hash_block_tokens(parent, request.all_token_ids[start : start + block_size])
        request.block_hashes.append(parent)
        start += block_size


@dataclass(eq=False)
class KVCacheBlock:
    """Metadata of one KV block.

    Mirrors: vllm.v1.core.kv_cache_utils:KVCacheBlock (vllm 0.33.0)
    """

    block_id: int
    ref_cnt: int = 0
    # Set only while the block is full and in the prefix cache.
    block_hash: BlockHash | None = None
    # Links of the free queue; only FreeKVCacheBlockQueue touches them.
    prev_free_block: KVCacheBlock | None = None
    next_free_block: KVCacheBlock | None = None
    is_null: bool = False

    def reset_hash(self) -> None:
        self.block_hash = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(block_id={self.block_id}, ref_cnt={self.ref_cnt}, cached={self.block_hash is not None})"


class FreeKVCacheBlockQueue:
    """Doubly linked list of free blocks in reuse order, with O(1) removal from the middle.

    Mirrors: vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue (vllm 0.33.0); a deque cannot remove a
    block that a prefix hit revives, so the links live on the blocks themselves, between a
    fake head and a fake tail that are never popped.
    """

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self.num_free_blocks = len(blocks)
        self.fake_free_list_head = KVCacheBlock(block_id=-1)
        self.fake_free_list_tail = KVCacheBlock(block_id=-1)
        previous = self.fake_free_list_head
        for block in blocks:
            previous.next_free_block = block
            block.prev_free_block = previous
            previous = block
        previous.next_free_block = self.fake_free_list_tail
        self.fake_free_list_tail.prev_free_block = previous

    def popleft(self) -> KVCacheBlock:
        # Mirrors: vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue.popleft (vllm 0.33.0)
        first = self.fake_free_list_head.next_free_block
        if first is self.fake_free_list_tail:
            raise ValueError("No free blocks available")
        self.remove(first)
        return first

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        # Mirrors: vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue.popleft_n (vllm 0.33.0)
        if n > self.num_free_blocks:
            raise ValueError(f"cannot pop {n} blocks from a queue of {self.num_free_blocks}")
        return [self.popleft() for _ in range(n)]

    def remove(self, block: KVCacheBlock) -> None:
        # Mirrors: vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue.remove (vllm 0.33.0)
        prev_block, next_block = block.prev_free_block, block.next_free_block
        if prev_block is None or next_block is None:
            raise RuntimeError(f"remove() called on a block that is not in the free queue: {block}")
        prev_block.next_free_block = next_block
        next_block.prev_free_block = prev_block
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        # Mirrors: vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue.prepend_n (vllm 0.33.0); blocks[0]
        # becomes the new front.
        anchor = self.fake_free_list_head
        for block in reversed(blocks):
            self._insert_after(anchor, block)

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        # Mirrors: vllm.v1.core.kv_cache_utils:FreeKVCacheBlockQueue.append_n (vllm 0.33.0)
        for block in blocks:
            self._insert_after(self.fake_free_list_tail.prev_free_block, block)

    def _insert_after(self, anchor: KVCacheBlock, block: KVCacheBlock) -> None:
        following = anchor.next_free_block
        anchor.next_free_block = block
        block.prev_free_block = anchor
        block.next_free_block = following
        following.prev_free_block = block
        self.num_free_blocks += 1

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        """The free blocks from front (next reused) to back (evicted last)."""
        blocks = []
        current = self.fake_free_list_head.next_free_block
        while current is not self.fake_free_list_tail:
            blocks.append(current)
            current = current.next_free_block
        return blocks


class BlockPool:
    """All KV blocks of one pool: allocation, freeing, and the prefix-cache hash map.

    Mirrors: vllm.v1.core.block_pool:BlockPool (vllm 0.33.0) for a single KV cache group.
    """

    def __init__(self, num_gpu_blocks: int, enable_caching: bool) -> None:
        if not isinstance(num_gpu_blocks, int) or num_gpu_blocks < 2:
            raise ValueError(f"num_gpu_blocks must be an int >= 2 (block 0 is the null block), got {num_gpu_blocks!r}")
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(block_id) for block_id in range(num_gpu_blocks)]
        self.free_block_queue = FreeKVCacheBlockQueue(self.blocks)
        # block hash -> {block_id: block}. Identical full blocks of two requests are not
        # deduplicated (block tables stay append-only), so one hash may map to several
        # blocks; lookups return the first one cached.
        self.cached_block_hash_to_block: dict[BlockHash, dict[int, KVCacheBlock]] = {}
        # A placeholder that tables may point at; its ref_cnt is never maintained.
        self.null_block = self.free_block_queue.popleft()
        self.null_block.is_null = True

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        # Mirrors: vllm.v1.core.block_pool:BlockPool.get_cached_block (vllm 0.33.0)
        blocks = self.cached_block_hash_to_block.get(block_hash)
        return next(iter(blocks.values())) if blocks else None

    def cache_full_blocks(
        self,
        request: HashableRequest,
        blocks: list[KVCacheBlock],
        num_cached_blocks: int,
        num_full_blocks: int,
    ) -> None:
        """Put blocks[num_cached_blocks:num_full_blocks] in the prefix cache under the
        request's block hashes (computed when its tokens arrived, see update_block_hashes)."""
        # Mirrors: vllm.v1.core.block_pool:BlockPool.cache_full_blocks (vllm 0.33.0)
        if num_cached_blocks >= num_full_blocks:
            return
        block_hashes = request.block_hashes
        if len(block_hashes) < num_full_blocks:
            raise ValueError(f"{num_full_blocks} full blocks but only {len(block_hashes)} block hashes")
        for block_index in range(num_cached_blocks, num_full_blocks):
            block = blocks[block_index]
            if block.is_null:
                continue
            assert block.block_hash is None, f"block {block.block_id} is already cached"
            block.block_hash = block_hashes[block_index]
            self.cached_block_hash_to_block.setdefault(block.block_hash, {})[block.block_id] = block

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take num_blocks from the front of the free queue, evicting their cached hashes."""
        # Mirrors: vllm.v1.core.block_pool:BlockPool.get_new_blocks (vllm 0.33.0)
        if num_blocks > self.get_num_free_blocks():
            raise ValueError(f"Cannot get {num_blocks} free blocks from the pool")
        blocks = self.free_block_queue.popleft_n(num_blocks)
        for block in blocks:
            if self.enable_caching:
                self._maybe_evict_cached_block(block)
            assert block.ref_cnt == 0
            block.ref_cnt += 1
        return blocks

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        # Mirrors: vllm.v1.core.block_pool:BlockPool._maybe_evict_cached_block (vllm 0.33.0)
        if block.block_hash is None:
            return False
        same_hash = self.cached_block_hash_to_block.get(block.block_hash, {})
        evicted = same_hash.pop(block.block_id, None) is not None
        if not same_hash:
            self.cached_block_hash_to_block.pop(block.block_hash, None)
        block.reset_hash()
        return evicted

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on prefix-hit blocks, reviving any that sat in the free queue."""
        # Mirrors: vllm.v1.core.block_pool:BlockPool.touch (vllm 0.33.0)
        for block in blocks:
            if block.is_null:
                continue
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference on each block; ordered_blocks lists the first to evict first."""
        # Mirrors: vllm.v1.core.block_pool:BlockPool.free_blocks (vllm 0.33.0)
        evict_first: list[KVCacheBlock] = []
        evict_last: list[KVCacheBlock] = []
        for block in ordered_blocks:
            if block.is_null:
                continue
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of block {block.block_id}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None or not self.enable_caching:
                    evict_first.append(block)  # can never be a prefix hit: reuse first
                else:
                    evict_last.append(block)  # may still be hit: keep, in LRU order
        self.free_block_queue.prepend_n(evict_first)
        self.free_block_queue.append_n(evict_last)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any request holds a block."""
        # Mirrors: vllm.v1.core.block_pool:BlockPool.reset_prefix_cache (vllm 0.33.0)
        if self.num_gpu_blocks - self.get_num_free_blocks() != 1:  # the null block is always used
            return False
        self.cached_block_hash_to_block = {}
        for block in self.blocks:
            block.reset_hash()
        return True

    def get_num_free_blocks(self) -> int:
        # Mirrors: vllm.v1.core.block_pool:BlockPool.get_num_free_blocks (vllm 0.33.0)
        return self.free_block_queue.num_free_blocks

    def get_usage(self) -> float:
        # Mirrors: vllm.v1.core.block_pool:BlockPool.get_usage (vllm 0.33.0) (the null block is not counted)
        return 1.0 - self.get_num_free_blocks() / (self.num_gpu_blocks - 1)
