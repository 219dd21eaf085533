"""The interface the scheduler uses to talk to a KV cache, whatever shares its prefixes.

Two implementations: engine.kv_cache_manager.KVCacheManager (vLLM's paged blocks with hash
prefix caching) and engine.radix_kv_manager.RadixKVCacheManager (SGLang's radix tree over a
page allocator). The scheduler (engine/scheduler.py) calls only what is listed here, so a
third cache needs only these methods.

A prefix hit is a value the manager returns from get_computed_blocks and gets back, unopened,
in allocate_slots(new_computed_blocks=...): whatever the manager needs to adopt the hit travels
in it (vLLM's KVCacheBlocks; the radix manager's RadixPrefixHit keeps the tree node to lock),
so no manager keeps state between the two calls. An empty sequence means "no hit".
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from engine.request import Request


@runtime_checkable
class KVManager(Protocol):
    block_size: int
    enable_caching: bool
    max_model_len: int

    @property
    def usage(self) -> float:
        """Fraction of the usable pool that is in use (the KV_USAGE span attribute)."""
        ...

    def get_num_free_blocks(self) -> int:
        """Blocks an allocation can get now: free ones plus cached ones it may evict."""
        ...

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table, in token order (what the model runner reads)."""
        ...

    def get_computed_blocks(self, request: Request) -> tuple[Sequence[Any], int]:
        """The longest cached prefix of the request (never its last token) and its length in
        tokens. Reserves nothing: allocate_slots adopts the hit."""
        ...

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[Any] | None = None,
        num_lookahead_tokens: int = 0,
        full_sequence_must_fit: bool = False,
    ) -> Sequence[Any] | None:
        """Slots for num_new_tokens more tokens after the request's computed ones and the hit
        new_computed_blocks (as get_computed_blocks returned it). None, changing nothing, when
        the pool cannot supply them; with full_sequence_must_fit, the whole sequence must fit."""
        ...

    def record_prefix_cache_stats(self, request: Request, num_hits: int) -> None:
        """Count an admitted request's prefix lookup."""
        ...

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix; False (and nothing dropped) while a request holds KV."""
        ...

    def free(self, request: Request) -> None:
        """Release the request's KV (finish, abort or preemption); what is cached stays hittable."""
        ...
