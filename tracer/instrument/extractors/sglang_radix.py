"""What SGLang's kv.match_prefix extractor (tracer/instrument/extractors/sglang.py) records of the radix
tree: the prompt's chained prefix hashes (once per Req) and the matched path's nodes."""
from __future__ import annotations

import hashlib
import weakref
from array import array
from typing import Any

from tracer.traces.schema import RADIX_PATH_IDS, RADIX_PATH_TOKENS


_SEEN: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the Req objects already hashed (a rid recurs across replays)


def first_sight(req: Any) -> bool:
    try:
        if req in _SEEN:
            return False
        _SEEN.add(req)
    except TypeError:  # not weak-referenceable: hash every time
        pass
    return True


def prefix_hashes(tokens: Any, unit: int, seed: bytes = b"") -> list[str]:
    """Hashes of the prompt's prefixes at each full `unit`-token span: hash i names tokens [0, (i+1)*unit),
    so two requests share hash i exactly when they share that prefix (and the key's namespace:
    SGLang keeps prefixes with another extra_key / cache_salt apart, radix_cache.py:364-379). The
    salt is mixed in, never written. A unit is at least 16 tokens: with page size 1 a hash per token
    would cost more than the lookup it explains."""
    # One running hash over the prompt's bytes, read out at each unit's end: digest i covers the whole
    # prefix, as a chain of per-unit hashes would, at a third of the cost (hashlib's digest() does not
    # end the hash).
    data = array("q", tokens).tobytes()
    step = unit * 8  # int64 tokens
    running = hashlib.blake2b(seed, digest_size=8)
    out = []
    for end in range(step, len(data) + 1, step):
        running.update(data[end - step:end])
        out.append(running.hexdigest())
    return out


def radix_path(node: Any) -> dict:
    """Node ids and token counts from the root's child down to the match's last node (RadixCache's
    TreeNode: .parent, .key; a node without them, e.g. the Rust core's, records no path)."""
    ids, lengths = [], []
    while node is not None and getattr(node, "parent", None) is not None and len(ids) < 256:
        ids.append(getattr(node, "id", None))
        lengths.append(len(node.key) if getattr(node, "key", None) is not None else None)
        node = node.parent
    if not ids or None in ids or None in lengths:
        return {}
    return {RADIX_PATH_IDS: ids[::-1], RADIX_PATH_TOKENS: lengths[::-1]}
