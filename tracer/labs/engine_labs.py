"""Labs that run our engine on the bundled SmolLM2-135M model (CPU, float32), where the model's cost is the point.

Timings are wall-clock on the build machine, median of a few repeats; they are CPU numbers and
say nothing about a GPU. Token and block counts are exact.
"""
from __future__ import annotations

import time
from functools import lru_cache
from statistics import median

from engine.omp_env import use_passive_omp_wait

use_passive_omp_wait()  # before torch loads

from engine.math_utils import cdiv
from tracer.labs.registry import Lab, LabResult, Table, environment, load_average

SYSTEM_SENTENCE = "You are a careful assistant for a cooking school; answer briefly, cite temperatures in Celsius. "
QUESTIONS = ["How long should I boil an egg?", "What oil is best for deep frying?", "Why does bread dough need to rest?"]


@lru_cache(maxsize=2)
def bundled_engine(block_size: int = 16, num_blocks: int = 256, budget: int = 1024, max_model_len: int = 1024):
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=budget, max_model_len=max_model_len),
    ))


def _first_token(engine, request_id: str, prompt_ids: list[int]) -> tuple[float, int, int]:
    """(seconds to the first token, cached tokens, new KV blocks allocated) for one request alone."""
    from engine.sampling_params import SamplingParams

    manager = engine.scheduler.kv_cache_manager
    free_before = manager.get_num_free_blocks()
    engine.add_request(request_id, prompt_ids, SamplingParams(temperature=0.0, max_tokens=1))
    started = time.perf_counter()
    outputs = []
    while not outputs:
        outputs = [o for o in engine.step() if o.request_id == request_id and o.new_token_ids]
    seconds = time.perf_counter() - started
    cached = outputs[0].num_cached_tokens
    blocks_held = cdiv(len(prompt_ids), engine.config.cache.block_size)
    new_blocks = blocks_held - cached // engine.config.cache.block_size
    while engine.has_unfinished_requests():
        engine.step()
    assert manager.get_num_free_blocks() <= free_before  # cached blocks stay (evictable) in the pool
    return seconds, cached, new_blocks


def prefix_cache_hit(system_repeats: int = 6, repeats: int = 3) -> LabResult:
    load_at_start = load_average()
    engine = bundled_engine()
    system = SYSTEM_SENTENCE * system_repeats
    prompts = {q: engine.render(system + q) for q in QUESTIONS[:2]}
    first, second = QUESTIONS[:2]
    cases = [
        ("cold: empty cache", first, True),
        ("warm: same system prompt, new question", second, False),
        ("warm: the identical prompt again", first, False),
    ]
    runs: dict[str, list[tuple[float, int, int]]] = {label: [] for label, _, _ in cases}
    for repeat in range(repeats):
        for label, question, reset in cases:
            if reset:
                engine.scheduler.kv_cache_manager.reset_prefix_cache()
            runs[label].append(_first_token(engine, f"{label[:4]}-{repeat}", prompts[question]))
    rows = []
    cold_ms = median(r[0] for r in runs[cases[0][0]]) * 1e3
    for label, question, _ in cases:
        seconds, cached, new_blocks = runs[label][-1]
        ms = median(r[0] for r in runs[label]) * 1e3
        prompt_len = len(prompts[question])
        rows.append([label, prompt_len, cached, prompt_len - cached, new_blocks, f"{ms:.0f}", f"{ms / cold_ms:.2f}"])

    # Memory: two requests with the shared prefix running at the same time hold its blocks once.
    from engine.sampling_params import SamplingParams

    engine.scheduler.kv_cache_manager.reset_prefix_cache()
    block_size = engine.config.cache.block_size
    manager = engine.scheduler.kv_cache_manager
    free_before = manager.get_num_free_blocks()
    for i, question in enumerate((first, second)):
        engine.add_request(f"both-{i}", prompts[question], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    engine.step()
    held = free_before - manager.get_num_free_blocks()
    unshared = sum(cdiv(len(prompts[q]), block_size) for q in (first, second))
    while engine.has_unfinished_requests():
        engine.step()

    timing = Table(
        "Time to first token on our engine, alone in the engine (bundled SmolLM2-135M, CPU float32)",
        ["request", "prompt tokens", "served from cache", "computed in prefill", "new KV blocks", "TTFT ms (median)", "vs cold"],
        rows,
        f"Median of {repeats} runs each; one step computes the whole uncached part (budget 1024 tokens). "
        "A fully cached prompt still recomputes its last block: the hit is capped at prompt length - 1 and rounded "
        "down to whole 16-token blocks, because the last token's logits are needed to sample.",
    )
    memory = Table(
        "KV blocks held while two requests share the system prompt",
        ["requests", "blocks if nothing were shared", "blocks held (prefix caching on)", "saved"],
        [[2, unshared, held, unshared - held]],
        "Measured after the first step, with both prompts admitted in the same step: the second request's lookup "
        "already finds the first one's full blocks, which allocate_slots cached at schedule time.",
    )
    return LabResult("prefix-cache-hit", "What a prefix-cache hit saves", {}, [timing, memory], environment=environment(load_at_start))


def forward_cost(batch_sizes: list[int] = [1, 4, 16], prefill_tokens: list[int] = [16, 128, 512], repeats: int = 3) -> LabResult:
    from engine.sampling_params import SamplingParams

    load_at_start = load_average()
    engine = bundled_engine()
    rows = []
    for tokens in prefill_tokens:
        times = []
        for repeat in range(repeats):
            engine.scheduler.kv_cache_manager.reset_prefix_cache()
            ids = [100 + (7 * i + repeat) % 40000 for i in range(tokens)]
            times.append(_first_token(engine, f"prefill-{tokens}-{repeat}", ids)[0])
        ms = median(times) * 1e3
        rows.append(["prefill", tokens, 1, f"{ms:.1f}", f"{tokens / ms * 1e3:.0f}"])
    for batch in batch_sizes:
        engine.scheduler.kv_cache_manager.reset_prefix_cache()
        for i in range(batch):
            engine.add_request(f"decode-{batch}-{i}", [100 + i, 200 + i, 300 + i, 400 + i],
                               SamplingParams(temperature=0.0, max_tokens=2 + repeats, ignore_eos=True))
        engine.step()  # the prefill step
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - started)
        while engine.has_unfinished_requests():
            engine.step()
        ms = median(times) * 1e3
        rows.append(["decode", batch, batch, f"{ms:.1f}", f"{batch / ms * 1e3:.0f}"])
    table = Table(
        "One engine step on our engine: bundled SmolLM2-135M, CPU, float32, eager PyTorch (no CUDA, no graphs)",
        ["step", "tokens in the step", "requests", "step ms (median)", "tokens per second"],
        rows,
        "Whole engine steps (schedule, model runner, sampler, update), median of a few. These are CPU numbers on a "
        "shared machine: they show the shape (decode is cheap per step and gains from batching; prefill cost "
        "grows with its tokens), not what a GPU does.",
    )
    return LabResult("forward-cost", "Engine step cost on the CPU", {}, [table], environment=environment(load_at_start))


LABS = [
    Lab("prefix-cache-hit", "What a prefix-cache hit saves", prefix_cache_hit, {"system_repeats": 6, "repeats": 3}),
    Lab("forward-cost", "Engine step cost on the CPU", forward_cost, {"batch_sizes": [1, 4, 16], "prefill_tokens": [16, 128, 512], "repeats": 3}),
]
