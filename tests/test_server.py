"""The OpenAI-compatible server, spoken to over real HTTP by the official `openai` client.

One server (uvicorn in a background thread, on a free 127.0.0.1 port) serves the whole module;
the engine behind it is shared with tests/test_server_lifecycle.py, which starts servers of its
own once this module's server is gone.
"""
from __future__ import annotations

import asyncio
import functools
import http.client
import json
import socket
import threading
import time
from collections import Counter

import openai
import pytest
import uvicorn

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.request import Request, RequestStatus
from engine.server import build_app, default_served_model_name

MAX_MODEL_LEN = 512
NUM_BLOCKS = 192
LONG = 480  # output tokens no CPU produces before a test is done with the request


@functools.lru_cache(maxsize=1)
def shared_engine() -> LLMEngine:
    """One engine for every server in the test session (servers over it never run at the same time)."""
    return LLMEngine(
        EngineConfig(
            # float32 whatever this CPU's default: the load test asserts greedy text does not depend on
            # the batch, which bfloat16 does not promise (its rounding changes with the batch's shape).
            model=ModelConfig(dtype="float32"),
            cache=CacheConfig(block_size=16, num_blocks=NUM_BLOCKS),
            scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512, max_model_len=MAX_MODEL_LEN),
        )
    )


class RunningServer:
    """build_app + uvicorn on a free port in a background thread, as `servetrace serve` runs it."""

    def __init__(self, engine: LLMEngine, **app_options) -> None:
        self.engine = engine
        self.app = build_app(engine, **app_options)
        self.async_llm = self.app.state.async_llm
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        graceful = app_options.get("shutdown_timeout", 30.0)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=graceful))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "RunningServer":
        self.thread.start()
        wait_until(lambda: self.server.started, what="the server to start")
        return self

    def stop(self, timeout: float = 120.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not shut down"

    def client(self, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **options)

    def async_client(self, **options) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **options)

    def engine_requests(self) -> list[Request]:
        with self.async_llm.engine_lock:
            return list(self.engine.scheduler.requests.values())

    def num_free_blocks(self) -> int:
        with self.async_llm.engine_lock:
            return self.engine.scheduler.kv_cache_manager.get_num_free_blocks()

    def assert_idle_and_pool_free(self) -> None:
        """Every request has left the engine and every KV block (but the null block) is free again."""
        wait_until(lambda: self.async_llm.num_in_flight == 0 and not self.engine_requests(), what="requests to drain")
        assert self.num_free_blocks() == NUM_BLOCKS - 1


