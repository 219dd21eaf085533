"""SGLang-style prefix cache: a radix tree of token ids whose values are KV slot indices.

Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache (sglang 0.5.23)
The classic Python tree (a live 0.5.23 server uses UnifiedRadixCache, which keeps these
semantics) with the LRU eviction policy. Values are plain lists of slot indices from TokenToKVPoolAllocator
below instead of int64 tensors. Left out: EAGLE bigram keys, extra_key / cache_salt
namespaces, priorities and hit counts (only the non-default eviction policies read them),
KV events, metrics, host (HiCache) tiers.

Decisions that reproduce upstream's results exactly:
- keys are cut to a multiple of page_size before matching or inserting, and children are
  keyed by their first page (a token when page_size is 1);
- a match that ends inside a node splits it, so the match ends on a node boundary;
- one access time per match / insert stamps every node on the path; a node created by a
  split or an insert is stamped when created (later), like upstream's TreeNode();
- evict() pops unlocked leaves oldest-first and pushes a parent once it becomes a leaf.
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


class TokenToKVPoolAllocator:
    """Free list of KV slots, one slot per token.

    Mirrors: sglang.srt.mem_cache.allocator.token:TokenToKVPoolAllocator (sglang 0.5.23) (need_sort=False):
    slot 0 is reserved for padded tokens, allocation takes slots from the front of the free
    list and freed slots go to the back.
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size = size
        self.page_size = 1
        self.clear()

    def clear(self) -> None:
        self.free_slots: list[int] = list(range(1, self.size + 1))

    def available_size(self) -> int:
        return len(self.free_slots)

    def alloc(self, need_size: int) -> list[int] | None:
        # Mirrors: sglang.srt.mem_cache.allocator.token:TokenToKVPoolAllocator.alloc (sglang 0.5.23)
        if need_size < 0:
            raise ValueError(f"cannot allocate {need_size} slots")
        if need_size > len(self.free_slots):
            return None
        selected, self.free_slots = self.free_slots[:need_size], self.free_slots[need_size:]
        return selected

    def free(self, indices: Sequence[int]) -> None:
        # Mirrors: sglang.srt.mem_cache.allocator.token:TokenToKVPoolAllocator.free (sglang 0.5.23)
        self.free_slots.extend(int(i) for i in indices)


class TreeNode:
    """Mirrors: sglang.srt.mem_cache.radix_cache:TreeNode (sglang 0.5.23)."""

    counter = 0  # upstream's ids: one class-wide counter, so a node keeps its id for its whole life

    def __init__(self, now: float) -> None:
        self.id = TreeNode.counter
        TreeNode.counter += 1
        self.children: dict[int | tuple[int, ...], TreeNode] = {}
        self.parent: TreeNode | None = None
        self.key: list[int] = []
        self.value: list[int] | None = None
        self.lock_ref = 0
        self.last_access_time = now
        self.creation_time = now

    def __lt__(self, other: TreeNode) -> bool:
        return self.last_access_time < other.last_access_time

    def __repr__(self) -> str:
        return f"TreeNode(key={self.key[:8]}{'...' if len(self.key) > 8 else ''}, len={len(self.key)}, lock_ref={self.lock_ref})"


@dataclass
class MatchResult:
    """device_indices: KV slots of the matched prefix; last_node: where the match ended."""

    device_indices: list[int]
    last_node: TreeNode

    @property
    def prefix_len(self) -> int:
        return len(self.device_indices)


@dataclass
class InsertResult:
    """prefix_len: how many leading tokens of the key were already in the tree."""

    prefix_len: int
    last_node: TreeNode


