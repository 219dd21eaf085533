"""Prefix-cache replay: the same request sequence through our RadixCache and SGLang 0.5.23's.

This replays SGLang's prefix-cache behaviour, not its scheduler (a full SGLang scheduler replay
is out of scope). Requests are taken in arrival order; each one, as SGLang's scheduler does
around a request's life:

1. match_prefix(prompt) and inc_lock_ref on the matched node (the request holds its prefix);
2. if the token pool cannot hold the rest of the prompt plus max_tokens outputs, evict() the
   shortfall (if eviction cannot cover it, the oldest in-flight request finishes first);
3. allocates the slots; the request is now in flight;
4. once more than ``radix_concurrency`` requests are in flight, the oldest finishes: its
   prompt + forced outputs are inserted with their slots, the slots of the part the tree
   already held are freed, and its lock is dropped (SGLang's release_kv_cache).

Per request we record the matched length, tokens evicted, the insert's prefix length, and the
tree's evictable / protected sizes and the pool's free slots afterwards. SGLang's LRU eviction
orders leaves by time.monotonic(); both trees get a strictly increasing counter instead, so ties
(two nodes stamped in the same clock tick) cannot make the order depend on set iteration.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from engine.radix_cache import RadixCache, TokenToKVPoolAllocator
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import make_radix_runner
from tracer.replay.tracing import RequestTraces
from tracer.traces.schema import INPUT_TOKENS, MAX_TOKENS, OUTPUT_TOKENS, STATUS
from tracer.replay.workload import WorkloadRequest


@dataclass
class RadixRecord:
    request_id: str
    event: str  # "admit" or "finish"
    matched: int = 0  # admit: prefix-cache hit in tokens
    evicted: int = 0  # admit: tokens evicted to make room
    insert_prefix_len: int = 0  # finish: tokens of the key already in the tree
    evictable_size: int = 0
    protected_size: int = 0
    free_slots: int = 0


@dataclass
class RadixLog:
    engine: str
    config: dict
    records: list[RadixRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # requests larger than the whole pool

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "config": self.config,
            "skipped": self.skipped,
            "total_matched": sum(r.matched for r in self.records),
            "total_evicted": sum(r.evicted for r in self.records),
            "records": [asdict(r) for r in self.records],
        }


@dataclass(frozen=True, eq=False)
class LookupRequest:
    """The request a replayed lookup is for, under the names each tree's caller hands it over by
    (SGLang's MatchPrefixParams.req is a Req: rid, origin_input_ids; ours an engine Request:
    request_id, prompt_token_ids). Neither tree reads it; the tracing hooks put the lookup in that
    request's trace and hash its prompt, as they do in a scheduler's run."""

    rid: str
    origin_input_ids: list[int]
    extra_key: str | None = None
    cache_salt: str | None = None

    @property
    def request_id(self) -> str:
        return self.rid

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.origin_input_ids


class _Counter:
    """A clock that ticks once per reading: strictly increasing, deterministic."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1)

    def __call__(self) -> float:
        return float(next(self._ticks))


# -- the two caches behind one small interface ------------------------------------------


class _RadixOps:
    """What both trees share by name (SGLang's RadixCache and ours mirror it): locking, the
    allocator's slots, the tree's sizes. Subclasses set `cache` and `allocator`."""

    cache: Any
    allocator: Any

    def lock(self, node: Any) -> None:
        self.cache.inc_lock_ref(node)

    def unlock(self, node: Any) -> None:
        self.cache.dec_lock_ref(node)

    def alloc(self, n: int) -> list[int] | None:
        return self.allocator.alloc(n)

    def free(self, slots: list[int]) -> None:
        if slots:
            self.allocator.free(slots)

    def available(self) -> int:
        return self.allocator.available_size()

    def sizes(self) -> tuple[int, int]:
        return self.cache.evictable_size(), self.cache.protected_size()


class MiniRadix(_RadixOps):
    name = "mini"

    def __init__(self, pool_tokens: int, page_size: int) -> None:
        self.allocator = TokenToKVPoolAllocator(pool_tokens)
        self.cache = RadixCache(self.allocator, page_size=page_size, clock=_Counter())

    @contextmanager
    def session(self) -> Iterator[None]:
        yield

    def match(self, key: list[int], req: LookupRequest | None = None) -> tuple[list[int], Any]:
        result = self.cache.match_prefix(key, req=req)
        return list(result.device_indices), result.last_node

    def insert(self, key: list[int], slots: list[int]) -> int:
        return self.cache.insert(key, slots).prefix_len

    def evict(self, num_tokens: int) -> int:
        return self.cache.evict(num_tokens)


class SimulatedSlotAllocator(TokenToKVPoolAllocator):
    """The allocator stand-in SGLang's RadixCache.create_simulated takes (eviction frees slots
    through it): our engine's allocator, which mirrors SGLang's TokenToKVPoolAllocator (slot 0
    reserved, allocate from the front, free to the back), plus the two names SGLang's tree
    also reads: `device` (for the tensors it builds) and free_segment."""

    device = "cpu"

    def free_segment(self, indices: Any, start_pos: int = 0) -> None:
        self.free(indices)


