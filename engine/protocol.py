"""OpenAI API bodies we accept and return (the subset we serve).

Mirrors: vllm.entrypoints.openai.completion.protocol, vllm.entrypoints.openai.chat_completion.protocol, vllm.entrypoints.generate.base.protocol:ResponseFormat, vllm.entrypoints.generate.base.protocol:JsonSchemaResponseFormat, vllm.entrypoints.serve.engine.protocol:ErrorResponse, vllm.entrypoints.serve.engine.protocol:UsageInfo, vllm.entrypoints.serve.engine.protocol:ModelCard (vllm 0.33.0)
Unknown fields are ignored, as OpenAI's SDK may send ones we do not use; fields
that would change the answer in a way we cannot honour are rejected by the server instead.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.structured_output.params import StructuredOutputError, StructuredOutputsParams


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- errors ------------------------------------------------------------------------------

ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


class OpenAIError(Exception):
    """An answer that is an error: raised anywhere in serving, rendered as OpenAI's error JSON."""

    def __init__(self, status_code: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param

    def to_response(self) -> ErrorResponse:
        error_type = ERROR_TYPES.get(self.status_code, "BadRequestError" if self.status_code < 500 else "InternalServerError")
        return ErrorResponse(error=ErrorInfo(message=self.message, type=error_type, param=self.param, code=self.status_code))


# -- requests ----------------------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class JsonSchemaResponseFormat(OpenAIBaseModel):
    name: str
    description: str | None = None
    # OpenAI's field is `schema`, which pydantic reserves (vLLM aliases it the same way).
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaResponseFormat | None = None


class SamplingRequest(OpenAIBaseModel):
    """Fields both routes share. Defaults are OpenAI's; top_k, ignore_eos and priority are vLLM extensions."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    priority: int = 0
    user: str | None = None
    # Structured output, in vLLM 0.33's fields: OpenAI's response_format, or vLLM's structured_outputs
    # {json, regex, choice, grammar, json_object} (both routes; the first overrides the second).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsParams | None = None

    def extract_structured_outputs(self) -> StructuredOutputsParams | None:
        # Mirrors: vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest.extract_structured_outputs (vllm 0.33.0)
        return structured_outputs_from_response_format(self.structured_outputs, self.response_format)


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False


# -- responses ---------------------------------------------------------------------------


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(OpenAIBaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM extension: the stop string or token that ended it


class CompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ChatCompletionMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(OpenAIBaseModel):
    index: int = 0
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(OpenAIBaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "servetrace"
    max_model_len: int


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def structured_outputs_from_response_format(
    structured_outputs: StructuredOutputsParams | None, response_format: ResponseFormat | None
) -> StructuredOutputsParams | None:
    """Mirrors: vllm.entrypoints.generate.base.protocol:structured_outputs_from_response_format (vllm 0.33.0)"""
    if response_format is None or response_format.type == "text":
        return structured_outputs
    if response_format.type == "json_object":
        overrides: dict[str, Any] = {"json_object": True}
    else:
        # vLLM rejects a json_schema type without its schema (ChatCompletionRequest.validate_response_format).
        if response_format.json_schema is None or response_format.json_schema.json_schema is None:
            raise StructuredOutputError("When response_format type is 'json_schema', the 'json_schema' field with its 'schema' must be provided")
        overrides = {"json": response_format.json_schema.json_schema}
    if structured_outputs is None:
        return StructuredOutputsParams(**overrides)
    # One constraint only: the response_format's replaces what structured_outputs had.
    base = {"json": None, "regex": None, "choice": None, "grammar": None, "json_object": None}
    return replace(structured_outputs, **{**base, **overrides})
