"""The trace_overhead workload, which bench/trace_overhead.py and bench/span_cost.py both run: a
decode-heavy offline batch (a few prompt tokens, max_tokens output tokens each, greedy, ignore_eos)
through LLMEngine.step, optionally traced to an OTLP/JSON-lines file.

Imports the engine and the tracer only when called, so span_cost's worker, which put another
revision's tree first on sys.path, runs that tree's.
"""
from __future__ import annotations

import time
from pathlib import Path

SUBJECTS = ["tea", "rain", "salt", "iron", "moss", "wool", "clay", "snow", "ink", "oak", "silk", "sand", "wax", "jade", "fog", "ash"]


def prompts(n: int) -> list[str]:
    return [f"Describe {SUBJECTS[i % len(SUBJECTS)]}." + " Briefly." * (i // len(SUBJECTS)) for i in range(n)]


def make_engine():
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=512), scheduler=SchedulerConfig(max_num_seqs=64)))


def run_once(engine, token_ids: list[list[int]], max_tokens: int, trace_file: Path | None) -> dict:
    """One pass of the workload; with trace_file, traced from the first add_request to the last span on disk."""
    from engine.sampling_params import SamplingParams
    from tracer.instrument import otel, spans, tracing

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    if trace_file is not None:
        tracing.enable("mini", trace_file=trace_file)
    try:
        start = time.perf_counter()
        for ids in token_ids:
            engine.add_request(None, ids, params)
        produced, steps = 0, 0
        while engine.has_unfinished_requests():
            produced += sum(len(o.new_token_ids) for o in engine.step())
            steps += 1
        engine_done = time.perf_counter()
        if trace_file is not None:
            otel.flush()
        end = time.perf_counter()
    finally:
        if trace_file is not None:
            tracing.disable()
            spans.registry.clear()
    return {"seconds": end - start, "flush_seconds": end - engine_done, "tokens": produced, "steps": steps}
