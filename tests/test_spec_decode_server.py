"""Speculation behind the HTTP server: a streamed and a plain completion of a copy-heavy prompt give
the same text, drafts are accepted, and the pool is free afterwards; with n-gram speculation on the
synchronous loop and with ngram_gpu under async scheduling (vLLM 0.33's default loop). The flags
that turn it on."""
from __future__ import annotations

import argparse
import json
import re

import pytest

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from tests.test_server import NUM_BLOCKS, RunningServer, post_raw
from tracer.commands._engine_options import add_engine_options, engine_config_from_args

QUOTE = "The committee approved the budget for the new library, which will open in the spring of next year."
PROMPT = f"Repeat the sentence exactly.\nSentence: {QUOTE}\nRepeated: {QUOTE}\nSentence: {QUOTE}\nRepeated:"


def speculating_server(method: str, async_scheduling: bool):
    engine = LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"),  # token for token: bf16 is this CPU's default
        cache=CacheConfig(block_size=16, num_blocks=NUM_BLOCKS),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=512, async_scheduling=async_scheduling),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4),
    ))
    server = RunningServer(engine).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spec_server():
    """n-gram speculation on the synchronous loop (one engine load for the tests that need it)."""
    yield from speculating_server("ngram", async_scheduling=False)


@pytest.fixture(scope="module")
def async_spec_server():
    """ngram_gpu with async scheduling: drafts proposed on the model thread, placeholders in the scheduler."""
    yield from speculating_server("ngram_gpu", async_scheduling=True)


def assert_streamed_equals_plain_and_drafts_accepted(server) -> None:
    client = server.client()
    model = client.models.list().data[0].id
    stats = server.engine.scheduler.spec_decoding_stats
    accepted_before = stats.num_accepted_tokens
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert streamed == plain.choices[0].text and plain.usage.completion_tokens == 24
    assert stats.num_accepted_tokens > accepted_before
    server.assert_idle_and_pool_free()


def test_streamed_and_plain_completions_agree_with_speculation(spec_server):
    assert_streamed_equals_plain_and_drafts_accepted(spec_server)


def test_streamed_and_plain_completions_agree_with_async_ngram_gpu_speculation(async_spec_server):
    """The copy-heavy prompt accepts drafts the model thread proposed; and a constrained request on this
    server is a 400 naming ngram_gpu (its drafts are never validated by a grammar), nothing queued."""
    assert async_spec_server.engine.batch_queue is not None  # the async loop, not the synchronous one
    assert_streamed_equals_plain_and_drafts_accepted(async_spec_server)
    body = {"model": async_spec_server.app.state.serving.served_model_name, "prompt": "Codes:", "max_tokens": 8,
            "structured_outputs": {"regex": "[0-9]{3}"}}
    status, error = post_raw(async_spec_server.port, "/v1/completions", json.dumps(body).encode())
    assert status == 400 and "ngram_gpu" in error["error"]["message"], error
    async_spec_server.assert_idle_and_pool_free()


def parse(*flags: str) -> EngineConfig:
    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    return engine_config_from_args(parser.parse_args(list(flags)))


def test_the_speculative_flags_build_vllms_config():
    assert parse().speculative is None
    spec = parse("--speculative-method", "ngram", "--num-speculative-tokens", "5", "--prompt-lookup-max", "3").speculative
    assert (spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max) == (5, 3, 3)
    with pytest.raises(ValueError, match="--num-speculative-tokens needs --speculative-method ngram"):
        parse("--num-speculative-tokens", "3")
    with pytest.raises(ValueError, match="prompt_lookup_min=4 must be <= prompt_lookup_max=2"):
        parse("--speculative-method", "ngram", "--prompt-lookup-min", "4", "--prompt-lookup-max", "2")


def test_ngram_speculation_refuses_async_scheduling_as_vllms_v1_runner_and_ngram_gpu_runs_with_it():
    from engine.config import check_speculative_config

    check_speculative_config(parse("--async-scheduling"))  # each alone is fine
    check_speculative_config(parse("--speculative-method", "ngram"))
    # vLLM's NgramGPUTypes are allowed with async scheduling (vllm/config/vllm.py:1655-1658 VllmConfig.__post_init__).
    config = parse("--async-scheduling", "--speculative-method", "ngram_gpu")
    check_speculative_config(config)
    assert config.speculative.use_ngram_gpu() and config.speculative.prompt_lookup_min == 5
    with pytest.raises(ValueError, match="async scheduling is not supported with ngram-based speculative decoding"):
        check_speculative_config(parse("--async-scheduling", "--speculative-method", "ngram"))
    with pytest.raises(ValueError, match="async scheduling is not supported"):
        LLMEngine(parse("--async-scheduling", "--speculative-method", "ngram"))  # before the model loads


def test_a_constrained_request_on_a_speculating_server_is_served(spec_server):
    """Speculation with structured output (once a 400): drafts are verified under the grammar's
    1 + k rows, so the text matches the regex, streamed and not."""
    client = spec_server.client()
    model = client.models.list().data[0].id
    stats = spec_server.engine.scheduler.spec_decoding_stats
    accepted_before = stats.num_accepted_tokens
    body = {"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2,4}( [0-9]{3}-[a-z]{2,4}){0,3}"}}
    prompt = "Codes: 123-abc 123-abc 123-abc 123-abc 123-"
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0, extra_body=body)
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True, extra_body=body)
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert re.fullmatch(body["structured_outputs"]["regex"], plain.choices[0].text), plain.choices[0].text
    assert streamed == plain.choices[0].text
    assert stats.num_accepted_tokens > accepted_before
    spec_server.assert_idle_and_pool_free()
