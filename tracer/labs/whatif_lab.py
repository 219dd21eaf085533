"""Lab: what-if replay on a small trace of our engine, checked against a real run of the changed config.

Our engine (the bundled SmolLM2-135M) serves one open-loop workload (requests added at fixed times
while the engine steps) under config A, traced; `servetrace whatif` fits its step-time model on A's
steps and predicts the workload under B through the real schedulers (ours and vLLM 0.33's); then
the engine serves the same workload under B, traced, and B's latencies are read off that trace the
same engine-side way (from entering the scheduler to the end of the step that sampled the token).
Wall-clock on the build machine: one run each, so the load between A and B is part of the error.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared-core matmuls 10-50x

from tracer.labs.registry import Lab, LabResult, Table, environment, load_average

MEANING = {
    "const": "per step: the weight read, launch, sampling, the scheduler's own work",
    "prefill_tokens": "per prompt token computed",
    "decode_tokens": "per decoding request (one token each)",
    "context_tokens": "per token of KV the batch's attention reads",
    "prefill_attention": "per thousand (chunk token, key) pairs a causal kernel computes in a prefill",
    "serial_decode_tokens": "more per decoding request in a step our server computes on one thread",
    "parallel_step": "more per step our server computes on every thread",
}


def lab_workload(requests: int, max_tokens: int, gap_ms: float, seed: int = 0) -> list[tuple[float, str, list[int], int]]:
    """(arrival s, id, prompt ids, max_tokens): every other request on one 48-token system prompt."""
    rng = random.Random(seed)
    system = [rng.randrange(1000, 30000) for _ in range(48)]
    out, clock = [], 0.0
    for i in range(requests):
        own = [rng.randrange(1000, 30000) for _ in range(rng.randint(16, 96))]
        out.append((clock, f"r{i}", (system + own) if i % 2 == 0 else own, max_tokens))
        clock += rng.expovariate(1000.0 / gap_ms)
    return out


@lru_cache(maxsize=1)
def _engine_b(max_num_seqs: int):
    """Config B: the labs' shared engine's (tracer.labs.engine_labs.bundled_engine) with another max_num_seqs."""
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tracer.labs.engine_labs import bundled_engine

    shared = bundled_engine().config
    engine = LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=shared.cache.block_size, num_blocks=shared.cache.num_blocks, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=shared.scheduler.max_num_batched_tokens,
                                  max_model_len=shared.scheduler.max_model_len)))
    engine.generate([[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=2))  # one-off first-step costs, untraced
    return engine


def serve_traced(engine, workload: list, trace: Path) -> None:
    """One engine under its config: each request added once its arrival time has passed (open loop),
    the engine stepping meanwhile, traced by the catalog's hooks."""
    from engine.sampling_params import SamplingParams
    from tracer.instrument import hooks, otel, spans

    otel.configure(trace_file=trace, engine="mini")
    hooks.install("mini", import_modules=True)
    try:
        pending = list(workload)
        start = time.monotonic()
        while pending or engine.has_unfinished_requests():
            now = time.monotonic() - start
            while pending and pending[0][0] <= now:
                _, rid, prompt, max_tokens = pending.pop(0)
                engine.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
            if engine.has_unfinished_requests():
                engine.step()
            elif pending:
                time.sleep(max(0.0, pending[0][0] - (time.monotonic() - start)))
        otel.flush()
    finally:
        hooks.uninstall()
        otel.shutdown()
        spans.registry.clear()


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"


