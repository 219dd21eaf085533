"""Speculation traced: spec.propose and spec.verify spans nest in the engine-step traces and carry
the draft, accepted and rejected counts the scheduler itself counted."""
from __future__ import annotations

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tracer.instrument import tracing
from tracer.traces import schema
from tracer.traces.trace_file import read_trace_file

QUOTE = "The committee approved the budget for the new library, which will open in the spring of next year."
PROMPT = f"Repeat the sentence exactly.\nSentence: {QUOTE}\nRepeated: {QUOTE}\nSentence: {QUOTE}\nRepeated:"


def test_spec_spans_carry_the_schedulers_counts(tmp_path):
    engine = LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"),  # token for token: bf16 is this CPU's default
        cache=CacheConfig(block_size=16, num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256),
        speculative=SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4),
    ))
    path = tmp_path / "trace.jsonl"
    with tracing.traced("mini", path) as report:
        engine.generate([PROMPT, "The capital of France is"], SamplingParams(temperature=0.0, max_tokens=16))
    assert report.failed == {}
    trace = read_trace_file(path)
    stats = engine.scheduler.spec_decoding_stats
    verifies, proposes = trace.named("spec.verify"), trace.named("spec.propose")
    assert verifies and proposes
    step_traces = {s.trace_id for s in trace.named("engine.step")}
    assert {s.trace_id for s in verifies + proposes} <= step_traces
    total = lambda records, key: sum(s.attributes[key] for s in records)  # noqa: E731
    assert total(verifies, schema.SPEC_NUM_DRAFT) == stats.num_draft_tokens
    assert total(verifies, schema.SPEC_NUM_ACCEPTED) == stats.num_accepted_tokens > 0
    assert total(verifies, schema.SPEC_NUM_REJECTED) == stats.num_draft_tokens - stats.num_accepted_tokens
    # Every verified draft was proposed the step before; the last step's proposals go unused.
    assert total(proposes, schema.SPEC_NUM_DRAFT) >= stats.num_draft_tokens
