"""OpenAI-compatible HTTP server for our engine: the http.request hop.

Mirrors: vllm.entrypoints.launchers.app:build_app, vllm.entrypoints.openai.completion.api_router, vllm.entrypoints.openai.chat_completion.api_router (vllm 0.33.0)
The app with the completion and chat routes, and OpenAIServingCompletion and OpenAIServingChat
folded into one OpenAIServing class.

Hooking: FastAPI captures route functions when they are registered, so the routes here
look up `app.state.serving.create_completion` / `create_chat_completion` at request time.
Wrapping those methods on the OpenAIServing class wraps every request. Each takes the parsed
body and the raw starlette Request (for headers such as traceparent) and returns either a
response model (not streaming) or an async generator of SSE lines (streaming): the stream
has ended when that generator is exhausted or closed.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncGenerator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.async_engine import (
    AsyncLLM,
    EngineDeadError,
    EngineOverloadedError,
    EngineShutdownError,
    RequestAbortedError,
    RequestStream,
)
from engine.http_utils import ApiKeyMiddleware, SSEResponse, cancel_on_disconnect, validation_message
from engine.llm_engine import LLMEngine, RequestOutput
from engine.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    OpenAIError,
    SamplingRequest,
    UsageInfo,
)
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputError, validate_structured_outputs
from engine.tokenizer import PromptError

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"


def default_served_model_name(model_path: str) -> str:
    """A GGUF file is served under its stem (SmolLM2-135M-Instruct.Q4_1), a directory under its name."""
    path = Path(model_path)
    return path.stem if path.is_file() else path.name


class OpenAIServing:
    """The two generation endpoints; the tracer wraps create_completion and create_chat_completion."""

    def __init__(self, async_llm: AsyncLLM, served_model_name: str) -> None:
        self.async_llm = async_llm
        self.engine = async_llm.engine
        self.served_model_name = served_model_name

    async def create_completion(
        self, request: CompletionRequest, raw_request: Request | None = None
    ) -> CompletionResponse | AsyncGenerator[str, None]:
        # Mirrors: vllm.entrypoints.openai.completion.serving:OpenAIServingCompletion.create_completion (vllm 0.33.0)
        self._check_request(request)
        for name in ("echo", "suffix"):
            if getattr(request, name):
                raise OpenAIError(400, f"'{name}' is not supported", param=name)
        if request.logprobs is not None:
            raise OpenAIError(400, "'logprobs' is not supported", param="logprobs")
        if request.best_of not in (None, 1):
            raise OpenAIError(400, "only best_of=1 is supported", param="best_of")
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise OpenAIError(400, f"one prompt per request is supported, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        prompt_ids = await self._render(prompt=prompt)
        params = self._sampling_params(request, request.max_tokens, len(prompt_ids))
        request_id = f"cmpl-{uuid.uuid4().hex}"
        stream = await self._add_request(request_id, prompt_ids, params, request.priority)
        created = int(time.time())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._completion_stream(request_id, created, stream, len(prompt_ids), include_usage)
        final = await self._collect(stream)
        return CompletionResponse(
            id=request_id,
            created=created,
            model=self.served_model_name,
            choices=[CompletionChoice(text=final.text, finish_reason=final.finish_reason, stop_reason=final.stop_reason)],
            usage=_usage(len(prompt_ids), final),
        )

    async def create_chat_completion(
        self, request: ChatCompletionRequest, raw_request: Request | None = None
    ) -> ChatCompletionResponse | AsyncGenerator[str, None]:
        # Mirrors: vllm.entrypoints.openai.chat_completion.serving:OpenAIServingChat.create_chat_completion (vllm 0.33.0)
        self._check_request(request)
        if request.logprobs:
            raise OpenAIError(400, "'logprobs' is not supported", param="logprobs")
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        prompt_ids = await self._render(messages=messages)
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        params = self._sampling_params(request, max_tokens, len(prompt_ids))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        stream = await self._add_request(request_id, prompt_ids, params, request.priority)
        created = int(time.time())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._chat_stream(request_id, created, stream, len(prompt_ids), include_usage)
        final = await self._collect(stream)
        return ChatCompletionResponse(
            id=request_id,
            created=created,
            model=self.served_model_name,
            choices=[
                ChatCompletionChoice(
                    message=ChatCompletionMessage(content=final.text),
                    finish_reason=final.finish_reason,
                    stop_reason=final.stop_reason,
                )
            ],
            usage=_usage(len(prompt_ids), final),
        )

    def show_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.served_model_name, max_model_len=self.engine.max_model_len)])

    # -- steps shared by both endpoints -------------------------------------------------

    def _check_request(self, request: SamplingRequest) -> None:
        if request.model is not None and request.model != self.served_model_name:
            raise OpenAIError(404, f"The model `{request.model}` does not exist; this server serves `{self.served_model_name}`.", param="model")
        if request.n != 1:
            raise OpenAIError(400, f"only n=1 is supported, got n={request.n}", param="n")
        if request.stream_options is not None and not request.stream:
            raise OpenAIError(400, "stream_options is only allowed when stream is true", param="stream_options")

    async def _render(self, **prompt) -> list[int]:
        # A worker thread keeps tokenization off the event loop (vLLM tokenizes in a thread pool too).
        try:
            return await asyncio.to_thread(self.engine.render, **prompt)
        except PromptError as exc:
            raise OpenAIError(400, str(exc), param="messages" if "messages" in prompt else "prompt") from None

    def _sampling_params(self, request: SamplingRequest, max_tokens: int | None, num_prompt_tokens: int) -> SamplingParams:
        if max_tokens is None:
            # Like vLLM: whatever fits in the context after the prompt.
            max_tokens = self.async_llm.max_request_tokens - num_prompt_tokens
            if max_tokens < 1:
                raise OpenAIError(400, f"the prompt ({num_prompt_tokens} tokens) leaves no room for output "
                                  f"(at most {self.async_llm.max_request_tokens} tokens per request)", param="messages")
        elif max_tokens < 1:
            raise OpenAIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        structured_outputs = _structured_outputs(request)
        try:
            return SamplingParams(
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                top_k=0 if request.top_k in (None, -1) else request.top_k,
                seed=request.seed,
                max_tokens=max_tokens,
                stop=stop,
                ignore_eos=request.ignore_eos,
                structured_outputs=structured_outputs,
            )
        except ValueError as exc:
            param = next((name for name in ("temperature", "top_p", "top_k", "max_tokens") if name in str(exc)), None)
            raise OpenAIError(400, str(exc), param=param) from None

    async def _add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, priority: int) -> RequestStream:
        try:
            return await self.async_llm.add_request(request_id, prompt_ids, params, priority=priority)
        except PromptError as exc:
            raise OpenAIError(400, str(exc), param="max_tokens") from None
        except StructuredOutputError as exc:  # e.g. an engine whose loop serves no structured output (cache_mode sglang)
            raise OpenAIError(400, str(exc), param="structured_outputs") from None
        except (EngineOverloadedError, EngineShutdownError) as exc:
            raise OpenAIError(503, str(exc)) from None
        except EngineDeadError as exc:
            raise OpenAIError(500, str(exc)) from None

    async def _collect(self, stream: RequestStream) -> RequestOutput:
        final = None
        try:
            async for out in stream:
                final = out
        except RequestAbortedError as exc:
            raise OpenAIError(503, str(exc)) from None
        except EngineDeadError as exc:
            raise OpenAIError(500, str(exc)) from None
        finally:
            stream.close()  # a cancelled handler (client gone) aborts its request
        return final

    async def _completion_stream(
        self, request_id: str, created: int, stream: RequestStream, num_prompt_tokens: int, include_usage: bool
    ) -> AsyncGenerator[str, None]:
        def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
            body = CompletionResponse(id=request_id, created=created, model=self.served_model_name, choices=choices, usage=usage)
            return _sse(body.model_dump_json())

        final = None
        try:
            async for out in stream:
                final = out
                if out.delta_text or out.finished:
                    yield chunk([CompletionChoice(text=out.delta_text, finish_reason=out.finish_reason, stop_reason=out.stop_reason)])
            if include_usage:
                yield chunk([], _usage(num_prompt_tokens, final))
        except (RequestAbortedError, EngineDeadError) as exc:
            yield _sse_error(exc)
        finally:
            stream.close()
        yield SSE_DONE

    async def _chat_stream(
        self, request_id: str, created: int, stream: RequestStream, num_prompt_tokens: int, include_usage: bool
    ) -> AsyncGenerator[str, None]:
        def chunk(choices: list[ChatCompletionStreamChoice], usage: UsageInfo | None = None) -> str:
            body = ChatCompletionStreamResponse(id=request_id, created=created, model=self.served_model_name, choices=choices, usage=usage)
            return _sse(body.model_dump_json())

        final = None
        try:
            # OpenAI's first chunk carries the role and no text.
            yield chunk([ChatCompletionStreamChoice(delta=DeltaMessage(role="assistant", content=""))])
            async for out in stream:
                final = out
                if out.delta_text or out.finished:
                    delta = DeltaMessage(content=out.delta_text) if out.delta_text else DeltaMessage()
                    yield chunk([ChatCompletionStreamChoice(delta=delta, finish_reason=out.finish_reason, stop_reason=out.stop_reason)])
            if include_usage:
                yield chunk([], _usage(num_prompt_tokens, final))
        except (RequestAbortedError, EngineDeadError) as exc:
            yield _sse_error(exc)
        finally:
            stream.close()
        yield SSE_DONE


def _structured_outputs(request: SamplingRequest):
    """The request's constraint, validated here so bad input is a 400 before anything is queued
    (vLLM validates in its InputProcessor, in the API server, the same way)."""
    param = "response_format" if request.response_format is not None and request.response_format.type != "text" else "structured_outputs"
    try:
        structured_outputs = request.extract_structured_outputs()
        if structured_outputs is not None:
            validate_structured_outputs(structured_outputs)
    except StructuredOutputError as exc:
        raise OpenAIError(400, str(exc), param=param) from None
    return structured_outputs


def _usage(num_prompt_tokens: int, final: RequestOutput) -> UsageInfo:
    completion_tokens = len(final.output_token_ids)
    return UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens, total_tokens=num_prompt_tokens + completion_tokens)


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


def _sse_error(exc: Exception) -> str:
    status = 503 if isinstance(exc, RequestAbortedError) else 500
    return _sse(OpenAIError(status, str(exc)).to_response().model_dump_json())


def _to_response(result) -> Response:
    if hasattr(result, "__aiter__"):
        return SSEResponse(result)
    return JSONResponse(result.model_dump())


def _error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.to_response().model_dump(), status_code=error.status_code)


router = APIRouter()


@router.post("/v1/completions")
async def completions(request: CompletionRequest, raw_request: Request) -> Response:
    async def handle() -> Response:
        return _to_response(await raw_request.app.state.serving.create_completion(request, raw_request))

    return await cancel_on_disconnect(raw_request, handle())


@router.post("/v1/chat/completions")
async def chat_completions(request: ChatCompletionRequest, raw_request: Request) -> Response:
    async def handle() -> Response:
        return _to_response(await raw_request.app.state.serving.create_chat_completion(request, raw_request))

    return await cancel_on_disconnect(raw_request, handle())


@router.get("/v1/models")
async def models(raw_request: Request) -> Response:
    return JSONResponse(raw_request.app.state.serving.show_models().model_dump())


@router.get("/health")
async def health(raw_request: Request) -> Response:
    async_llm: AsyncLLM = raw_request.app.state.async_llm
    if not async_llm.is_running:
        return _error_response(OpenAIError(503, "the engine loop is not running"))
    return JSONResponse({"status": "ok", "in_flight": async_llm.num_in_flight})


def build_app(
    engine: LLMEngine,
    served_model_name: str | None = None,
    max_queue: int = 256,
    shutdown_timeout: float = 30.0,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI app; its lifespan starts the engine busy loop and shuts it down gracefully.
    With api_key, /v1 routes answer 401 without `Authorization: Bearer <api_key>`."""
    async_llm = AsyncLLM(engine, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_llm.start()
        try:
            yield
        finally:
            await async_llm.shutdown(shutdown_timeout)

    app = FastAPI(title="servetrace", lifespan=lifespan)
    app.state.async_llm = async_llm
    app.state.serving = OpenAIServing(async_llm, served_model_name or default_served_model_name(engine.model_path))
    app.include_router(router)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI and vLLM answer 400 here, not FastAPI's 422.
        message, param = validation_message(exc)
        return _error_response(OpenAIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(OpenAIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error while serving a request")
        return _error_response(OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    return app
