"""What the radix-tree extractors (SGLang's, tracer/instrument/extractors/sglang.py, and ours in
cache_mode sglang, mini.py) record of the tree: the prompt's chained prefix hashes (once per request),
the matched path's nodes and the page the match stopped before, and the nodes an eviction removed."""
from __future__ import annotations

import hashlib
import weakref
from array import array
from typing import Any

from tracer.traces.schema import (
    EVICTED_NODE_IDS, EVICTED_NODE_KEYS, EVICTED_NODE_PARENTS, EVICTED_NODE_STARTS, EVICTED_NODE_TOKENS, RADIX_NEXT_PAGE,
    RADIX_PATH_IDS, RADIX_PATH_TOKENS,
)


_SEEN: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the Req objects already hashed (a rid recurs across replays)


def first_sight(req: Any) -> bool:
    try:
        if req in _SEEN:
            return False
        _SEEN.add(req)
    except TypeError:  # not weak-referenceable: hash every time
        pass
    return True


def hash_unit(page: int) -> int:
    """Tokens per prefix hash: whole pages, at least 16 tokens (see prefix_hashes)."""
    return page * -(-16 // page)


def hash_domain(extra_key: Any, cache_salt: Any) -> str | None:
    """The lookup key's namespace, as a reader may compare it: SGLang keeps prefixes with another
    extra_key / cache_salt apart (RadixKey.child_key_at, radix_cache.py:226-247; a LoRA adapter's id is
    appended to extra_key, schedule_batch.py:1164-1168). What kind of namespace and a digest of it,
    never the salt or key itself; None: the tokens alone, SGLang's default."""
    kinds = [kind for kind, value in (("extra-key", extra_key), ("salted", cache_salt)) if value]
    if not kinds:
        return None
    digest = hashlib.blake2b(repr((extra_key or None, cache_salt or None)).encode(), digest_size=6,
                             person=b"servetrace-ns").hexdigest()
    return f"{','.join(kinds)}:{digest}"


def prefix_hashes(tokens: Any, unit: int) -> list[str]:
    """Hashes of the prompt's prefixes at each full `unit`-token span: hash i names tokens [0, (i+1)*unit),
    so two requests share hash i exactly when they share that prefix. The tokens alone: the key's
    namespace goes beside them (hash_domain), so a reader sees that two requests had the same tokens in
    two namespaces (salt-or-adapter) without content capture. A unit is at least 16 tokens: with page
    size 1 a hash per token would cost more than the lookup it explains."""
    # One running hash over the prompt's bytes, read out at each unit's end: digest i covers the whole
    # prefix, as a chain of per-unit hashes would, at a third of the cost (hashlib's digest() does not
    # end the hash).
    data = array("q", tokens).tobytes()
    step = unit * 8  # int64 tokens
    running = hashlib.blake2b(digest_size=8)
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


# -- the page a miss needed, and what an eviction took (both trees: SGLang's RadixCache and ours) -----

MAX_EVICTED_NAMED = 256  # an eviction names at most this many nodes (it always counts their tokens)
_CANDIDATES = "__servetrace_evict_candidates"  # stashed in the call's own bound arguments, before to after


def _key_parts(key: Any) -> tuple[Any, bytes]:
    """A node's or a lookup's key: (token ids, namespace seed). SGLang's RadixKey carries the ids
    and its extra_key / cache_salt namespace (radix_cache.py:59-80); ours is a plain list."""
    tokens = getattr(key, "token_ids", key)
    extra, salt = getattr(key, "extra_key", None), getattr(key, "cache_salt", None)
    return tokens, (f"{extra}|{salt}".encode() if extra is not None or salt is not None else b"")


def page_key(tokens: Any, start: int, page: int, seed: bytes = b"") -> str | None:
    """Short hash of tokens[start:start + page] in the key's namespace: a child key (RadixKey.child_key,
    radix_cache.py:222-247, is the first page and the namespace); None when the page is not whole."""
    piece = tokens[start:start + page]
    if len(piece) < page or page <= 0:
        return None
    return hashlib.blake2b(seed + array("q", piece).tobytes(), digest_size=6).hexdigest()


def next_page(key: Any, matched: int, page: int) -> dict:
    """The lookup key's first page past the match: the child the tree did not hold (or the node it
    stopped in). Nothing when the key has no whole page left."""
    tokens, seed = _key_parts(key)
    limit = getattr(key, "limit", None)
    if limit is not None:
        tokens = tokens[:limit]
    found = page_key(tokens, matched, max(page, 1), seed)
    return {RADIX_NEXT_PAGE: found} if found is not None else {}


def stash_evict_candidates(args: dict, cache: Any) -> None:
    """Before evict(): the leaves it may take (it heaps exactly these, radix_cache.py:552-575)."""
    args[_CANDIDATES] = list(getattr(cache, "evictable_leaves", ()) or ())


def evicted_nodes(args: dict, cache: Any) -> dict:
    """After evict(): the nodes it removed, each with its parent, where it starts on its path, its
    tokens and its first page's key. A candidate leaf that left evictable_leaves was evicted (nothing
    else runs in between); a parent left childless, unlocked and not evictable went after it (evict
    pushes such a parent, radix_cache.py:569-571)."""
    candidates = args.pop(_CANDIDATES, None) or []
    leaves, root = getattr(cache, "evictable_leaves", set()), getattr(cache, "root_node", None)
    page = int(getattr(cache, "page_size", 1) or 1)
    gone, seen = [], set()
    for leaf in candidates:
        node = leaf
        while node is not None and node is not root and id(node) not in seen and node not in leaves and \
                not node.children and node.lock_ref == 0:
            seen.add(id(node))
            gone.append(node)
            node = node.parent
    if not gone:
        return {}
    named = gone[:MAX_EVICTED_NAMED]
    ids, tokens, parents, starts, keys = [], [], [], [], []
    for node in named:
        start, up = 0, node.parent
        while up is not None and up is not root:
            start += len(up.key)
            up = up.parent
        key_tokens, seed = _key_parts(node.key)
        ids.append(getattr(node, "id", -1))
        tokens.append(len(node.key))
        parents.append(getattr(node.parent, "id", -1) if node.parent is not None else -1)
        starts.append(start)
        keys.append(page_key(key_tokens, 0, page, seed) or "")
    return {EVICTED_NODE_IDS: ids, EVICTED_NODE_TOKENS: tokens, EVICTED_NODE_PARENTS: parents,
            EVICTED_NODE_STARTS: starts, EVICTED_NODE_KEYS: keys}
