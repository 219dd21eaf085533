"""The hops whose own attributes the explorer interprets, by their catalog role.

Most of the explorer reads the trace through the schema's keys and the catalog's step roles. These
few views are about one hop's meaning, not its shape: a request's prefix-cache hit is what its
prefix lookup found (kv.insert carries servetrace.kv.cached_tokens too, with another meaning); its
KV blocks grow at an allocation and go at a release or a preemption; its tokens come out of
detokenize; the update's finish reasons are the batch's, not the request's. The names are read
from the catalog's roles (hops.yaml's header says each), once, here.
"""
from __future__ import annotations

from tracer.catalog.hops import load_catalog


def _one(role: str) -> str:
    (name,) = load_catalog().with_role(role)  # each of these roles is one hop's
    return name


PREFIX_LOOKUP = _one("prefix_lookup")
ALLOCATE = _one("allocate")
PREEMPT = _one("preempt")
RELEASES = frozenset({_one("release"), PREEMPT})  # after these the request holds no KV blocks
DETOKENIZE = _one("output_text")
UPDATE = _one("update")  # its finish reasons list the batch's requests, not the span's own
