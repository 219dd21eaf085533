"""Why a request got the prefix-cache hits it got: its prompt's blocks, which hit, and a reason
with evidence for the first miss. Read from the trace alone (hash caches: ours and vLLM's).

The cache's history is rebuilt from the trace: a block hash enters the cache when the request that
computes it has computed the whole block (its steps' scheduled tokens, from its prefix hit on),
and leaves it when an allocation evicts it (kv.evict, with the hashes). vLLM computes at most
num_tokens - 1 tokens from the cache (vllm/v1/core/kv_cache_manager.py:
KVCacheManager.get_computed_blocks, max_cache_hit_length = request.num_tokens - 1), and only full
blocks are hashed (vllm/v1/core/kv_cache_utils.py: hash_block_tokens runs per full block).
"""
from __future__ import annotations

from tracer.traces.cache_miss import CacheMiss, prefill_ms_per_token
from tracer.traces.explain_radix import PAGE_ALIGNMENT, RADIX_REASONS, explain_radix
from tracer.traces.request_steps import EngineTimeline, RequestLife

# Every reason code, with what it means (the explorer's "why" view and --json readers use these).
REASONS = {
    "full-hit": "every cacheable block hit: nothing to explain",
    "partial-block": "only full blocks are cached: the prompt's last, partial block is always computed",
    "last-token-recompute": "a full hit still computes the last prompt token (the cache serves at most num_tokens - 1)",
    "token-differs": "an earlier request shared the prefix up to this block, then a token differed",
    "evicted": "an earlier request cached this block; an allocation evicted it before this lookup",
    "still-computing": "an earlier request had not yet reached this block of the prompt (its prefill is chunked) at this lookup",
    "never-cached": "no earlier request in the trace had this block",
    "not-in-trace": "the trace starts after the server did: the request that could have cached it may be before it",
    "caching-disabled": "prefix caching was off for this lookup",
    "salt-or-adapter": "the tokens match an earlier request but the hash domain differs (cache salt or LoRA)",
    "unexplained": "the trace says the block was cached and not evicted, yet the lookup missed it (an eviction or hash the trace lacks)",
    "no-block-hashes": "the trace has no block hashes for this request (an engine or version that does not record them)",
    PAGE_ALIGNMENT: "SGLang looks up whole pages only: the prompt's last, partial page is always computed (SGLang's partial-block)",
}

__all__ = ["CacheMiss", "REASONS", "explain_cache", "reason_meaning"]


def reason_meaning(miss: CacheMiss) -> str:
    """What the miss's code means in its cache's terms: pages and radix nodes for a radix tree's
    (explain_radix's, in prefix units), blocks for a hash cache's."""
    if miss.unit == "prefix unit":
        return RADIX_REASONS.get(miss.reason) or REASONS.get(miss.reason, "")
    return REASONS.get(miss.reason, "")


