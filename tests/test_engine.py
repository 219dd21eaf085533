"""The whole engine (scheduler + block manager + model runner) against transformers' greedy output.

Whatever the batching does (all requests at once, one at a time, chunked prefill, prefix-cache
hits, preemption and recomputation under a tiny KV pool), greedy output must be token for token
what transformers generates for each prompt alone.
"""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.conftest import oracle_greedy
from tests.engine_checks import assert_pool_empty, preemptions

MAX_TOKENS = 24
SYSTEM = "A careful cook answers questions about cooking, briefly and precisely, with one fact per answer.\n"
PROMPTS = [
    "Hi",
    "The capital of France is",
    SYSTEM + "Question: How long should I boil an egg?\nAnswer:",
    SYSTEM + "Question: What is the best oil for frying?\nAnswer:",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who " * 3,
    "Q: What is 12 times 7?\nA:",
    "List three colours of the rainbow and explain why the sky is blue in one sentence.",
]


def make_engine(
    num_blocks: int = 200, prefix_caching: bool = True, max_batched: int = 64, max_seqs: int = 8, cache_mode: str = "vllm"
) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            # float32 whatever this CPU's default: the oracle is transformers in float32, token for token.
            model=ModelConfig(dtype="float32"),
            cache=CacheConfig(block_size=16, num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
            scheduler=SchedulerConfig(
                max_num_seqs=max_seqs, max_num_batched_tokens=max_batched, max_model_len=512, cache_mode=cache_mode
            ),
        )
    )


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return make_engine()


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[list[int]]:
    return [engine.render(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def expected(hf_oracle, prompt_ids) -> list[list[int]]:
    return [oracle_greedy(hf_oracle, ids, MAX_TOKENS) for ids in prompt_ids]


GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def test_batched_greedy_equals_transformers(engine, prompt_ids, expected):
    # max_num_batched_tokens=64 forces the long prompt through several prefill chunks.
    outputs = engine.generate(PROMPTS, GREEDY)
    assert [o.output_token_ids for o in outputs] == expected
    assert_pool_empty(engine)


def test_one_at_a_time_greedy_equals_transformers(engine, expected):
    for prompt, want in zip(PROMPTS, expected):
        assert engine.generate(prompt, GREEDY)[0].output_token_ids == want
    assert_pool_empty(engine)


def test_prefix_cache_hits_do_not_change_output(engine, expected):
    engine.generate(PROMPTS[2], GREEDY)  # warms the shared system prompt
    out = engine.generate(PROMPTS[3], GREEDY)[0]
    assert out.num_cached_tokens >= 16
    assert out.output_token_ids == expected[3]


def test_prefix_caching_off_greedy_equals_transformers(expected):
    engine = make_engine(prefix_caching=False)
    outputs = engine.generate(PROMPTS, GREEDY)
    assert [o.output_token_ids for o in outputs] == expected
    assert all(o.num_cached_tokens == 0 for o in outputs)
    assert_pool_empty(engine)


@pytest.mark.parametrize("cache_mode", ["vllm", "sglang"])
def test_preemption_under_a_small_pool_recomputes_correctly(expected, cache_mode):
    # 9 usable blocks of 16 tokens cannot hold all eight requests' prompts and outputs at once.
    engine = make_engine(num_blocks=10, max_batched=256, cache_mode=cache_mode)
    with preemptions(engine) as preempted:
        outputs = engine.generate(PROMPTS, GREEDY)
    if cache_mode == "vllm":
        assert preempted, "the pool was meant to be too small to run everything at once"
    # SGLang's admission reserves 0.7 (new_token_ratio) of each running request's remaining max_tokens,
    # so on this pool it queues instead of over-admitting, at every size that leaves room for the
    # 24 outputs (smaller pools clip max_tokens, Scheduler.init_req_max_new_tokens). Its retraction is
    # checked against SGLang's own scheduler in tests/test_conformance_sglang_scheduler.py.
    assert [o.output_token_ids for o in outputs] == expected
    assert_pool_empty(engine)


def test_text_and_finish_reason(engine):
    out = engine.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=5))[0]
    assert out.finish_reason == "length" and len(out.output_token_ids) == 5
    assert out.text == engine.tokenizer.decode(out.output_token_ids)


def test_stop_string_ends_the_request_and_is_not_returned(engine):
    free = engine.scheduler.kv_cache_manager.get_num_free_blocks()
    full = engine.generate("Count: 1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12))[0].text
    assert " 6" in full, full
    out = engine.generate("Count: 1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop=[" 6"]))[0]
    assert out.finish_reason == "stop" and out.stop_reason == " 6"
    assert out.text == full[: full.index(" 6")]
    assert engine.scheduler.kv_cache_manager.get_num_free_blocks() == free


def test_seeded_sampling_is_reproducible_in_any_batch(engine):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12)
    alone = engine.generate("Tell me a story", params)[0].output_token_ids
    batched = engine.generate(["Tell me a story", "Another prompt", "And another"], [params, GREEDY, GREEDY])
    assert batched[0].output_token_ids == alone


def test_abort_frees_blocks(engine):
    engine.add_request("to-abort", engine.render("A long story about dragons"), SamplingParams(max_tokens=50))
    engine.step()
    engine.step()
    assert engine.scheduler.kv_cache_manager.get_num_free_blocks() < engine.config.cache.num_blocks - 1
    engine.abort_request("to-abort")
    assert_pool_empty(engine)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": []}, "empty"),
        ({"messages": []}, "non-empty"),
        ({"messages": [{"role": "user"}]}, "'content'"),
        ({"prompt": [10**9]}, "vocabulary"),
    ],
)
def test_bad_prompts_get_clear_errors(engine, kwargs, message):
    from engine.tokenizer import PromptError

    with pytest.raises(PromptError, match=message):
        engine.render(**kwargs)


def test_max_tokens_beyond_the_context_is_rejected(engine):
    from engine.tokenizer import PromptError

    with pytest.raises(PromptError, match="maximum context length is 512"):
        engine.add_request(None, engine.render("Hello"), SamplingParams(max_tokens=600))
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        SamplingParams(max_tokens=0)


def test_a_request_larger_than_the_kv_pool_is_rejected_not_left_waiting():
    from engine.tokenizer import PromptError

    small = make_engine(num_blocks=4)  # 3 usable blocks: 48 tokens
    with pytest.raises(PromptError, match="KV cache holds at most 48"):
        small.add_request(None, small.render("Hello there"), SamplingParams(max_tokens=60))
    assert not small.has_unfinished_requests()


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLMEngine(EngineConfig(model=__import__("engine.config").config.ModelConfig(model=str(tmp_path / "nope.gguf"))))


def test_corrupt_gguf_is_a_clear_error(tmp_path, bundled_gguf):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(open(bundled_gguf, "rb").read(4096))
    from engine.config import ModelConfig

    with pytest.raises(ValueError, match="broken.gguf"):
        LLMEngine(EngineConfig(model=ModelConfig(model=str(bad))))
