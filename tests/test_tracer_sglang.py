"""SGLang's own RadixCache (the classic one replay drives), traced through SGLang's plugin loader.

SERVETRACE_TRACE names a trace file; sglang.srt.plugins.load_plugins() (what SGLang's engine,
scheduler and detokenizer processes call at start) runs our `sglang.srt.plugins` entry point.
"""
from __future__ import annotations

from array import array

import pytest

from tracer.instrument import hooks, otel, spans
from tracer.traces.trace_file import read_trace_file


class SlotAllocator:
    """The two things RadixCache.evict needs from SGLang's token allocator: a device and
    free_segment. It records what the cache hands back."""

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")
        self.freed: list[int] = []

    def free_segment(self, indices, start_pos: int = 0) -> None:
        self.freed.extend(indices[start_pos:].tolist())


@pytest.fixture
def traced_sglang(tmp_path, monkeypatch):
    import sglang.srt.plugins as sglang_plugins

    trace_path = tmp_path / "sglang.jsonl"
    monkeypatch.setenv("SERVETRACE_TRACE", str(trace_path))
    monkeypatch.delenv("SERVETRACE_OTLP", raising=False)
    monkeypatch.delenv("SGLANG_PLUGINS", raising=False)
    monkeypatch.setattr(sglang_plugins, "_plugins_loaded", False)  # once per process upstream
    sglang_plugins.load_plugins()
    try:
        yield trace_path
    finally:
        hooks.uninstall()
        otel.shutdown()
        spans.registry.clear()


def key(tokens: list[int]):
    from sglang.srt.mem_cache.radix_cache import RadixKey

    return RadixKey(array("q", tokens))


def test_radix_cache_spans(traced_sglang):
    import torch
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixCache

    assert hasattr(RadixCache.match_prefix, hooks.MARKER), "the sglang plugin did not hook RadixCache"
    allocator = SlotAllocator()
    cache = RadixCache.create_simulated(mock_allocator=allocator, page_size=1)
    cache.insert(InsertParams(key=key([1, 2, 3, 4, 5]), value=torch.arange(10, 15)))
    cache.insert(InsertParams(key=key([1, 2, 3, 7, 8, 9]), value=torch.arange(20, 26)))
    hit = cache.match_prefix(MatchPrefixParams(key=key([1, 2, 3, 4, 6])))
    miss = cache.match_prefix(MatchPrefixParams(key=key([9, 9])))
    evicted = cache.evict(EvictParams(num_tokens=2))
    otel.flush()

    trace = read_trace_file(traced_sglang)
    assert trace.skipped == []
    inserts = trace.named("kv.insert")
    assert [s.attributes["servetrace.kv.key_tokens"] for s in inserts] == [5, 6]
    # The second insert found [1, 2, 3] already in the tree.
    assert [s.attributes["servetrace.kv.cached_tokens"] for s in inserts] == [0, 3]
    assert inserts[-1].attributes["servetrace.kv.evictable_tokens"] == 8

    matches = trace.named("kv.match_prefix")
    assert [s.attributes["servetrace.kv.cached_tokens"] for s in matches] == [hit.device_prefix_len, miss.device_prefix_len] == [4, 0]
    assert matches[0].attributes["servetrace.radix.last_node_id"] == hit.last_device_node.id

    (evict,) = trace.named("kv.evict")
    assert evict.attributes["servetrace.kv.evict_requested_tokens"] == 2
    assert evict.attributes["servetrace.kv.evicted_tokens"] == evicted.num_tokens_evicted == len(allocator.freed) > 0
    assert evict.attributes["servetrace.kv.evictable_tokens"] == cache.evictable_size()
    # Calls made outside any engine step or request are each a trace of their own.
    assert all(s.parent_span_id is None for s in trace.spans)
    assert all(s.resource["servetrace.engine"] == "sglang" for s in trace.spans)


def test_module_function_targets_are_rebound_and_restored(traced_sglang):
    """release_kv_cache is imported by name into several modules: all see the hook, and
    uninstall gives every one of them the original back."""
    import sglang.srt.managers.scheduler_components.batch_result_processor as processor
    import sglang.srt.mem_cache.common as common

    assert hasattr(common.release_kv_cache, hooks.MARKER)
    assert processor.release_kv_cache is common.release_kv_cache
    hooks.uninstall("sglang")
    assert not hasattr(common.release_kv_cache, hooks.MARKER)
    assert processor.release_kv_cache is common.release_kv_cache
