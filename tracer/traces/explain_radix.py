"""Why an SGLang request got the radix-cache hit it got, from the trace alone: the lookup that
admitted it (its matched tokens, radix path and page size), the prompt's chained prefix hashes
(which earlier requests shared how much of it), when they put it in the tree and the evictions.

SGLang facts it rests on (SGLang 0.5.23):
- the lookup key holds at most len - 1 prompt tokens (Req._compute_max_prefix_len,
  sglang/srt/managers/schedule_batch.py:1766-1768) and is rounded down to whole pages before the
  match (RadixKey.page_aligned, sglang/srt/mem_cache/radix_cache.py:406), and a match stops at the
  first page that differs (RadixKey.match rounds down to page_size, radix_cache.py:178-220);
- a request's computed prompt enters the tree after its prefill forward (process_batch_result ->
  cache_unfinished_req / checkpoint), so at the end of the step that computed it;
- what the tree held leaves it only by RadixCache.evict (radix_cache.py:552), which returns a token
  count; the extractors name the nodes it removed (id, parent, first page), so a miss is joined to the
  evicted node that continued its prompt past the match's last node.
Codes shared with the hash caches (explain_cache.REASONS) mean the same; page-alignment is SGLang's
partial-block (a prompt's last partial page is never looked up).
"""
from __future__ import annotations

from tracer.traces.cache_miss import CacheMiss, prefill_ms_per_token
from tracer.traces.request_steps import EngineTimeline, RequestLife
from tracer.traces.schema import (
    CHECKPOINT_UP_TO, CONFIG_BLOCK_SIZE, KEY_TOKENS, RADIX_HASH_TOKENS, RADIX_NEXT_PAGE, RADIX_NODE_ID, RADIX_PATH_IDS,
    RADIX_PATH_TOKENS,
)

PAGE_ALIGNMENT = "page-alignment"

# What each code explain_radix gives means for a radix tree (explain_cache.REASONS says it of blocks).
RADIX_REASONS = {
    "last-token-recompute": "a full hit still computes the last prompt token (SGLang looks up at most len - 1 tokens)",
    "token-differs": "an earlier request shared the prefix up to this page, then a token differed",
    "evicted": "an earlier request put this prefix in the radix tree; an allocation evicted its node before this lookup",
    "still-computing": "an earlier request had not yet put this prefix in the tree at this lookup (SGLang inserts after the prefill's forward)",
    "never-cached": "no earlier request in the trace had this prefix",
    "not-in-trace": "the trace starts after the server did: the request that could have cached it may be before it",
    "caching-disabled": "the radix cache was off for this lookup (--disable-radix-cache)",
    "salt-or-adapter": "the tokens match an earlier request's, in another namespace of the tree (extra_key / cache_salt: a salt or a LoRA adapter)",
    "unexplained": "the trace says the prefix was in the tree and not evicted, yet the lookup stopped short (an eviction or insert the trace lacks)",
    "no-block-hashes": "the trace has no radix lookup or prefix hashes for this request (an engine or version that does not record them)",
    PAGE_ALIGNMENT: "SGLang looks up whole pages only: the prompt's last, partial page is always computed (SGLang's partial-block)",
}


def _unit(life: RequestLife) -> int | None:
    for span in life.request.spans:
        if span.attributes.get(RADIX_HASH_TOKENS):
            return int(span.attributes[RADIX_HASH_TOKENS])
    return None


def _computed_by(timeline: EngineTimeline, life: RequestLife, tokens: int) -> int | None:
    """When `life`'s first `tokens` prompt tokens were in the tree: the end of the step whose
    prefill reached them (its own hit counts from its admission); in a trace without steps (the
    radix-cache replay drives the tree alone) the end of its first insert whose key covers them."""
    if life.cached_tokens >= tokens:
        return life.admission_match.start_ns if life.admission_match is not None else life.arrival_ns
    computed = life.cached_tokens
    for step, n in life.scheduled:
        computed += n
        if computed >= tokens:
            return step.end_ns
    if not life.scheduled:
        covering = [span.end_ns for span in life.inserts
                    if int(span.attributes.get(KEY_TOKENS) or span.attributes.get(CHECKPOINT_UP_TO) or 0) >= tokens]
        return min(covering, default=None)
    return None


def _lost_node(evictions: list, attrs: dict) -> tuple[object, dict] | None:
    """The eviction (latest first) that removed the node continuing this prompt past where the lookup
    stopped: a child of the match's last node whose first page is the lookup's next page."""
    last, wanted = attrs.get(RADIX_NODE_ID), attrs.get(RADIX_NEXT_PAGE)
    if last is None or not wanted:
        return None
    for eviction in reversed(evictions):
        for node in eviction.nodes:
            if node.get("parent") == last and node.get("key") == wanted:
                return eviction, node
    return None