def wait_until(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def post_raw(port: int, path: str, body: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server():
    running = RunningServer(shared_engine()).start()
    yield running
    running.stop()
    assert running.num_free_blocks() == NUM_BLOCKS - 1


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="module")
def model(server) -> str:
    return server.app.state.serving.served_model_name


def streamed_completion(client, model: str, **kwargs) -> tuple[str, str | None, openai.types.CompletionUsage | None]:
    text, finish_reason, usage = "", None, None
    for chunk in client.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.text
            finish_reason = choice.finish_reason or finish_reason
    return text, finish_reason, usage


def streamed_chat(client, model: str, **kwargs) -> tuple[str, str | None, openai.types.CompletionUsage | None]:
    text, finish_reason, usage = "", None, None
    for chunk in client.chat.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish_reason = choice.finish_reason or finish_reason
    return text, finish_reason, usage


# -- the routes --------------------------------------------------------------------------


def test_models_lists_the_model_file_stem(client, server):
    (card,) = client.models.list().data
    assert card.id == default_served_model_name(server.engine.model_path)
    assert server.engine.model_path.endswith(card.id + ".gguf")


def test_health(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200


def test_completion_reports_text_usage_and_length_finish(client, model, server):
    prompt = "The capital of France is"
    response = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    (choice,) = response.choices
    assert choice.text and choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(server.engine.render(prompt))
    assert response.usage.completion_tokens == 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + 5


def test_completion_max_tokens_defaults_to_16_as_openai(client, model):
    response = client.completions.create(model=model, prompt="Count: one, two,", temperature=0, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 16


@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):\n   "])
def test_streamed_completion_equals_non_streamed_under_greedy(client, model, prompt):
    full = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    text, finish_reason, usage = streamed_completion(client, model, prompt=prompt, max_tokens=12, temperature=0)
    assert text == full.choices[0].text
    assert finish_reason == full.choices[0].finish_reason
    assert usage == full.usage


def test_streamed_chat_equals_non_streamed_under_greedy(client, model):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    (choice,) = full.choices
    assert choice.message.role == "assistant" and choice.message.content
    text, finish_reason, usage = streamed_chat(client, model, messages=messages, max_tokens=12, temperature=0)
    assert text == choice.message.content
    assert finish_reason == choice.finish_reason in ("stop", "length")
    assert usage == full.usage


def test_chat_uses_the_chat_template(client, model, server):
    messages = [{"role": "user", "content": "Hi"}]
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0)
    assert response.usage.prompt_tokens == len(server.engine.render(messages=messages))
    assert response.usage.prompt_tokens > len(server.engine.render("Hi"))


def test_stream_without_include_usage_sends_no_usage(client, model):
    chunks = list(client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def capital_of_france(client, model) -> str:
    """The greedy continuation of a prompt, unstopped."""
    response = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    return response.choices[0].text


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_string_ends_the_text_before_it(client, model, capital_of_france, as_list):
    stop = capital_of_france.strip().split()[1]  # a word from the middle of the greedy answer
    response = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=12, temperature=0, stop=[stop] if as_list else stop
    )
    (choice,) = response.choices
    assert choice.text == capital_of_france[: capital_of_france.index(stop)]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == stop


def test_seed_makes_sampling_reproducible(client, model):
    def sample(seed: int) -> str:
        return client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=seed).choices[0].text

    assert sample(1234) == sample(1234)


def test_tiny_top_p_keeps_only_the_most_likely_token(client, model, capital_of_france):
    nucleus = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=12, temperature=1.0, top_p=1e-6, seed=7, extra_body={"ignore_eos": True}
    )
    assert nucleus.choices[0].text == capital_of_france


# -- errors: OpenAI's shape, the right status ----------------------------------------------


def assert_openai_error(status: int, body: dict, expected_status: int, *message_parts: str) -> None:
    assert status == expected_status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == expected_status
    for part in message_parts:
        assert part in error["message"], error["message"]


@pytest.mark.parametrize(
    ("path", "body", "message_parts"),
    [
        ("/v1/completions", b'{"prompt": "Hi", ', ["not valid JSON"]),
        ("/v1/completions", b"[1, 2]", ["invalid request"]),
        ("/v1/completions", b'{"max_tokens": 4}', ["prompt", "Field required"]),
        ("/v1/completions", b'{"prompt": 5}', ["prompt"]),
        ("/v1/completions", b'{"prompt": "Hi", "max_tokens": "many"}', ["max_tokens"]),
        ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 0}', ["max_tokens must be at least 1"]),
        ("/v1/completions", b'{"prompt": "Hi", "max_tokens": -3}', ["max_tokens must be at least 1"]),
        ("/v1/completions", b'{"prompt": "Hi", "n": 2}', ["n=1"]),
        ("/v1/completions", b'{"prompt": "Hi", "temperature": -1}', ["temperature"]),
        ("/v1/completions", b'{"prompt": "", "max_tokens": 4}', ["empty"]),
        ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 600}', ["512"]),
        ("/v1/chat/completions", b'{"model": null}', ["messages", "Field required"]),
        ("/v1/chat/completions", b'{"messages": []}', ["messages"]),
        ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "Hi"}]}', ["role"]),
    ],
)
def test_bad_requests_get_400_in_openai_shape(server, path, body, message_parts):
    status, response = post_raw(server.port, path, body)
    assert_openai_error(status, response, 400, *message_parts)
    assert response["error"]["type"] == "BadRequestError"


