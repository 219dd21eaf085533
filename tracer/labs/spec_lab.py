"""Lab: n-gram speculative decoding on the bundled model, acceptance rate against speedup.

Wall-clock on the build machine (CPU, float32, two engines alternating, median of the repeats);
engine steps and acceptance counts are exact and do not depend on the machine's load.
"""
from __future__ import annotations

import time
from functools import lru_cache
from statistics import median

from engine.omp_env import use_passive_omp_wait

use_passive_omp_wait()  # before torch loads

from tracer.labs.registry import Lab, LabResult, Table, environment, load_average

QUOTE = ("The library opens at nine in the morning and closes at six in the evening. Members may borrow up to "
         "five books at a time, and each loan lasts three weeks.")
FUNCTION = ("def count_words(text):\n    counts = {}\n    for word in text.split():\n"
            "        counts[word] = counts.get(word, 0) + 1\n    return counts\n")
PROMPTS = {
    "copy": [f"Repeat the following text exactly, word for word.\n\n{QUOTE}",
             f"Rename the variable `counts` to `frequency` in this Python function and write out the whole function.\n\n{FUNCTION}"],
    "free": ["Write a short story about a lighthouse keeper.", "Write a short story about an old bicycle."],
}


@lru_cache(maxsize=2)
def _engine(k: int):
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
    from engine.llm_engine import LLMEngine

    spec = SpeculativeConfig(num_speculative_tokens=k, prompt_lookup_min=2, prompt_lookup_max=4) if k else None
    # float32: greedy output is the same with and without speculation there (the lab checks it);
    # in bfloat16 a verify pass over 1 + k tokens may round a near-tie the other way.
    return LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"),
        cache=CacheConfig(block_size=16, num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=1024),
        speculative=spec,
    ))


def _run(engine, prompt_ids: list[int], max_tokens: int) -> tuple[float, int, list[int]]:
    from engine.sampling_params import SamplingParams

    steps = engine.scheduler.current_step
    started = time.perf_counter()
    out = engine.generate([prompt_ids], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0]
    return time.perf_counter() - started, engine.scheduler.current_step - steps, out.output_token_ids


def spec_decode(k: list[int] = [2, 4], max_tokens: int = 32, repeats: int = 2) -> LabResult:
    load_at_start = load_average()
    baseline = _engine(0)
    rows = []
    for kind, prompts in PROMPTS.items():
        ids = [baseline.render(messages=[{"role": "user", "content": p}]) for p in prompts]
        for num_spec in k:
            engine = _engine(num_spec)
            stats = engine.scheduler.spec_decoding_stats
            drafted, accepted = stats.num_draft_tokens, stats.num_accepted_tokens
            times = {"off": [], "on": []}
            steps = {"off": 0, "on": 0}
            tokens = 0
            for repeat in range(repeats):
                for prompt in ids:
                    off = _run(baseline, prompt, max_tokens)
                    on = _run(engine, prompt, max_tokens)
                    if off[2] != on[2]:
                        raise AssertionError("greedy output changed with speculation")
                    times["off"].append(off[0])
                    times["on"].append(on[0])
                    if repeat == 0:
                        steps["off"] += off[1]
                        steps["on"] += on[1]
                        tokens += len(off[2])
            drafted = stats.num_draft_tokens - drafted
            accepted = stats.num_accepted_tokens - accepted
            per_prompt = len(ids)
            off_ms = 1000 * median(sum(times["off"][i:i + per_prompt]) for i in range(0, len(times["off"]), per_prompt))
            on_ms = 1000 * median(sum(times["on"][i:i + per_prompt]) for i in range(0, len(times["on"]), per_prompt))
            rows.append([kind, num_spec, tokens, f"{accepted / drafted:.0%}" if drafted else "-", steps["off"], steps["on"],
                         f"{steps['off'] / steps['on']:.2f}x", f"{off_ms:.0f}", f"{on_ms:.0f}", f"{off_ms / on_ms:.2f}x"])
    table = Table(
        "n-gram speculation on SmolLM2-135M (ours, CPU, greedy, fp32, batch 1)",
        ["workload", "k", "output tokens", "acceptance", "steps without", "steps with", "fewer steps",
         "ms without", "ms with", "speedup"],
        rows,
        f"Two prompts per workload, up to {max_tokens} tokens each, prompt_lookup_min 2 / max 4; ms: the two prompts "
        f"one after the other, median of {repeats}, the engines alternating. Outputs with and without speculation were "
        "equal token for token. 'Fewer steps' is the ceiling the speedup would reach if a verify step of 1 + k tokens "
        "cost what a one-token decode step costs.",
    )
    return LabResult("spec-decode", "n-gram speculative decoding", {}, [table], environment=environment(load_at_start))


LABS = [Lab("spec-decode", "n-gram speculative decoding: acceptance rate against speedup", spec_decode,
            {"k": [2, 4], "max_tokens": 32, "repeats": 2})]
