"""The engine with n-gram speculation produces, greedy and in fp32, token for token what it produces
without speculation and what transformers generates: in a batch, through chunked prefill, prefix
cache hits and preemption under a small KV pool, with a copy-heavy prompt whose drafts get accepted.
"""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.conftest import oracle_greedy
from tests.engine_checks import assert_pool_empty

MAX_TOKENS = 32
QUOTE = "The committee approved the budget for the new library, which will open in the spring of next year."
PROMPTS = [
    # Copy-heavy: the answer repeats the quoted sentence, so prompt lookup finds it.
    f"Repeat the sentence exactly.\nSentence: {QUOTE}\nRepeated: {QUOTE}\nSentence: {QUOTE}\nRepeated:",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Q: What is 12 times 7?\nA:",
]
SPEC = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4)
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def make_engine(num_blocks: int = 200, max_batched: int = 64, spec: SpeculativeConfig | None = SPEC) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=ModelConfig(dtype="float32"),  # token for token: bf16 is this CPU's default
            cache=CacheConfig(block_size=16, num_blocks=num_blocks),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=max_batched, max_model_len=512),
            speculative=spec,
        )
    )


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return make_engine()


@pytest.fixture(scope="module")
def expected(hf_oracle, engine) -> list[list[int]]:
    return [oracle_greedy(hf_oracle, engine.render(p), MAX_TOKENS) for p in PROMPTS]


def test_batched_greedy_with_speculation_equals_transformers(engine, expected):
    stats = engine.scheduler.spec_decoding_stats
    before = stats.num_accepted_tokens
    # max_num_batched_tokens=64 cuts the copy prompt into prefill chunks, which take no drafts.
    outputs = engine.generate(PROMPTS, GREEDY)
    assert [o.output_token_ids for o in outputs] == expected
    assert stats.num_accepted_tokens - before >= MAX_TOKENS // 4, "the copy-heavy prompt should accept drafts"
    assert_pool_empty(engine)


def test_a_prefix_cache_hit_with_speculation_keeps_the_output(engine, expected):
    engine.generate(PROMPTS[0], GREEDY)
    again = engine.generate(PROMPTS[0], GREEDY)[0]
    assert again.num_cached_tokens >= 16
    assert again.output_token_ids == expected[0]
    assert_pool_empty(engine)


def test_preemption_with_speculation_recomputes_correctly(expected):
    # 11 usable blocks of 16 tokens cannot hold the four requests' prompts, drafts and outputs at once.
    engine = make_engine(num_blocks=12, max_batched=256)
    preempted: list[str] = []
    original = engine.scheduler._preempt_request

    def spy(request, timestamp):
        preempted.append(request.request_id)
        original(request, timestamp)
        assert request.spec_token_ids == []  # drafts are dropped with the KV (vLLM: _preempt_request)

    engine.scheduler._preempt_request = spy
    outputs = engine.generate(PROMPTS * 2, GREEDY)
    assert preempted, "the pool was meant to be too small to run everything at once"
    assert [o.output_token_ids for o in outputs] == expected * 2
    assert engine.scheduler.spec_decoding_stats.num_accepted_tokens > 0
    assert_pool_empty(engine)