def _shared_tokens(life: RequestLife, other: RequestLife, unit: int) -> tuple[int, bool]:
    """Prompt tokens the two share from the start, and whether that is exact (token ids, with
    content capture on) or a lower bound in whole hash units."""
    mine, theirs = life.prompt_token_ids, other.prompt_token_ids
    if mine is not None and theirs is not None:
        n = 0
        while n < min(len(mine), len(theirs)) and mine[n] == theirs[n]:
            n += 1
        return n, True
    a, b = life.prefix_hashes, other.prefix_hashes
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n * unit, False


def _same_namespace(life: RequestLife, other: RequestLife, unit: int) -> bool | None:
    """Whether the tree can share nodes between the two: SGLang keys a node by its first page and the
    request's extra_key / cache_salt (RadixKey.child_key_at, radix_cache.py:226-247); the lookup records
    that namespace's digest as the hash domain, beside prefix hashes of the tokens alone. Another domain:
    another namespace. Same first tokens (content capture on) and another first hash: another namespace
    too (a trace from before the domain was a digest seeded the hashes with it). Else None: nothing
    tells them apart."""
    if life.hash_domain != other.hash_domain:
        return False
    mine, theirs = life.prompt_token_ids, other.prompt_token_ids
    a, b = life.prefix_hashes, other.prefix_hashes
    if a and b and mine is not None and theirs is not None and list(mine[:unit]) == list(theirs[:unit]):
        return a[0] == b[0]
    return None


def _evictor(timeline: EngineTimeline, eviction) -> str:
    if eviction.by_request:
        return eviction.by_request
    step = next((s for s in timeline.steps if s.start_ns <= eviction.time_ns <= s.end_ns), None)
    if step is None:
        return "an allocation outside the recorded steps"
    return f"step {step.index}'s batch ({', '.join(step.batch) or 'no requests'})"