class SglangRadix(_RadixOps):
    name = "sglang"

    def __init__(self, pool_tokens: int, page_size: int) -> None:
        import torch
        from sglang.srt.mem_cache import radix_cache as module
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams

        self.torch, self.module = torch, module
        self.EvictParams, self.InsertParams, self.MatchPrefixParams = EvictParams, InsertParams, MatchPrefixParams
        self.allocator = SimulatedSlotAllocator(pool_tokens)
        self.clock = _Counter()
        with self.session():
            self.cache = module.RadixCache.create_simulated(mock_allocator=self.allocator, page_size=page_size)

    @contextmanager
    def session(self) -> Iterator[None]:
        """SGLang's tree reads time.monotonic() from its module; swap in the counter meanwhile."""
        clock = self.clock

        class _Time:
            monotonic = staticmethod(clock)
            perf_counter = staticmethod(time.perf_counter)
            time = staticmethod(time.time)

        saved = self.module.time
        self.module.time = _Time
        try:
            yield
        finally:
            self.module.time = saved

    def _key(self, key: list[int]):
        return self.module.RadixKey(token_ids=list(key), extra_key=None)

    def match(self, key: list[int], req: LookupRequest | None = None) -> tuple[list[int], Any]:
        result = self.cache.match_prefix(self.MatchPrefixParams(key=self._key(key), req=req))
        node = result.last_device_node
        indices = self.cache.path_device_indices(node).tolist() if result.device_prefix_len else []
        return indices, node

    def insert(self, key: list[int], slots: list[int]) -> int:
        value = self.torch.tensor(slots, dtype=self.torch.int64)
        return self.cache.insert(self.InsertParams(key=self._key(key), value=value)).prefix_len

    def evict(self, num_tokens: int) -> int:
        return self.cache.evict(self.EvictParams(num_tokens=num_tokens)).num_tokens_evicted


# -- the replay ------------------------------------------------------------------------


@dataclass
class _InFlight:
    request: WorkloadRequest
    node: Any
    slots: list[int]
    matched: int


def replay_radix(engine: str, workload: list[WorkloadRequest], config: ReplayConfig, page_size: int = 1) -> RadixLog:
    radix = make_radix_runner(engine, config, page_size)
    log = RadixLog(radix.name, {**config.to_json(), "page_size": page_size})
    in_flight: deque[_InFlight] = deque()
    traces = RequestTraces()  # the request's match / evict / insert spans nest in its own trace
    roots: dict[str, Any] = {}

    def record(request_id: str, event: str, **values: int) -> None:
        evictable, protected = radix.sizes()
        log.records.append(RadixRecord(request_id, event, evictable_size=evictable, protected_size=protected,
                                       free_slots=radix.available(), **values))

    def finish_oldest() -> None:
        done = in_flight.popleft()
        token_ids = done.request.prompt_token_ids + done.request.forced_output()
        key_len = len(token_ids) - len(token_ids) % page_size
        with traces.within(roots.get(done.request.id)):
            prefix_len = radix.insert(token_ids[:key_len], done.slots[:key_len])
        # The tree already held [matched, prefix_len): this request's copies are duplicates.
        radix.free(done.slots[done.matched:prefix_len])
        radix.free(done.slots[key_len:])  # a partial last page is not cached
        radix.unlock(done.node)
        record(done.request.id, "finish", insert_prefix_len=prefix_len)
        traces.close(roots.pop(done.request.id, None), {OUTPUT_TOKENS: done.request.max_tokens})

    with radix.session():
        for request in sorted(workload, key=lambda r: r.arrival_step):
            need_total = len(request.prompt_token_ids) + request.max_tokens
            if need_total > config.pool_tokens:
                log.skipped.append(request.id)
                continue
            root = roots[request.id] = traces.open(request.id, {INPUT_TOKENS: len(request.prompt_token_ids),
                                                                 MAX_TOKENS: request.max_tokens})
            with traces.within(root):
                prefix_slots, node = radix.match(request.prompt_token_ids, LookupRequest(request.id, list(request.prompt_token_ids)))
            radix.lock(node)
            need = need_total - len(prefix_slots)
            evicted = 0
            while radix.available() < need:
                with traces.within(root):
                    freed = radix.evict(need - radix.available())
                evicted += freed
                if radix.available() >= need:
                    break
                if not in_flight:
                    break
                if freed == 0:
                    finish_oldest()  # make its KV evictable, then try again
            new_slots = radix.alloc(need)
            if new_slots is None:
                # Only the request's own locked prefix is left: it cannot run.
                radix.unlock(node)
                log.skipped.append(request.id)
                traces.close(roots.pop(request.id, None), {STATUS: "skipped: no room beside its locked prefix"})
                continue
            in_flight.append(_InFlight(request, node, prefix_slots + new_slots, len(prefix_slots)))
            record(request.id, "admit", matched=len(prefix_slots), evicted=evicted)
            if len(in_flight) > config.radix_concurrency:
                finish_oldest()
        while in_flight:
            finish_oldest()
    return log


def compare_radix_logs(left: RadixLog, right: RadixLog) -> dict:
    """First record where the two trees disagree (None if they agree throughout)."""
    first = None
    for index, (a, b) in enumerate(zip(left.records, right.records)):
        if a != b:
            differing = [k for k in asdict(a) if getattr(a, k) != getattr(b, k)]
            first = {"index": index, "fields": differing, left.engine: asdict(a), right.engine: asdict(b)}
            break
    if first is None and (len(left.records) != len(right.records) or left.skipped != right.skipped):
        first = {"index": min(len(left.records), len(right.records)), "fields": ["num_records/skipped"],
                 left.engine: {"records": len(left.records), "skipped": left.skipped},
                 right.engine: {"records": len(right.records), "skipped": right.skipped}}
    return {
        "left_engine": left.engine,
        "right_engine": right.engine,
        "records": len(left.records),
        "total_matched": {left.engine: sum(r.matched for r in left.records), right.engine: sum(r.matched for r in right.records)},
        "total_evicted": {left.engine: sum(r.evicted for r in left.records), right.engine: sum(r.evicted for r in right.records)},
        "agree": first is None,
        "divergence": first,
    }
