"""Lab: async scheduling on our engine, what it hides and what it makes late.

Two engines on the bundled model in float32, one synchronous and one with async scheduling
(AsyncScheduler + the batch queue of 2, engine/batch_queue.py). Three measurements:
- where a synchronous step's time goes, phase by phase, as bench/async_scheduling.py splits it:
  the host phases (schedule, input preparation, update + detokenize) are what async scheduling can
  run beside the forward; forward + sample it cannot;
- inter-token latency and throughput with it off and on, the engines alternating;
- how a request ends one step late: the steps a request is scheduled in, per way of finishing,
  with the output compared token for token (float32: greedy output is the same either way).
Milliseconds are wall-clock on the build machine (its load is printed with the tables); step
counts and tokens are exact.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from engine.omp_env import use_passive_omp_wait

use_passive_omp_wait()  # before torch loads

from tracer.labs.registry import Lab, LabResult, Table, environment, load_average

TOPICS = ["a lighthouse", "the moon", "bread", "rivers", "a violin", "winter", "trains", "bees"]
ENDINGS = ("max_tokens", "stop token", "stop string", "abort")


@lru_cache(maxsize=2)
def _engine(async_scheduling: bool):
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    # float32: the ending table compares token output with and without async scheduling.
    return LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"),
        cache=CacheConfig(block_size=16, num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=8, max_model_len=512, async_scheduling=async_scheduling),
    ))


def _prompts(engine, batch: int) -> list[list[int]]:
    return [engine.render(f"Write a short story about {TOPICS[i % len(TOPICS)]}.") for i in range(batch)]


def step_phase_times(engine, prompts: list[list[int]], max_tokens: int) -> dict[str, list[float]]:
    """ms of each synchronous step, by phase: what async scheduling can overlap with the forward
    (schedule, prepare inputs, update + detokenize) beside what it cannot. The lab and
    bench/async_scheduling.py both read it."""
    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for ids in prompts:
        engine.add_request(None, ids, params)
    phases: dict[str, list[float]] = {"schedule": [], "prepare inputs": [], "forward + sample": [], "update + detokenize": []}
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        scheduler_output = engine.scheduler.schedule()
        t1 = time.perf_counter()
        model_input = engine.model_runner.prepare_model_input(scheduler_output)
        t2 = time.perf_counter()
        runner_output = engine.model_runner.execute_model_input(model_input)
        t3 = time.perf_counter()
        engine.output_processor.process_outputs(engine.scheduler.update_from_output(scheduler_output, runner_output))
        t4 = time.perf_counter()
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[name].append(seconds * 1e3)
    return phases


@contextmanager
def timed_forwards(engine) -> Iterator[list[float]]:
    """Wall ms of each model execution (forward + sample) while the body runs, on whichever thread
    runs it (under async scheduling, the batch queue's model thread): the cost async scheduling
    leaves alone, so a change in it is the machine's, not the engine's. A step with nothing to run
    (no model input) is not counted. The lab and bench/async_scheduling.py both read it."""
    forwards: list[float] = []
    execute = type(engine.model_runner).execute_model_input

    def timed(model_input, grammar_output=None):
        started = time.perf_counter()
        try:
            return execute(engine.model_runner, model_input, grammar_output)
        finally:
            if model_input is not None:
                forwards.append((time.perf_counter() - started) * 1e3)

    engine.model_runner.execute_model_input = timed
    try:
        yield forwards
    finally:
        del engine.model_runner.execute_model_input  # the class's method again


@dataclass
class TimedRun:
    arrivals: dict[str, list[float]]  # request id -> perf_counter when each of its tokens was handed out
    seconds: float  # from the first add_request until the last step returned
    forwards: list[float]  # ms of each model execution (timed_forwards)

    @property
    def tokens(self) -> int:
        return sum(len(times) for times in self.arrivals.values())

    @property
    def gaps(self) -> list[float]:
        """Seconds between a request's consecutive tokens (ITL), over all requests."""
        return [b - a for times in self.arrivals.values() for a, b in zip(times, times[1:])]


def timed_run(engine, prompts: list[list[int]], max_tokens: int) -> TimedRun:
    """Every request in at once (greedy, exactly max_tokens each), stepped to the end, each token's
    hand-out time recorded per request. The lab and bench/async_scheduling.py both run it."""
    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    with timed_forwards(engine) as forwards:
        start = time.perf_counter()
        arrivals: dict[str, list[float]] = {engine.add_request(None, ids, params).request_id: [] for ids in prompts}
        while engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            for out in outputs:
                arrivals[out.request_id].extend([now] * len(out.new_token_ids))
        elapsed = time.perf_counter() - start
    return TimedRun(arrivals, elapsed, forwards)


def _timed_run(engine, prompts: list[list[int]], max_tokens: int) -> tuple[float, float, float]:
    """(ITL p50 ms over all requests, output tok/s, forward + sample p50 ms)."""
    run = timed_run(engine, prompts, max_tokens)
    return statistics.median(run.gaps) * 1e3, run.tokens / run.seconds, statistics.median(run.forwards)


def _count_scheduled(engine, request_id: str) -> list[int]:
    """Wrap this engine's scheduler.schedule to count the steps `request_id` is scheduled in."""
    count = [0]
    schedule = type(engine.scheduler).schedule

    def counting(*args, **kwargs):
        output = schedule(engine.scheduler, *args, **kwargs)
        count[0] += request_id in output.num_scheduled_tokens
        return output

    engine.scheduler.schedule = counting
    return count


def _ending(engine, prompt: list[int], ending: str, stop: dict, at: int, max_tokens: int) -> tuple[list[int], int]:
    """One request alone, ended the given way after `at` tokens: (its output ids, steps it was scheduled in)."""
    from engine.sampling_params import SamplingParams

    kwargs = {"max_tokens": at if ending == "max_tokens" else max_tokens, "ignore_eos": True}
    if ending == "stop token":
        kwargs["stop_token_ids"] = [stop["token"]]
    elif ending == "stop string":
        kwargs["stop"] = [stop["string"]]
    request_id = engine.add_request(None, prompt, SamplingParams(temperature=0.0, **kwargs)).request_id
    count = _count_scheduled(engine, request_id)
    tokens: list[int] = []
    try:
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens = list(out.output_token_ids)
                if ending == "abort" and len(tokens) >= at and not out.finished:
                    engine.abort_request(request_id)  # the client goes away after `at` tokens
    finally:
        del engine.scheduler.schedule  # the class's method again
    return tokens, count[0]


def _stops(engine, prompt: list[int], at: int, max_tokens: int) -> dict:
    """A stop token and a stop string the greedy output first reaches at its `at`-th token."""
    from engine.sampling_params import SamplingParams

    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))[0]
    ids = out.output_token_ids
    decode = engine.tokenizer.decode
    for index in range(at - 1, len(ids) - 1):
        piece = decode(ids[: index + 1])[len(decode(ids[:index])):]
        text = decode(ids[: index + 1])
        if ids[index] not in ids[:index] and piece.strip() and text.find(piece) == len(text) - len(piece):
            return {"token": ids[index], "string": piece, "at": index + 1}
    raise AssertionError("no token of the greedy output is new at its position; pick another prompt")


