"""Hash blocks vs a radix tree, compared under control: same requests, same order, same clock.

The first version of this lab read the hash side off a scheduler replay (blocks cached at
schedule time, four requests in flight) and the radix side off the radix replay (tokens
inserted at finish, four in flight): the two saw each other's prompts at different moments, so
the hit rates differed for reasons of timing. Here every cache serves the requests one at a
time, in the same order; each request's computed KV is in the cache before the next one looks:

- hash blocks: vLLM 0.33's real Scheduler + KVCacheManager (and ours) replayed with
  max_num_seqs=1, so a request finishes, and its full blocks stay cached, before the next is
  admitted. The hit is capped at prompt length - 1 (KVCacheManager.get_computed_blocks).
- radix tree: SGLang 0.5.23's real RadixCache (and ours) driven through the replay's radix
  runners in the same order: match with the same cap (SGLang's scheduler caps it too,
  Req._compute_max_prefix_len), then insert the tokens whose KV was computed (prompt + outputs
  but the last, which was sampled and never fed back), as release_kv_cache does at finish.

The pool holds every block the workload writes, so nothing is evicted (checked: the counts
would otherwise mix eviction policy into granularity). Every number is a token count: exact.
"""
from __future__ import annotations

from engine.math_utils import cdiv
from tracer.labs.registry import Lab, LabResult, Table
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import make_radix_runner
from tracer.replay.workload import WorkloadRequest, multi_turn, shared_prefix

HASH_ENGINES = ("vllm", "mini")
RADIX_ENGINES = ("sglang", "mini")
NAMES = {
    ("hash", "vllm"): "vLLM KVCacheManager (hash per block)", ("hash", "mini"): "ours, engine/block_pool.py",
    ("radix", "sglang"): "SGLang RadixCache", ("radix", "mini"): "ours, engine/radix_cache.py",
}


def _config(workload: list[WorkloadRequest], block_size: int) -> ReplayConfig:
    # Room for every block every request writes, plus one per request of slack: no block is
    # ever handed out twice, so neither side evicts.
    blocks = sum(cdiv(len(r.prompt_token_ids) + r.max_tokens, block_size) + 1 for r in workload) + 1
    return ReplayConfig(block_size=block_size, num_blocks=blocks, max_num_seqs=1, max_num_batched_tokens=4096,
                        max_model_len=4096)


def hash_hits(workload: list[WorkloadRequest], config: ReplayConfig, engine: str) -> tuple[list[str], dict[str, int]]:
    """(admission order, {request: cached tokens}) from a one-at-a-time scheduler replay."""
    from tracer.labs.scheduler_labs import replay_both

    logs, _ = replay_both(workload, config, [engine])
    order, hits = [], {}
    for step in logs[engine].steps:
        if step.preempted:
            raise RuntimeError(f"{engine} preempted {step.preempted} at step {step.step}: the pool is too small to be controlled")
        for admission in step.admitted:
            order.append(admission.request_id)
            hits[admission.request_id] = admission.cached_tokens
        if len(step.running) > 1:
            raise RuntimeError(f"{engine} ran {len(step.running)} requests at once at step {step.step}; this lab needs one")
    return order, hits


def radix_hits(workload: list[WorkloadRequest], order: list[str], config: ReplayConfig, engine: str,
               page_size: int) -> tuple[dict[str, int], int]:
    """({request: matched tokens}, tokens evicted) with one request at a time, in `order`."""
    by_id = {r.id: r for r in workload}
    radix = make_radix_runner(engine, config, page_size)
    hits, evicted = {}, 0
    with radix.session():
        for request_id in order:
            request = by_id[request_id]
            prompt = request.prompt_token_ids
            slots, node = radix.match(prompt[: len(prompt) - 1])
            radix.lock(node)
            computed = prompt + request.forced_output()[:-1]
            need = len(computed) - len(slots)
            if radix.available() < need:
                evicted += radix.evict(need - radix.available())
            new = radix.alloc(need)
            if new is None:
                raise RuntimeError(f"{engine} radix pool cannot hold {request_id}")
            all_slots = slots + new
            key_len = len(computed) - len(computed) % page_size
            prefix_len = radix.insert(computed[:key_len], all_slots[:key_len])
            radix.free(all_slots[len(slots):prefix_len])  # the tree already held these: duplicates
            radix.free(all_slots[key_len:])  # a partial last page is not cached
            radix.unlock(node)
            hits[request_id] = len(slots)
    return hits, evicted


