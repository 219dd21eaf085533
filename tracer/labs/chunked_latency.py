"""Chunked prefill in milliseconds: our engine on the bundled SmolLM2-135M (CPU, float32).

The scheduler lab (tracer.labs.scheduler_labs.chunked_prefill) counts the tokens in each step;
this one times them. A few requests decode while a long prompt arrives; each setting of the
token budget is run `repeats` times, the settings interleaved in each round (rotated, so slow
drift in the shared machine's load does not land on one setting), and each figure is the median
over rounds with the range beside it. Inter-token latency (ITL) of a decoder is the wall time
between two of its tokens: one engine step, whose time is set by everything in that step.
"""
from __future__ import annotations

import time
from statistics import median

from tracer.labs.engine_labs import bundled_engine
from tracer.labs.registry import Lab, LabResult, Table, environment, load_average

DECODER_PROMPT = "Tell me about bread. "
OFF_BUDGET = 1024  # bundled_engine's max_num_batched_tokens


def _one_run(engine, budget: int, chunked: bool, long_prompt: int, decoders: int, decode_tokens: int,
             arrive_after: int, tag: str) -> dict[str, float]:
    """Milliseconds of one run: decoders' ITL (max, median), the long prompt's TTFT, its steps to first token."""
    from engine.sampling_params import SamplingParams

    config = engine.scheduler.scheduler_config
    saved = (config.max_num_batched_tokens, config.enable_chunked_prefill)
    config.max_num_batched_tokens, config.enable_chunked_prefill = budget, chunked
    engine.scheduler.kv_cache_manager.reset_prefix_cache()  # the long prompt is computed every time
    try:
        decoder_ids = [f"{tag}-d{i}" for i in range(decoders)]
        prompt = engine.render(DECODER_PROMPT)
        for request_id in decoder_ids:
            engine.add_request(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True))
        last_token: dict[str, float] = {}
        gaps: list[float] = []
        prefilling: list[float] = []  # gaps ending in a step that ran while the long prompt had no token yet
        long_id, long_added, ttft, steps_to_first = f"{tag}-long", None, None, 0
        step = 0
        while engine.has_unfinished_requests():
            if step == arrive_after:
                ids = [100 + (7 * i + len(tag)) % 40000 for i in range(long_prompt)]
                engine.add_request(long_id, ids, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
                long_added = time.perf_counter()
            in_prefill = long_added is not None and ttft is None
            outputs = engine.step()
            now = time.perf_counter()
            step += 1
            if long_added is not None and ttft is None:
                steps_to_first += 1
            for output in outputs:
                if not output.new_token_ids:
                    continue
                if output.request_id == long_id and ttft is None:
                    ttft = now - long_added
                elif output.request_id in decoder_ids:
                    if output.request_id in last_token:
                        (prefilling if in_prefill else gaps).append(now - last_token[output.request_id])
                    last_token[output.request_id] = now
        return {"itl_prefill": median(prefilling) * 1e3, "itl_max": max(prefilling + gaps) * 1e3,
                "itl_other": median(gaps) * 1e3, "ttft": ttft * 1e3, "steps": steps_to_first}
    finally:
        config.max_num_batched_tokens, config.enable_chunked_prefill = saved


def _spread(values: list[float]) -> str:
    return f"{median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def chunked_prefill_ms(budgets: list[int] = [256, 128, 64], long_prompt: int = 384, decoders: int = 2,
                       decode_tokens: int = 24, arrive_after: int = 3, repeats: int = 5) -> LabResult:
    engine = bundled_engine()
    if max(budgets) > OFF_BUDGET or long_prompt + decoders > OFF_BUDGET:
        raise ValueError(f"the bundled engine is built for a {OFF_BUDGET}-token budget")
    # Chunking off: the whole prompt goes in one step, with the decodes (the budget holds both).
    settings = [("off", OFF_BUDGET)] + [("on", b) for b in budgets]
    import torch

    # One thread: on a machine whose cores other processes share, two threads wait on each other
    # at every matmul and the step times scatter; one thread gives steadier per-token costs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(engine, settings, long_prompt, decoders, decode_tokens, arrive_after, repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(engine, settings: list[tuple[str, int]], long_prompt: int, decoders: int, decode_tokens: int,
             arrive_after: int, repeats: int) -> LabResult:
    load_before = load_average()
    runs: dict[tuple[str, int], list[dict[str, float]]] = {s: [] for s in settings}
    _one_run(engine, 64, True, 64, decoders, 4, 1, "warmup")  # first-call costs (allocator, kernels) land here
    for round_index in range(repeats):
        shift = round_index % len(settings)
        for chunked, budget in settings[shift:] + settings[:shift]:
            runs[(chunked, budget)].append(_one_run(engine, budget, chunked == "on", long_prompt, decoders, decode_tokens,
                                                    arrive_after, f"{chunked}{budget}r{round_index}"))
    rows = []
    for (chunked, budget), results in runs.items():
        rows.append([chunked, budget, *(_spread([r[key] for r in results]) for key in ("itl_prefill", "itl_max", "itl_other", "ttft")),
                     int(median(r["steps"] for r in results))])
    table = Table(
        "Decode latency under a long prefill, in milliseconds (our engine, bundled SmolLM2-135M, CPU float32)",
        ["chunked prefill", "max_num_batched_tokens", "decoders' inter-token ms while the prompt prefills (median)",
         "decoders' worst inter-token ms", "decoders' inter-token ms otherwise (median)", "long prompt: TTFT ms",
         "long prompt: steps to first token"],
        rows,
        f"{decoders} requests decode {decode_tokens} tokens each; a {long_prompt}-token prompt arrives after "
        f"{arrive_after} steps. Median over {repeats} interleaved rounds, (min-max) beside it; one torch thread. CPU milliseconds on a "
        "shared machine: the shape carries over to a GPU (a step's time grows with its prefill tokens once the "
        "device is compute-bound; a decode-only step is nearly flat), the numbers do not.",
    )
    env = environment(load_at_start=load_before)
    return LabResult("chunked-prefill-ms", "Chunked prefill: decode latency in milliseconds", {}, [table], environment=env)


LABS = [
    Lab("chunked-prefill-ms", "Chunked prefill: decode latency in milliseconds", chunked_prefill_ms,
        {"budgets": [256, 128, 64], "long_prompt": 384, "decoders": 2, "decode_tokens": 24, "arrive_after": 3,
         "repeats": 5}),
]