class RadixCache:
    def __init__(
        self,
        token_to_kv_pool_allocator: TokenToKVPoolAllocator | None = None,
        page_size: int = 1,
        disable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(page_size, int) or page_size <= 0:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.page_size = page_size
        self.disable = disable
        self.clock = clock
        self.evictable_leaves: set[TreeNode] = set()
        self.reset()

    # -- public API ------------------------------------------------------------------------

    def reset(self) -> None:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.reset (sglang 0.5.23)
        self.root_node = TreeNode(self.clock())
        self.root_node.value = []
        self.root_node.lock_ref = 1  # the root is never evicted
        self.evictable_size_ = 0
        self.protected_size_ = 0
        self.evictable_leaves.clear()

    def match_prefix(self, key: Sequence[int], req: object | None = None) -> MatchResult:
        """Longest cached prefix of key (cut to whole pages). May split a node. `req`: the request
        the lookup is for, as SGLang's MatchPrefixParams.req (base_prefix_cache.py:72); the tree
        never reads it (a lookup on the tree's own behalf, as checkpoint's, passes none)."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.match_prefix (sglang 0.5.23)
        key = self._page_aligned(list(key))
        if self.disable or not key:
            return MatchResult([], self.root_node)
        values, last_node = self._match_prefix_helper(self.root_node, key)
        return MatchResult([slot for value in values for slot in value], last_node)

    def touch_prefix(self, key: Sequence[int]) -> None:
        """Refresh the access stamps of key's cached prefix (and split, as a match does); no result,
        no request: the waiting-prefix refresh keeps LRU's order, it looks nothing up for anyone."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.touch_prefix (sglang 0.5.23)
        key = self._page_aligned(list(key))
        if self.disable or not key:
            return
        self._match_prefix_helper(self.root_node, key)

    def insert(self, key: Sequence[int], value: Sequence[int] | None = None) -> InsertResult:
        """Add key -> value (KV slots, one per token); only the part past the longest
        existing prefix is stored. The caller owns the duplicate slots of that prefix."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.insert (sglang 0.5.23)
        if self.disable:
            return InsertResult(0, self.root_node)
        key = self._page_aligned(list(key))
        if value is None:
            value = list(key)  # upstream's debug fallback: the token ids stand in for slots
        elif len(value) < len(key):
            raise ValueError(f"insert needs one KV slot per token: {len(key)} tokens, {len(value)} slots")
        prefix_len, last_node = self._insert_helper(self.root_node, key, list(value[: len(key)]))
        return InsertResult(prefix_len, last_node)

    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots of unlocked leaves, least recently used first
        (fewer if not enough is evictable). Returns how many were freed."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.evict (sglang 0.5.23) (LRUStrategy)
        if self.disable:
            return 0
        eviction_heap = [(node.last_access_time, node) for node in self.evictable_leaves]
        heapq.heapify(eviction_heap)
        num_evicted = 0
        while num_evicted < num_tokens and eviction_heap:
            _, node = heapq.heappop(eviction_heap)
            if self.token_to_kv_pool_allocator is not None:
                self.token_to_kv_pool_allocator.free(node.value)
            num_evicted += len(node.value)
            self._delete_leaf(node)
            parent = node.parent
            if not parent.children and parent.lock_ref == 0:
                heapq.heappush(eviction_heap, (parent.last_access_time, parent))
        return num_evicted

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Protect node and its ancestors from eviction; returns the change in evictable size."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.inc_lock_ref (sglang 0.5.23)
        if self.disable:
            return 0
        delta = 0
        while node is not self.root_node:
            if node.lock_ref == 0:
                self.evictable_size_ -= len(node.key)
                self.protected_size_ += len(node.key)
                delta -= len(node.key)
            node.lock_ref += 1
            self._update_leaf_status(node)
            node = node.parent
        return delta

    def dec_lock_ref(self, node: TreeNode) -> int:
        """Undo one inc_lock_ref(node); returns the change in evictable size."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.dec_lock_ref (sglang 0.5.23)
        if self.disable:
            return 0
        delta = 0
        while node is not self.root_node:
            if node.lock_ref <= 0:
                raise RuntimeError(f"dec_lock_ref on an unlocked node {node!r}")
            if node.lock_ref == 1:
                self.evictable_size_ += len(node.key)
                self.protected_size_ -= len(node.key)
                delta += len(node.key)
            node.lock_ref -= 1
            self._update_leaf_status(node)
            node = node.parent
        return delta

    def evictable_size(self) -> int:
        return self.evictable_size_

    def protected_size(self) -> int:
        return self.protected_size_

    def total_size(self) -> int:
        return sum(len(node.value) for node in self.iter_nodes())

    def iter_nodes(self) -> Iterator[TreeNode]:
        """Every node below the root, depth first."""
        stack = list(self.root_node.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # -- request life cycle (SGLang: checkpoint / release_kv_cache) ------------------------

    def cache_unfinished_request(
        self, token_ids: Sequence[int], kv_indices: list[int], locked_node: TreeNode, cache_protected_len: int
    ) -> tuple[list[int], TreeNode]:
        """After a prefill chunk: put the request's KV so far in the tree and move its lock
        to the new last node. kv_indices[cache_protected_len:] are the request's own slots.
        Returns the slots to use from now on (the tree's, for the cached part) and the newly
        locked node; the cached part is len(first returned value)."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache.checkpoint (sglang 0.5.23)
        key_len = len(self._page_aligned(list(token_ids)))
        result = self.insert(token_ids[:key_len], kv_indices[:key_len])
        self._free(kv_indices[cache_protected_len : result.prefix_len])  # duplicates of cached KV
        match = self.match_prefix(token_ids[:key_len])
        assert match.prefix_len == key_len
        new_indices = match.device_indices + list(kv_indices[key_len:])
        self.dec_lock_ref(locked_node)
        self.inc_lock_ref(match.last_node)
        return new_indices, match.last_node

    def cache_finished_request(
        self, token_ids: Sequence[int], kv_indices: list[int], locked_node: TreeNode, cache_protected_len: int
    ) -> None:
        """A request finished: keep its KV in the tree, free what the tree does not keep
        (duplicates and the last partial page) and drop its lock."""
        # Mirrors: sglang.srt.mem_cache.common:release_kv_cache (sglang 0.5.23), with checkpoint=True
        key_len = len(self._page_aligned(list(token_ids)))
        result = self.insert(token_ids[:key_len], kv_indices[:key_len])
        self._free(kv_indices[cache_protected_len : result.prefix_len])
        self._free(kv_indices[max(key_len, cache_protected_len) :])
        self.dec_lock_ref(locked_node)

    # -- internals -------------------------------------------------------------------------

    def _free(self, indices: Sequence[int]) -> None:
        if indices and self.token_to_kv_pool_allocator is not None:
            self.token_to_kv_pool_allocator.free(indices)

    def _page_aligned(self, key: list[int]) -> list[int]:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixKey.page_aligned (sglang 0.5.23)
        return key[: len(key) // self.page_size * self.page_size]

    def _child_key(self, key: Sequence[int]) -> int | tuple[int, ...]:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixKey.child_key (sglang 0.5.23)
        return key[0] if self.page_size == 1 else tuple(key[: self.page_size])

    def _key_match(self, node_key: Sequence[int], key: Sequence[int]) -> int:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixKey.match (sglang 0.5.23); the shared prefix,
        # rounded down to whole pages.
        matched = 0
        for a, b in zip(node_key, key):
            if a != b:
                break
            matched += 1
        return matched // self.page_size * self.page_size

    def _match_prefix_helper(self, node: TreeNode, key: list[int]) -> tuple[list[list[int]], TreeNode]:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache._match_prefix_helper (sglang 0.5.23)
        access_time = self.clock()
        node.last_access_time = access_time
        values: list[list[int]] = []
        while key and self._child_key(key) in node.children:
            child = node.children[self._child_key(key)]
            child.last_access_time = access_time
            prefix_len = self._key_match(child.key, key)
            if prefix_len < len(child.key):
                new_node = self._split_node(child, prefix_len)
                values.append(new_node.value)
                node = new_node
                break
            values.append(child.value)
            node = child
            key = key[prefix_len:]
        return values, node

    def _split_node(self, child: TreeNode, split_len: int) -> TreeNode:
        """Cut child after split_len tokens; the new upper half takes its place."""
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache._split_node (sglang 0.5.23)
        new_node = TreeNode(self.clock())
        new_node.children = {self._child_key(child.key[split_len:]): child}
        new_node.parent = child.parent
        new_node.lock_ref = child.lock_ref
        new_node.key = child.key[:split_len]
        new_node.value = child.value[:split_len]
        child.parent = new_node
        child.key = child.key[split_len:]
        child.value = child.value[split_len:]
        new_node.parent.children[self._child_key(new_node.key)] = new_node
        return new_node

    def _insert_helper(self, node: TreeNode, key: list[int], value: list[int]) -> tuple[int, TreeNode]:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache._insert_helper (sglang 0.5.23)
        access_time = self.clock()
        node.last_access_time = access_time
        if not key:
            return 0, node
        total_prefix_length = 0
        while key and self._child_key(key) in node.children:
            node = node.children[self._child_key(key)]
            node.last_access_time = access_time
            prefix_len = self._key_match(node.key, key)
            total_prefix_length += prefix_len
            key, value = key[prefix_len:], value[prefix_len:]
            if prefix_len < len(node.key):
                node = self._split_node(node, prefix_len)
        if key:
            new_node = TreeNode(self.clock())
            new_node.parent = node
            new_node.key = key
            new_node.value = list(value)
            node.children[self._child_key(key)] = new_node
            self.evictable_size_ += len(key)
            self._update_leaf_status(node)
            self._update_leaf_status(new_node)
            node = new_node
        return total_prefix_length, node

    def _delete_leaf(self, node: TreeNode) -> None:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache._delete_leaf (sglang 0.5.23)
        removed = node.parent.children.pop(self._child_key(node.key), None)
        assert removed is node, "parent does not hold the leaf being deleted"
        self.evictable_size_ -= len(node.key)
        self.evictable_leaves.discard(node)
        self._update_leaf_status(node.parent)

    def _update_leaf_status(self, node: TreeNode) -> None:
        # Mirrors: sglang.srt.mem_cache.radix_cache:RadixCache._update_leaf_status (sglang 0.5.23)
        if node.lock_ref > 0 or node.children:
            self.evictable_leaves.discard(node)
        else:
            self.evictable_leaves.add(node)