def radix_vs_hash(block_size: int = 16) -> LabResult:
    # The 96-token system prompts end on a block boundary; the 100-token ones end 4 tokens into
    # a block, which only a token-granular tree can reuse.
    workloads = {"shared system prompts (96 tokens)": shared_prefix(seed=0),
                 "shared system prompts (100 tokens)": shared_prefix(system_len=100, seed=0),
                 "multi-turn chats": multi_turn(seed=0)}
    rows = []
    for label, workload in workloads.items():
        config = _config(workload, block_size)
        prompt_tokens = sum(len(r.prompt_token_ids) for r in workload)
        runs: dict[tuple[str, str, int], dict[str, int]] = {}
        evictions: dict[tuple[str, str, int], int] = {}
        orders = {}
        for engine in HASH_ENGINES:
            orders[engine], runs[("hash", engine, block_size)] = hash_hits(workload, config, engine)
            evictions[("hash", engine, block_size)] = 0  # the pool never hands a block out twice (see _config)
        if orders["mini"] != orders["vllm"]:
            raise RuntimeError(f"{label}: ours and vLLM admitted the requests in different orders")
        for page_size in (1, block_size):
            for engine in RADIX_ENGINES:
                runs[("radix", engine, page_size)], evictions[("radix", engine, page_size)] = radix_hits(
                    workload, orders["vllm"], config, engine, page_size)
        if any(evictions.values()):
            raise RuntimeError(f"{label}: a cache evicted {evictions}: the comparison would mix in eviction")
        hash_vllm = runs[("hash", "vllm", block_size)]
        for (kind, engine, granularity), hits in runs.items():
            upstream = "vllm" if kind == "hash" else "sglang"
            same = "yes" if hits == runs[(kind, upstream, granularity)] else "NO"
            cached = sum(hits.values())
            differ = sum(1 for r in hits if hits[r] != hash_vllm[r])
            rows.append([label, NAMES[(kind, engine)], f"{granularity} token{'s' if granularity > 1 else ''}",
                         prompt_tokens, cached, prompt_tokens - cached, f"{cached / prompt_tokens:.1%}",
                         f"{differ} of {len(hits)}", cached - sum(hash_vllm.values()), evictions[(kind, engine, granularity)], same])
    table = Table(
        "Prefix-cache hits under control: one request at a time, same order, nothing evicted",
        ["workload", "cache", "granularity", "prompt tokens", "served from cache", "recomputed in prefill",
         "of all prompt tokens", "requests whose hit differs from vLLM's", "tokens beyond vLLM's", "tokens evicted",
         "ours == upstream (per request)"],
        rows,
        "Every cache sees the same requests in the same order (vLLM's admission order with max_num_seqs=1), each "
        "request's computed KV cached before the next one looks, hits capped at prompt length - 1 on both sides. "
        "Counts, not times. With timing taken out, the radix tree at a page of 16 tokens finds exactly what the "
        "hashed 16-token blocks find, request by request; the radix tree at a page of 1 token adds only the tail "
        "of each match that ends inside a block ('tokens beyond vLLM's'). A live server's in-flight overlap and "
        "eviction policy change both sides further; this table holds them equal.",
    )
    return LabResult("radix-vs-hash", "Hash prefix caching vs the radix tree", {"block_size": block_size}, [table])


LABS = [Lab("radix-vs-hash", "Hash prefix caching vs the radix tree", radix_vs_hash, {"block_size": 16})]
