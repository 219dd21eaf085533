"""The chat traffic `servetrace demo --engine vllm|sglang` sends to a live server, with the official
openai client: a streamed chat (the answer printed as it arrives), a plain one, and two chats that
share a long system prompt, so the second finds the first's KV blocks in the prefix cache.

The shared system prompt is long enough to fill a whole vLLM CPU block (128 tokens: vLLM caches
only full blocks) after the chat template; SGLang's radix cache matches it token by token.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# About 300 tokens with SmolLM2's tokenizer (349 with the chat template and question): two whole
# 128-token blocks, well under max_model_len.
SHARED_SYSTEM_PROMPT = " ".join(
    f"Rule {n}: a paged KV cache stores the keys and values of every token in fixed-size blocks, and a"
    f" prefix cache lets a later request reuse the blocks of an identical prompt prefix." for n in range(1, 9)
)
STREAM_QUESTION = "In two sentences, what does a KV cache store in a transformer?"
PLAIN_QUESTION = "Name one thing a scheduler in an LLM server decides."
PREFIX_QUESTIONS = ("What is rule 1 about?", "What is rule 2 about?")


@dataclass
class DemoRequest:
    label: str
    request_id: str  # the X-Request-Id sent: the trace's http.request records it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""


@dataclass
class DemoRun:
    model: str = ""
    requests: list[DemoRequest] = field(default_factory=list)

    def by_label(self, label: str) -> DemoRequest:
        return next(r for r in self.requests if r.label == label)


def send_demo_chats(base_url: str, max_tokens: int, echo: Callable[[str], None]) -> DemoRun:
    """Four chat requests, one after the other (the second prefix request must find the first's
    blocks already cached). echo prints the streamed answer piece by piece."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="demo", max_retries=0, timeout=300)
    run = DemoRun(model=client.models.list().data[0].id)

    def new(label: str) -> DemoRequest:
        request = DemoRequest(label=label, request_id=f"demo-{label}")
        run.requests.append(request)
        return request

    request = new("stream")
    echo(f"[bold]user:[/] {STREAM_QUESTION}\n[bold]assistant:[/] ")
    stream = client.chat.completions.create(
        model=run.model, messages=[{"role": "user", "content": STREAM_QUESTION}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-request-id": request.request_id},
    )
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content or ""
            request.text += piece
            echo(piece)
        if chunk.usage:
            request.prompt_tokens, request.completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
    echo("\n")

    plain = [("plain", [{"role": "user", "content": PLAIN_QUESTION}])]
    prefixed = [(f"prefix-{n + 1}", [{"role": "system", "content": SHARED_SYSTEM_PROMPT},
                                     {"role": "user", "content": question}])
                for n, question in enumerate(PREFIX_QUESTIONS)]
    for label, messages in plain + prefixed:
        request = new(label)
        reply = client.chat.completions.create(
            model=run.model, messages=messages, max_tokens=max_tokens, temperature=0,
            extra_headers={"x-request-id": request.request_id},
        )
        request.text = reply.choices[0].message.content or ""
        if reply.usage:
            request.prompt_tokens, request.completion_tokens = reply.usage.prompt_tokens, reply.usage.completion_tokens
    return run
