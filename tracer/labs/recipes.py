"""Trace recipes: record a trace the way a user would, for `::: trace recipe=NAME`.

Each recipe writes an OTLP/JSON-lines trace (and, for replays, the workload it replayed) so the
page can show the timeline, link the files, and print the command that records it again.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracer.labs import structured_output_lab
from tracer.labs.cache import cache_path

from engine.omp_env import use_passive_omp_wait

use_passive_omp_wait()  # before torch loads


class RecipeError(ValueError):
    """An unknown trace recipe, or one that failed to record."""


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    record: Callable[[Path], list[str]]  # writes the trace into a directory; returns the command lines shown


def _mini_shared_prefix(out: Path) -> list[str]:
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tracer.instrument import tracing

    system = "You are a careful assistant who answers questions about cooking, briefly and precisely. " * 3
    prompts = [system + "How long should I boil an egg?", system + "What is the best oil for frying?"]
    engine = LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=64, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256),
    ))
    with tracing.traced("mini", out / "trace.jsonl", service_name="servetrace-mini"):
        engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    return [
        "servetrace site trace mini-shared-prefix --out trace.jsonl",
        "# two prompts sharing a 3-sentence system prompt, greedy, 4 tokens each; block_size=16,",
        "# max_num_batched_tokens=64 (so the prefill is chunked), prefix caching on",
    ]


def _mini_spec_decode(out: Path) -> list[str]:
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tracer.instrument import tracing

    quote = "The committee approved the budget for the new library, which will open in the spring of next year."
    prompts = [f"Repeat the sentence exactly.\nSentence: {quote}\nRepeated: {quote}\nSentence: {quote}\nRepeated:",
               "Write a short story about a lighthouse keeper."]
    engine = LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=64, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256),
        speculative=SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4),
    ))
    with tracing.traced("mini", out / "trace.jsonl", service_name="servetrace-mini"):
        engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    return [
        "servetrace site trace mini-spec-decode --out trace.jsonl",
        "# a copy-heavy prompt and a story, greedy, 16 tokens each, n-gram speculation",
        "# (--speculative-method ngram --num-speculative-tokens 4 --prompt-lookup-min 2 --prompt-lookup-max 4)",
    ]


def _mini_async_scheduling(out: Path) -> list[str]:
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tracer.instrument import tracing

    prompts = ["Write a short story about a lighthouse keeper.", "Name three rivers in Europe."]
    engine = LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"),
        cache=CacheConfig(block_size=16, num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256, async_scheduling=True),
    ))
    with tracing.traced("mini", out / "trace.jsonl", service_name="servetrace-mini"):
        engine.generate(prompts, [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (6, 3)])
    return [
        "servetrace site trace mini-async-scheduling --out trace.jsonl",
        "# two prompts, greedy, 6 and 3 tokens, async scheduling on (--async-scheduling): each step's",
        "# model.execute runs on the batch queue's thread while the next step is scheduled",
    ]


def _async_workload() -> list:
    from tracer.replay.workload import WorkloadRequest, pseudo_random_ids

    return [WorkloadRequest("a", 0, pseudo_random_ids("async-a", 40), 5), WorkloadRequest("b", 1, pseudo_random_ids("async-b", 90), 3)]


def _replay_recipe(workload_fn: Callable[[], list], config_kwargs: dict, flags: str,
                   what: str = "vLLM's synchronous Scheduler") -> Callable[[Path], list[str]]:
    def record(out: Path) -> list[str]:
        from tracer.replay.config import ReplayConfig
        from tracer.replay.session import run_replay
        from tracer.replay.workload import save_workload

        workload = workload_fn()
        save_workload(workload, out / "workload.jsonl")
        with tempfile.TemporaryDirectory() as scratch:
            result = run_replay(workload, ReplayConfig(**config_kwargs), ["vllm"], scratch, trace=True)
            trace = Path(scratch) / "trace-vllm.jsonl"
            if not trace.exists():
                raise RecipeError(f"the vLLM replay wrote no trace: {'; '.join(result.notes) or 'no reason given'}")
            shutil.copy(trace, out / "trace.jsonl")
        return [f"servetrace replay workload.jsonl --engines vllm {flags} --out replay-out",
                f"# the trace is replay-out/trace-vllm.jsonl; {what}, driven without a model"]
    return record


def _prefix_reasons_workload() -> list:
    """A shared 40-token prompt asked again, cut to two blocks, changed at token 20, and twins
    arriving together: one prefix-cache miss reason each (tests/test_explain.py plants the same)."""
    from tracer.replay.workload import WorkloadRequest, pseudo_random_ids

    base = pseudo_random_ids("prefix-reasons", 40)
    changed = base[:20] + [7] + base[21:]
    twin = pseudo_random_ids("prefix-reasons-twin", 40)
    return [WorkloadRequest(rid, step, tokens, 4) for rid, step, tokens in (
        ("first", 0, base), ("again", 10, base), ("exact", 12, base[:32]), ("differs", 14, changed),
        ("twin-a", 20, twin), ("twin-b", 20, twin))]


PREFIX_REASONS_CONFIG = dict(block_size=16, num_blocks=64, max_num_batched_tokens=256)


def _sglang_prefix_reasons(out: Path) -> list[str]:
    """SGLang 0.5.23's real Scheduler (in .venv-sglang) on the prefix-reasons workload, page size 16."""
    from tracer.replay.config import ReplayConfig
    from tracer.replay.runners.sglang_scheduler import replay_sglang_scheduler
    from tracer.replay.workload import save_workload

    workload = _prefix_reasons_workload()
    save_workload(workload, out / "workload.jsonl")
    log = replay_sglang_scheduler(workload, ReplayConfig(**PREFIX_REASONS_CONFIG), trace_file=out / "trace.jsonl")
    if log.stalled or not (out / "trace.jsonl").exists():
        raise RecipeError(f"the SGLang scheduler replay wrote no trace ({log.stalled or 'no reason given'})")
    return ["servetrace replay workload.jsonl --engines mini-sglang,sglang --block-size 16 --num-blocks 64 "
            "--max-num-batched-tokens 256 --out replay-out",
            "# the trace is replay-out/trace-sglang-scheduler.jsonl; SGLang's Scheduler, PrefillAdder and RadixCache, no model"]


