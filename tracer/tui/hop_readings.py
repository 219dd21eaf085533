"""The hops whose own attributes the explorer interprets, named once.

Most of the explorer reads the trace through the schema's keys and the catalog's roles. These
few views are about one hop's meaning, not its shape: a request's prefix-cache hit is what its
kv.match_prefix found (kv.insert carries servetrace.kv.cached_tokens too, with another
meaning); its KV blocks grow at kv.allocate and go at kv.free or a preemption; its tokens come
out of detokenize; scheduler.update's finish reasons are the batch's, not the request's.
The catalog has no role for these yet (candidates: prefix_lookup, allocate, release, preempt,
detokenize, update); when it has, these names come from Catalog.with_role and this module goes.
tests/test_layering.py allows hop names here and nowhere else in the explorer.
"""
from __future__ import annotations

PREFIX_LOOKUP = "kv.match_prefix"
ALLOCATE = "kv.allocate"
PREEMPT = "scheduler.preempt"
RELEASES = frozenset({"kv.free", PREEMPT})  # after these the request holds no KV blocks
DETOKENIZE = "detokenize"
UPDATE = "scheduler.update"  # its finish reasons list the batch's requests, not the span's own