def test_prompt_longer_than_the_context_is_400(server):
    status, body = post_raw(server.port, "/v1/completions", json.dumps({"prompt": "word " * 700, "max_tokens": 4}).encode())
    assert_openai_error(status, body, 400, "context is 512 tokens")


def test_unknown_model_is_404(server):
    status, body = post_raw(server.port, "/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}).encode())
    assert_openai_error(status, body, 404, "gpt-4", "does not exist")
    assert body["error"]["param"] == "model"


def test_openai_client_raises_typed_errors_with_the_message(client, model):
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        client.completions.create(model=model, prompt="Hi", max_tokens=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])


# -- disconnects, and many clients at once ---------------------------------------------------


def the_only_request(server: RunningServer) -> Request:
    wait_until(lambda: len(server.engine_requests()) == 1, what="the request to reach the engine")
    (request,) = server.engine_requests()
    return request


def test_client_disconnecting_mid_stream_aborts_and_frees_its_blocks(server, client, model):
    stream = client.completions.create(model=model, prompt="Tell me a story.", max_tokens=LONG, temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks), next(chunks)
    request = the_only_request(server)
    assert server.num_free_blocks() < NUM_BLOCKS - 1  # it holds KV blocks while it runs
    stream.close()
    server.assert_idle_and_pool_free()
    assert request.status == RequestStatus.FINISHED_ABORTED
    assert request.num_output_tokens < LONG


def test_client_giving_up_on_a_non_streamed_request_aborts_it(server, model):
    impatient = server.client(timeout=4.0)
    errors: list[Exception] = []

    def call() -> None:
        try:
            impatient.completions.create(model=model, prompt="Tell me a story.", max_tokens=LONG, temperature=0, extra_body={"ignore_eos": True})
        except openai.APITimeoutError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    request = the_only_request(server)
    caller.join(60)
    assert len(errors) == 1, "the client should have timed out"
    server.assert_idle_and_pool_free()
    assert request.status == RequestStatus.FINISHED_ABORTED
    assert request.num_output_tokens < LONG


LOAD_PROMPTS = ["Hello", "The capital of France is", "1, 2, 3,", "Paris is", "Water boils at", "Dogs are", "Once upon a time", "def add(a, b):"]


def test_64_concurrent_streaming_clients_256_requests(server, client, model):
    """Every request is answered completely, outputs never cross between requests, the pool ends free."""
    results: list[tuple[str, str, str | None, int]] = []
    reference: dict[str, str] = {}

    async def reference_answer(async_client: openai.AsyncOpenAI, prompt: str) -> None:
        response = await async_client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
        reference[prompt] = response.choices[0].text

    async def one_client(async_client: openai.AsyncOpenAI, todo: asyncio.Queue) -> None:
        while not todo.empty():
            prompt = todo.get_nowait()
            text, finish_reason, completion_tokens = "", None, None
            stream = await async_client.completions.create(
                model=model, prompt=prompt, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.text
                    finish_reason = choice.finish_reason or finish_reason
                if chunk.usage is not None:
                    completion_tokens = chunk.usage.completion_tokens
            results.append((prompt, text, finish_reason, completion_tokens))

    async def load() -> None:
        todo: asyncio.Queue = asyncio.Queue()
        for i in range(256):
            todo.put_nowait(LOAD_PROMPTS[i % len(LOAD_PROMPTS)])
        async with server.async_client(timeout=300) as async_client:
            await asyncio.gather(*(reference_answer(async_client, prompt) for prompt in LOAD_PROMPTS))
            await asyncio.gather(*(one_client(async_client, todo) for _ in range(64)))

    asyncio.run(load())
    assert len(results) == 256
    assert Counter(prompt for prompt, *_ in results) == Counter(LOAD_PROMPTS[i % len(LOAD_PROMPTS)] for i in range(256))
    for prompt, text, finish_reason, completion_tokens in results:
        assert finish_reason in ("stop", "length")
        assert 1 <= completion_tokens <= 8
        assert finish_reason == "stop" or completion_tokens == 8
        assert text == reference[prompt], f"the output for {prompt!r} differs between two batches"
    server.assert_idle_and_pool_free()
