"""Admission and shutdown: a bounded queue answers 503 instead of hanging; shutting down lets
in-flight requests finish within a timeout, aborts the rest, and leaves the KV pool free.

Each test starts its own server over the engine tests/test_server.py shares.
"""
from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.async_engine import AsyncLLM, EngineOverloadedError, EngineShutdownError, RequestAbortedError
from engine.sampling_params import SamplingParams
from tests.test_server import LONG, NUM_BLOCKS, RunningServer, shared_engine, wait_until

# What the openai client raises when the server closes a stream's connection mid-body.
CUT_OFF_ERRORS = (httpx2.TransportError, openai.APIError)


@pytest.fixture
def engine():
    engine = shared_engine()
    yield engine
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.kv_cache_manager.get_num_free_blocks() == NUM_BLOCKS - 1


def long_stream(client: openai.OpenAI, model: str, prompt: str):
    """A streaming request that will not finish while the test runs; its first chunk has arrived."""
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=LONG, temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    return stream, chunks


def test_requests_beyond_max_queue_get_503_not_a_hang(engine):
    server = RunningServer(engine, max_queue=2).start()
    try:
        client = server.client(timeout=60)
        model = server.app.state.serving.served_model_name
        first, _ = long_stream(client, model, "Tell me a story.")
        second, _ = long_stream(client, model, "Tell me a joke.")
        with pytest.raises(openai.InternalServerError) as raised:
            client.completions.create(model=model, prompt="One more?", max_tokens=4)
        assert raised.value.status_code == 503
        assert "at capacity (2 requests in flight)" in raised.value.message
        assert raised.value.body["type"] == "ServiceUnavailableError"
        first.close()
        second.close()
        server.assert_idle_and_pool_free()
        # Capacity is back once the streams are gone.
        assert client.completions.create(model=model, prompt="One more?", max_tokens=2).choices[0].finish_reason
    finally:
        server.stop()


def test_shutdown_finishes_short_requests_and_aborts_long_ones(engine):
    server = RunningServer(engine, shutdown_timeout=3.0).start()
    client = server.client(timeout=60)
    model = server.app.state.serving.served_model_name
    _, long_chunks = long_stream(client, model, "Tell me a story.")
    short = client.completions.create(
        model=model, prompt="Hello", max_tokens=2, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    short_chunks = iter(short)
    next(short_chunks)  # one token in: one step from done

    server.server.should_exit = True
    rest = list(short_chunks)
    assert rest[-1].usage.completion_tokens == 2
    assert any(choice.finish_reason == "length" for chunk in rest for choice in chunk.choices)

    def refuses_connections() -> bool:
        try:
            client.models.list()
        except openai.APIConnectionError:
            return True
        return False

    wait_until(refuses_connections, what="the server to stop accepting connections")
    finish_reasons = []
    with pytest.raises(CUT_OFF_ERRORS):  # the graceful timeout ends: the connection is closed mid-stream
        for chunk in long_chunks:
            finish_reasons += [choice.finish_reason for choice in chunk.choices if choice.finish_reason]
    assert finish_reasons == []

    server.thread.join(120)
    assert not server.thread.is_alive()
    assert not server.async_llm.is_running
    assert server.async_llm.num_in_flight == 0


def test_async_llm_shutdown_aborts_what_does_not_finish_in_time(engine):
    prompt_ids = engine.render("Tell me a story.")

    async def scenario() -> None:
        async_llm = AsyncLLM(engine, max_queue=1)
        async_llm.start()
        stream = await async_llm.add_request("long", prompt_ids, SamplingParams(temperature=0, max_tokens=LONG, ignore_eos=True))
        first = await anext(stream)
        assert first.new_token_ids
        with pytest.raises(EngineOverloadedError):
            await async_llm.add_request("over", prompt_ids, SamplingParams(max_tokens=2))
        shutdown = asyncio.create_task(async_llm.shutdown(timeout=0.5))
        await asyncio.sleep(0)  # shutdown has begun: admission is closed
        with pytest.raises(EngineShutdownError):
            await async_llm.add_request("late", prompt_ids, SamplingParams(max_tokens=2))
        with pytest.raises(RequestAbortedError):
            async for _ in stream:
                pass
        await shutdown
        assert not async_llm.is_running

    asyncio.run(scenario())


def test_async_llm_shutdown_waits_for_requests_that_finish_in_time(engine):
    prompt_ids = engine.render("Hello")

    async def scenario() -> list[int]:
        async_llm = AsyncLLM(engine)
        async_llm.start()
        stream = await async_llm.add_request("short", prompt_ids, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
        shutdown = asyncio.create_task(async_llm.shutdown(timeout=120))
        tokens = [token for out in [out async for out in stream] for token in out.new_token_ids]
        await shutdown
        return tokens

    assert len(asyncio.run(scenario())) == 3


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plans=st.lists(
        st.tuples(st.integers(1, 5), st.one_of(st.none(), st.integers(0, 4)), st.sampled_from(["close", "drop"])),
        min_size=1,
        max_size=6,
    )
)
def test_any_mix_of_finished_and_abandoned_requests_leaves_the_pool_free(engine, plans):
    """Consumers that read to the end get every token; ones that stop early (closing or just
    dropping their stream) abort their request; either way every KV block comes back."""
    prompt_ids = engine.render("Tell me a story.")

    async def consume(async_llm: AsyncLLM, index: int, max_tokens: int, abandon_after: int | None, how: str) -> list[int] | None:
        stream = await async_llm.add_request(f"r{index}", prompt_ids, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        tokens: list[int] = []
        while True:
            if abandon_after is not None and len(tokens) >= abandon_after and not stream.finished:
                if how == "close":
                    stream.close()
                del stream  # "drop": the stream's finalizer aborts the request
                return None
            try:
                out = await anext(stream)
            except StopAsyncIteration:
                return tokens
            tokens += out.new_token_ids

    async def scenario() -> list[list[int] | None]:
        async_llm = AsyncLLM(engine)
        async_llm.start()
        results = await asyncio.gather(*(consume(async_llm, i, *plan) for i, plan in enumerate(plans)))
        await async_llm.shutdown(timeout=120)
        return results

    results = asyncio.run(scenario())
    for (max_tokens, _, _), tokens in zip(plans, results):
        if tokens is not None:
            assert len(tokens) == max_tokens
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.kv_cache_manager.get_num_free_blocks() == NUM_BLOCKS - 1