def _preemption_workload() -> list:
    from tracer.replay.workload import memory_pressure

    return memory_pressure(num_requests=4, prompt_len=(20, 40), max_tokens=(30, 50), seed=1)


def _chunked_workload() -> list:
    from tracer.replay.workload import WorkloadRequest, pseudo_random_ids

    requests = [WorkloadRequest(f"d{i}", 0, pseudo_random_ids(f"decoder-prompt-{i}", 24), 12) for i in range(2)]
    requests.append(WorkloadRequest("long", 2, pseudo_random_ids("long-prompt", 300), 2))
    return requests


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("mini-shared-prefix", "our engine on the bundled model: two requests sharing a system prompt", _mini_shared_prefix),
        Recipe("mini-spec-decode", "our engine on the bundled model with n-gram speculation: a copy-heavy prompt and a story",
               _mini_spec_decode),
        Recipe("mini-structured-output", "our engine on the bundled model: JSON-schema and regex requests (grammar.* hops)",
               lambda out: structured_output_lab.record_structured_trace(out)),
        Recipe(
            "vllm-preemption", "vLLM's Scheduler replayed on a KV pool too small for four long decodes",
            _replay_recipe(_preemption_workload, dict(block_size=16, num_blocks=12, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=512),
                           "--block-size 16 --num-blocks 12 --max-num-seqs 4 --max-num-batched-tokens 256 --max-model-len 512"),
        ),
        Recipe("vllm-prefix-reasons", "vLLM's Scheduler replayed on the prefix-reasons workload (16-token blocks)",
               _replay_recipe(_prefix_reasons_workload, PREFIX_REASONS_CONFIG,
                              "--block-size 16 --num-blocks 64 --max-num-batched-tokens 256")),
        Recipe("sglang-prefix-reasons", "SGLang's Scheduler replayed on the prefix-reasons workload (16-token pages)",
               _sglang_prefix_reasons),
        Recipe("mini-async-scheduling", "our engine on the bundled model with async scheduling: two requests, the batch queue's overlap",
               _mini_async_scheduling),
        Recipe(
            "vllm-async-scheduling", "vLLM's AsyncScheduler replayed in step_with_batch_queue's order: a chunked prompt beside a decode",
            _replay_recipe(_async_workload, dict(block_size=16, num_blocks=64, max_num_batched_tokens=64, async_scheduling=True),
                           "--block-size 16 --num-blocks 64 --max-num-batched-tokens 64 --async-scheduling",
                           "vLLM 0.33's AsyncScheduler in EngineCore.step_with_batch_queue's order"),
        ),
        Recipe(
            "vllm-chunked-prefill", "vLLM's Scheduler replayed: a 300-token prompt chunked under a 64-token budget while two requests decode",
            _replay_recipe(_chunked_workload, dict(block_size=16, num_blocks=64, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=512),
                           "--block-size 16 --num-blocks 64 --max-num-seqs 4 --max-num-batched-tokens 64 --max-model-len 512"),
        ),
    )
}


@dataclass
class RecordedTrace:
    name: str
    directory: Path
    commands: list[str]

    @property
    def trace(self) -> Path:
        return self.directory / "trace.jsonl"

    @property
    def workload(self) -> Path | None:
        path = self.directory / "workload.jsonl"
        return path if path.exists() else None


def record_trace(name: str, cache_dir: Path) -> RecordedTrace:
    """Record (or reuse the cached recording of) a trace recipe."""
    if name not in RECIPES:
        raise RecipeError(f"no trace recipe named {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    directory = cache_path(cache_dir, "traces", name, {}, "")
    commands_file = directory / "commands.txt"
    if commands_file.exists() and (directory / "trace.jsonl").exists():
        return RecordedTrace(name, directory, commands_file.read_text().splitlines())
    scratch = directory.with_name(directory.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        commands = RECIPES[name].record(scratch)
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"trace recipe {name} failed: {type(exc).__name__}: {exc}") from exc
    (scratch / "commands.txt").write_text("\n".join(commands) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    scratch.rename(directory)
    return RecordedTrace(name, directory, commands)