def explain_radix(timeline: EngineTimeline, life: RequestLife) -> CacheMiss:
    match = life.admission_match
    attrs = match.attributes if match is not None else {}
    page = int(attrs.get(CONFIG_BLOCK_SIZE) or timeline.block_size or 1)
    unit = _unit(life) or page
    hashes = life.prefix_hashes
    size, cached = life.prompt_tokens, life.cached_tokens
    key = int(attrs.get(KEY_TOKENS) if attrs.get(KEY_TOKENS) is not None else max(size - 1, 0))
    blocks = [{"index": i, "hash": h[:12], "hit": (i + 1) * unit <= cached} for i, h in enumerate(hashes)]
    uncached = max(size - cached, 0)
    rate = prefill_ms_per_token(life)
    result = CacheMiss(life.name, size, page, blocks, cached, "", "", uncached, rate * uncached if rate is not None else None,
                       unit="prefix unit", unit_tokens=unit)
    path = list(zip(attrs.get(RADIX_PATH_IDS) or [], attrs.get(RADIX_PATH_TOKENS) or []))

    def say(reason: str, evidence: str, **details) -> CacheMiss:
        if path:
            details["radix_path"] = [{"node": node, "tokens": tokens} for node, tokens in path]
        result.reason, result.evidence, result.details = reason, evidence, details
        return result

    if match is None:
        return say("no-block-hashes", "the trace has no radix lookup for this request")
    if life.caching_enabled is False:
        return say("caching-disabled", "the radix cache is disabled (--disable-radix-cache): every lookup matches nothing")
    if not hashes and size >= unit:
        return say("no-block-hashes", ("the trace has no prefix hashes for this request (a trace from before SGLang's lookups "
                                       "recorded them, or lookups made without the request, as the radix-cache replay makes them)"))
    aligned = key // page * page
    if cached >= aligned:
        if page > 1 and size % page:
            fills = "fill no page" if size < page else f"fill no whole page after the {cached} matched"
            return say(PAGE_ALIGNMENT, f"the lookup is rounded down to whole {page}-token pages (RadixKey.page_aligned): "
                       f"the prompt's last {size % page} tokens {fills}", page_size=page)
        rounded = f", rounded down to whole {page}-token pages" if aligned < key else ""
        return say("last-token-recompute", f"the match covers all it may: SGLang looks up at most {size - 1} of the "
                   f"prompt's {size} tokens (Req._compute_max_prefix_len){rounded}", position=cached)
    lookup = match.start_ns
    earlier = [other for other in timeline.requests if other.arrival_ns < life.arrival_ns and other is not life]
    needed = cached + (page if page > 1 else 1)  # the next page would have hit
    namespaces = {other.name: _same_namespace(life, other, unit) for other in earlier}
    sharing = [(other, *_shared_tokens(life, other, unit)) for other in earlier]
    apart = [(o, n, exact) for o, n, exact in sharing if namespaces[o.name] is False]
    sharing = [item for item in sharing if namespaces[item[0].name] is not False]
    holders = [(o, n) for o, n, _ in sharing if n >= needed]
    if not holders and apart and max(n for _, n, _ in apart) >= needed:
        other, shared, exact = max(apart, key=lambda item: item[1])
        tokens = f"its first {shared} tokens" if exact else f"at least its first {shared} tokens (by hash)"
        return say("salt-or-adapter", f"{other.name} had {tokens}, but in another namespace of the tree: hash domain "
                   f"{life.hash_domain or 'tokens only'} here, {other.hash_domain or 'tokens only'} there (SGLang keys a "
                   "radix node by its first page and the request's extra_key / cache_salt, radix_cache.py:226-247)",
                   position=cached, other=other.name, hash_domain=life.hash_domain, other_hash_domain=other.hash_domain)
    if holders:
        times = [(t, o.name) for o, _ in holders if (t := _computed_by(timeline, o, needed)) is not None]
        before = sorted((t, who) for t, who in times if t <= lookup)
        if not before:
            holder = holders[0][0]
            when = ("the radix-cache replay inserts a request's tokens when it finishes" if not holder.scheduled else
                    "SGLang inserts a prefill after its forward pass: the same batch, or a chunk still ahead")
            return say("still-computing", f"{holder.name} shares the next page but had not put it in the tree at this lookup "
                       f"({when})", computing=holder.name, position=cached)
        when, cached_by = before[-1]
        evictions = [e for e in timeline.evictions if when <= e.time_ns <= lookup and (e.tokens or e.hashes)]
        lost = _lost_node(evictions, attrs)
        if lost is not None:
            eviction, node = lost
            by, start, end = _evictor(timeline, eviction), int(node["start"]), int(node["start"]) + int(node["tokens"]) - 1
            return say("evicted", f"{cached_by} put tokens {cached}-{needed - 1} in the tree; radix node {node['id']} "
                       f"(tokens {start}-{end}), the child of node {attrs.get(RADIX_NODE_ID)} where this lookup stopped, "
                       f"was evicted {(lookup - eviction.time_ns) / 1e6:.1f} ms before this lookup by the allocation of {by}"
                       f"{f' with {len(eviction.nodes) - 1} other nodes ({eviction.tokens} tokens in all)' if len(eviction.nodes) > 1 else ''}",
                       position=cached, cached_by=cached_by, evicted_by=by, evicted_ms_before=(lookup - eviction.time_ns) / 1e6,
                       evicted_node={"node": node["id"], "tokens": node["tokens"], "start": start, "parent": node["parent"]},
                       evicted_path=[n for n, _ in path] + [node["id"]])
        if evictions:
            last = evictions[-1]
            by = _evictor(timeline, last)
            total = sum(e.tokens for e in evictions)
            return say("evicted", f"{cached_by} put tokens {cached}-{needed - 1} in the tree; {len(evictions)} eviction"
                       f"{'s' if len(evictions) > 1 else ''} ({total} tokens) followed, the last "
                       f"{(lookup - last.time_ns) / 1e6:.1f} ms before this lookup, by the allocation of {by}",
                       position=cached, cached_by=cached_by, evicted_by=by, evicted_ms_before=(lookup - last.time_ns) / 1e6)
        return say("unexplained", f"{cached_by} put tokens {cached}-{needed - 1} in the tree and the trace shows no "
                   "eviction since, yet the lookup stopped short", position=cached, cached_by=cached_by)
    best = max(sharing, key=lambda item: item[1], default=None)
    # The one that shares up to where the match stopped (by hashes: all of the unit the match stopped in, but it).
    if best is not None and best[1] > 0 and (best[1] >= cached - (page - 1) if best[2] else best[1] > cached - unit):
        other, shared, exact = best
        rounding = (f"; the match stops at the page boundary {cached}, {shared - cached} tokens before it (page size {page})"
                    if exact and shared > cached else "")
        if exact and shared < size:
            mine, theirs = life.prompt_token_ids[shared], (other.prompt_token_ids[shared] if shared < len(other.prompt_token_ids) else None)
            if theirs is None:
                return say("never-cached", f"{other.name}'s whole prompt ({shared} tokens) is a prefix of this one; "
                           f"no earlier request had token {shared} on{rounding}", position=shared, other=other.name)
            return say("token-differs", f"token {shared} is {mine} here and {theirs} in {other.name}{rounding}",
                       position=shared, token=mine, other_token=theirs, other=other.name, page=shared // page)
        where = f"token {cached}" if page == 1 else f"tokens {cached}-{cached + page - 1} (page {cached // page})"
        return say("token-differs", f"{other.name} shares the first {shared} tokens by hash ({unit}-token units) and the tree "
                   f"matched {cached}: the prompts part at {where}; token ids are in the trace only with content capture on",
                   position=cached, other=other.name)
    if cached > 0 and earlier and life.prompt_token_ids is None and cached < unit:
        return say("token-differs", f"the tree held the prompt's first {cached} tokens, less than one {unit}-token hash unit, "
                   f"so which earlier request had them is not in the trace without content capture; the prompts part at "
                   f"token {cached}", position=cached)
    if cached > 0 and not timeline.has_startup:
        return say("not-in-trace", f"{cached} tokens hit that no earlier request in the trace had: the tree holds work "
                   "from before the trace began", position=cached)
    caveat = "" if timeline.has_startup else " (the trace has no server.startup: a request before it could have had it)"
    return say("never-cached", f"no earlier request in the trace shared the prompt past token {cached}{caveat}", position=cached)