def whatif_lab(requests: int = 8, max_tokens: int = 16, gap_ms: float = 50.0, changed_max_num_seqs: int = 2) -> LabResult:
    from engine.sampling_params import SamplingParams
    from tracer.labs.engine_labs import bundled_engine
    from tracer.replay.traced_run import read_traced_run
    from tracer.replay.whatif.latency import latencies
    from tracer.replay.whatif.session import fit_on_trace, run_whatif

    load_at_start = load_average()
    engine_a = bundled_engine()
    engine_a.generate([[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=2))  # warm, untraced
    engine_b = _engine_b(changed_max_num_seqs)
    config_a = engine_a.config.scheduler
    max_num_seqs, budget = config_a.max_num_seqs, config_a.max_num_batched_tokens
    workload = lab_workload(requests, max_tokens, gap_ms)
    with tempfile.TemporaryDirectory(prefix="servetrace-whatif-lab-") as folder:
        trace_a, trace_b = Path(folder) / "a.jsonl", Path(folder) / "b.jsonl"
        serve_traced(engine_a, workload, trace_a)
        load_between = load_average()
        result = run_whatif(trace_a, {"max_num_seqs": changed_max_num_seqs}, ["mini", "vllm"])
        serve_traced(engine_b, workload, trace_b)
        _, log_b, agrees_b, _ = fit_on_trace(read_traced_run(trace_b))
        measured_b = latencies(log_b).summary()
    model, error = result.model, result.model.fit_error
    batches = error.get("decode_batches")
    if error.get("constant_identified"):
        evidence = f"A's decode-only steps ran {batches[0]}-{batches[1]} requests: they tell the constant from the per-request cost"
    else:
        evidence = (f"A's decode-only steps ran {batches[0]}-{batches[1]} requests" if batches else "A has few decode-only steps") + (
            ": too narrow a range to tell the constant from the per-request cost, so B's smaller batches are an "
            "extrapolation (a trace whose load ramps up and down holds what this one lacks)")
    held = error.get("held_out")
    held_out = (f"on steps held out of the fit (each fifth predicted by a model fitted on the rest) median "
                f"{100 * held['median_rel']:.0f}%, {100 * held['total_rel']:+.1f}% over the run" if held else
                "too few steps to hold some out")
    coefficients = Table(
        f"The step-time model fitted on config A's {error['steps']} steps (least squares, no coefficient below 0, "
        f"the constant no lower than the decode-only steps measure)",
        ["feature", "coefficient", "unit"],
        [[name, f"{1e3 * value:.4f}", f"ms {MEANING[name]}"] for name, value in zip(model.features, model.coefficients)],
        f"Its own error on those steps: median {100 * error['median_rel']:.0f}% per step, mean |error| "
        f"{error['mean_abs_ms']:.2f} ms of a {error['measured_mean_ms']:.1f} ms mean step, {100 * error['total_rel']:+.1f}% "
        f"over the run; {held_out}. {evidence}. A coefficient at 0 is a feature the fit left out (it would have come out negative, or the "
        f"trace never varied it). Between steps: {1e3 * model.gap_s:.2f} ms; an idle engine's wake: {1e3 * model.wake_s:.2f} ms.",
    )
    changed = {p.engine: p for p in result.predictions if p.label == "changed"}
    engines = list(changed)
    rows = []
    for metric, label in (("ttft_ms", "TTFT"), ("itl_ms", "ITL")):
        for stat in ("mean", "p50", "p90"):
            real = measured_b[metric][stat]
            predicted = [changed[e].summary[metric][stat] for e in engines]
            rows.append([f"{label} {stat}", _ms(result.measured[metric][stat]), *[_ms(p) for p in predicted], _ms(real),
                         f"{100 * (predicted[0] - real) / real:+.0f}%" if real else "-"])
    rows.append(["throughput tok/s", f"{result.measured['throughput_tok_s']:.1f}",
                 *[f"{changed[e].summary['throughput_tok_s']:.1f}" for e in engines], f"{measured_b['throughput_tok_s']:.1f}", ""])
    table = Table(
        f"max_num_seqs {max_num_seqs} -> {changed_max_num_seqs}: predicted from A's trace, then run for real (ms, engine-side)",
        ["metric", f"A measured (max_num_seqs {max_num_seqs})", *[f"B predicted ({e})" for e in engines],
         f"B measured (max_num_seqs {changed_max_num_seqs})", "error (ours)"],
        rows,
        f"{requests} requests, Poisson arrivals {gap_ms:g} ms apart on average, prompts 16-144 tokens (every other on "
        f"one 48-token system prompt), {max_tokens} output tokens each, token budget {budget}. One run of A and one of "
        f"B, load (1 min) {load_at_start} before A, {load_between} before B: the load's swing between the two runs "
        f"is in the error. B's own trace replays through our scheduler "
        f"{'on every step' if agrees_b.agree else f'on {agrees_b.agreeing_steps} of {agrees_b.traced_steps} steps'}.",
    )
    return LabResult("whatif", "What-if replay: predicted against measured", {}, [coefficients, table],
                     environment=environment(load_at_start))


LABS = [Lab("whatif", "What-if replay on our engine: the step-time model and a prediction checked against a real run",
            whatif_lab, {"requests": 8, "max_tokens": 16, "gap_ms": 50.0, "changed_max_num_seqs": 2})]