def _cached_at(timeline: EngineTimeline, life: RequestLife) -> dict[str, int]:
    """hash -> when `life` put its block in the cache. Both caches register a block's hash when the
    block is allocated for tokens that fill it, before the forward pass computes it
    (vllm/v1/core/kv_cache_manager.py: allocate_slots calls cache_blocks for num_computed_tokens +
    num_new_tokens): so at the schedule of the step whose tokens cover it."""
    size = timeline.block_size or 0
    out: dict[str, int] = {}
    if not size:
        return out
    computed = life.cached_tokens
    for step, tokens in life.scheduled:
        computed += tokens
        for index in range(min(computed, life.prompt_tokens) // size):
            if index < len(life.block_hashes):
                out.setdefault(life.block_hashes[index], step.schedule.start_ns)
    for index in range(min(life.cached_tokens // size, len(life.block_hashes))):
        out.setdefault(life.block_hashes[index], life.arrival_ns)  # a hit: it was in the cache then
    return out


def explain_cache(timeline: EngineTimeline, life: RequestLife) -> CacheMiss:
    if timeline.mirrors == "sglang":
        return explain_radix(timeline, life)  # a radix tree, not block hashes (SGLang's, or ours in its mode)
    size = timeline.block_size
    hashes = life.block_hashes
    hit_blocks = life.cached_blocks
    blocks = [{"index": i, "hash": h[:12], "hit": i < hit_blocks} for i, h in enumerate(hashes)]
    uncached = max(life.prompt_tokens - life.cached_tokens, 0)
    rate = prefill_ms_per_token(life)
    result = CacheMiss(life.name, life.prompt_tokens, size, blocks, life.cached_tokens, "", "", uncached,
                       rate * uncached if rate is not None else None)

    def say(reason: str, evidence: str, **details) -> CacheMiss:
        result.reason, result.evidence, result.details = reason, evidence, details
        return result

    if life.caching_enabled is False:
        return say("caching-disabled", "the kv.match_prefix span records caching off")
    if not size or (not hashes and life.prompt_tokens >= (size or 1)):
        return say("no-block-hashes", REASONS["no-block-hashes"])
    full = life.prompt_tokens // size
    if hit_blocks >= full:
        if life.prompt_tokens % size and full == 0:
            return say("partial-block", f"the prompt's {life.prompt_tokens} tokens fill no {size}-token block: none of it can be cached")
        if life.prompt_tokens % size:
            return say("partial-block", f"{hit_blocks} full blocks hit; the last {life.prompt_tokens % size} tokens fill no block")
        return say("full-hit", REASONS["full-hit"])
    earlier = [other for other in timeline.requests if other.arrival_ns < life.arrival_ns and other is not life]
    first_match = life.matches[0].start_ns if life.matches else life.arrival_ns
    miss = hit_blocks
    missing = hashes[miss]
    if miss == full - 1 and life.prompt_tokens % size == 0 and any(missing in o.block_hashes for o in earlier):
        return say("last-token-recompute", f"block {miss} is the prompt's last and it is full: the cache serves at most "
                   f"{life.prompt_tokens - 1} of its {life.prompt_tokens} tokens", block=miss)
    holders = [o for o in earlier if missing in o.block_hashes]
    if holders:
        events = []  # (time, kind, who)
        for other in holders:
            at = _cached_at(timeline, other).get(missing)
            if at is not None:
                events.append((at, "cached", other.name))
        for eviction in timeline.evictions:
            if missing in eviction.hashes:
                events.append((eviction.time_ns, "evicted", eviction.by_request))
        events.sort()
        before = [e for e in events if e[0] <= first_match]
        if before and before[-1][1] == "evicted":
            when, _, by = before[-1]
            cached_by = next((who for t, kind, who in reversed(before) if kind == "cached"), holders[0].name)
            return say("evicted", f"block {miss} was cached by {cached_by}, then evicted "
                       f"{(first_match - when) / 1e6:.1f} ms before this lookup by the allocation of {by}",
                       block=miss, cached_by=cached_by, evicted_by=by, evicted_ms_before=(first_match - when) / 1e6)
        if not before:
            return say("still-computing", f"block {miss} was still ahead of {holders[0].name}'s prefill (chunked) at this lookup",
                       block=miss, computing=holders[0].name)
        return say("unexplained", f"block {miss} was cached by {before[-1][2]} and not evicted in the trace, yet missed",
                   block=miss, cached_by=before[-1][2])
    # Nobody earlier had this block: who shared the longest prefix, and where did it part?
    best, shared = None, -1
    for other in earlier:
        common = 0
        while common < min(len(hashes), len(other.block_hashes)) and hashes[common] == other.block_hashes[common]:
            common += 1
        if common > shared:
            best, shared = other, common
    if best is not None and miss == 0 and mine_tokens_match(life, earlier, size) is not None:
        other = mine_tokens_match(life, earlier, size)
        return say("salt-or-adapter", f"block 0 has the same tokens as in {other.name} but another hash (hash domain "
                   f"{life.hash_domain or 'tokens only'} vs {other.hash_domain or 'tokens only'})", block=0, other=other.name)
    twin = same_first_block_by_hash(life, earlier) if miss == 0 else None
    if twin is not None:  # no content capture: the first block's tokens-alone hashes say the tokens match
        return say("salt-or-adapter", f"block 0 has the same tokens as in {twin.name} (by hash) but another hash domain "
                   f"({life.hash_domain or 'tokens only'} vs {twin.hash_domain or 'tokens only'})", block=0, other=twin.name)
    if best is not None and shared == miss and miss > 0:
        start, stop = miss * size, (miss + 1) * size
        mine, theirs = life.prompt_token_ids, best.prompt_token_ids
        if mine is not None and theirs is not None and len(theirs) >= stop:
            for position in range(start, stop):
                if mine[position] != theirs[position]:
                    return say("token-differs", f"token {position} is {mine[position]} here and {theirs[position]} in {best.name}",
                               block=miss, position=position, token=mine[position], other_token=theirs[position], other=best.name)
            return say("salt-or-adapter", f"block {miss} has the same tokens as in {best.name} but another hash "
                       f"(hash domain {life.hash_domain or 'tokens only'} vs {best.hash_domain or 'tokens only'})",
                       block=miss, other=best.name)
        if life.hash_domain != best.hash_domain:
            return say("salt-or-adapter", f"{best.name} shares blocks 0-{miss - 1}; hash domain {life.hash_domain or 'tokens only'} "
                       f"vs {best.hash_domain or 'tokens only'}", block=miss, other=best.name)
        return say("token-differs", f"{best.name} shares blocks 0-{miss - 1}, then block {miss} (tokens {start}-{stop - 1}) differs; "
                   "token ids are in the trace only with content capture on", block=miss, other=best.name)
    if best is not None and shared > 0 and life.hash_domain != best.hash_domain:
        return say("salt-or-adapter", f"hash domain {life.hash_domain} vs {best.hash_domain}", block=miss, other=best.name)
    if not timeline.has_startup and hit_blocks > max(shared, 0):
        return say("not-in-trace", f"{hit_blocks} blocks hit that no earlier request in the trace had: "
                   "the cache holds work from before the trace began", block=miss)
    caveat = "" if timeline.has_startup else " (the trace has no server.startup: a request before it could have had it)"
    return say("never-cached", f"no earlier request in the trace had block {miss}{caveat}", block=miss)


def mine_tokens_match(life: RequestLife, earlier: list[RequestLife], size: int) -> RequestLife | None:
    """An earlier request whose first block has the same token ids (content capture on for both)."""
    if life.prompt_token_ids is None:
        return None
    for other in earlier:
        if other.prompt_token_ids is not None and other.prompt_token_ids[:size] == life.prompt_token_ids[:size]:
            return other
    return None


def same_first_block_by_hash(life: RequestLife, earlier: list[RequestLife]) -> RequestLife | None:
    """The latest earlier request whose first block has the same tokens (their tokens-alone hash,
    FIRST_BLOCK_TOKENS_HASH) in another hash domain (another cache salt's digest, or LoRA): vLLM mixes
    the domain into every block hash (kv_cache_utils.py:637-675, chained by hash_block_tokens), so its
    block hashes cannot say the tokens matched."""
    mine = life.first_block_tokens_hash
    if mine is None:
        return None
    return next((other for other in reversed(earlier)
                 if other.first_block_tokens_hash == mine and other.hash_domain != life.hash_domain), None)