def async_scheduling(batch: int = 4, max_tokens: int = 10, pairs: int = 2, ending_at: int = 4) -> LabResult:
    load_at_start = load_average()
    engines = {False: _engine(False), True: _engine(True)}
    prompts = _prompts(engines[False], batch)
    for engine in engines.values():
        _timed_run(engine, prompts[:1], 2)  # warm both (oneDNN primitives, the allocator, the model thread)

    phases = {name: statistics.median(ms) for name, ms in step_phase_times(engines[False], prompts, max_tokens).items()}
    total = sum(phases.values())
    hideable = total - phases["forward + sample"]
    runs = {False: [], True: []}
    for pair in range(pairs):
        for on in ((False, True) if pair % 2 == 0 else (True, False)):
            runs[on].append(_timed_run(engines[on], prompts, max_tokens))
    rows = [[name, f"{ms:.2f}", f"{ms / total:.1%}", "no" if name == "forward + sample" else "yes"] for name, ms in phases.items()]
    rows.append(["step", f"{total:.2f}", "100%", f"{hideable:.2f} ms at most"])
    phase_table = Table(
        f"Where a synchronous step's time goes (ours, CPU, fp32, batch {batch})",
        ["phase", "ms per step (median)", "share", "async scheduling can overlap it"],
        rows,
        f"{batch} requests of {max_tokens} tokens, greedy; the median of each phase over the run's steps, timed as "
        "bench/async_scheduling.py times them. Only the host phases can run beside the forward.",
    )
    median = {on: [statistics.median(r[i] for r in runs[on]) for i in range(3)] for on in (False, True)}
    (off_itl, off_tps, off_fwd), (on_itl, on_tps, on_fwd) = median[False], median[True]
    effect_table = Table(
        "Async scheduling off and on (ours, same machine, alternating)",
        ["async scheduling", "ITL p50 ms", "output tok/s", "forward + sample p50 ms"],
        [["off", f"{off_itl:.1f}", f"{off_tps:.1f}", f"{off_fwd:.1f}"], ["on", f"{on_itl:.1f}", f"{on_tps:.1f}", f"{on_fwd:.1f}"],
         ["on / off", f"{on_itl / off_itl:.2f}", f"{on_tps / off_tps:.2f}", f"{on_fwd / off_fwd:.2f}"]],
        f"Median of {pairs} runs each, the two engines alternating so the shared machine's load falls on both. "
        f"Async scheduling can take at most the host phases above ({hideable:.2f} ms) off a step and leaves the "
        "forward alone: where ITL moves with the forward column, the machine moved, not the engine.",
    )

    prompt = _prompts(engines[False], 1)[0]
    stop = _stops(engines[False], prompt, ending_at, max_tokens)
    ending_rows = []
    for ending in ENDINGS:
        (sync_ids, sync_steps), (async_ids, async_steps) = (
            _ending(engines[on], prompt, ending, stop, stop["at"], max_tokens) for on in (False, True))
        if sync_ids != async_ids:
            raise AssertionError(f"{ending}: the output changed with async scheduling")
        ending_rows.append([ending, len(sync_ids), sync_steps, async_steps, async_steps - sync_steps])
    ending_table = Table(
        "Ending a request: the steps it is scheduled in (ours, one request, greedy, fp32)",
        ["ends by", "output tokens", "steps, sync", "steps, async", "steps computed and dropped"],
        ending_rows,
        f"The request ends after {stop['at']} tokens each way: max_tokens={stop['at']}, its {stop['at']}th token as a "
        f"stop token, the text {stop['string']!r} as a stop string, or an abort once {stop['at']} tokens are out. "
        "Outputs with and without async scheduling were equal token for token.",
    )
    return LabResult("async-scheduling", "async scheduling: what it hides, what it makes late", {},
                     [phase_table, effect_table, ending_table], environment=environment(load_at_start))


LABS = [Lab("async-scheduling", "async scheduling on our engine: host work per step, ITL on / off, endings one step late",
            async_scheduling, {"batch": 4, "max_tokens": 10, "pairs": 2, "ending_at": 4})]
