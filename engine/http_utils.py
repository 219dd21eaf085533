"""HTTP plumbing under the OpenAI routes: SSE streams that end with their client, handlers
cancelled on disconnect, and validation errors worded the way vLLM words them."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Awaitable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers


class SSEResponse(StreamingResponse):
    """A stream that stops the moment its client disconnects, and always closes its generator.

    Starlette cancels the sending task on disconnect, which may leave the body generator
    suspended at a `yield`; closing it here runs its `finally`, which aborts the request.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def _wait_for_disconnect(raw_request: Request) -> None:
    while True:
        message = await raw_request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(raw_request: Request, handler: Awaitable[Response]) -> Response:
    """Run the handler, cancelling it if the client disconnects first (its finally aborts the request)."""
    # Mirrors: vllm.entrypoints.serve.utils.api_utils:with_cancellation (vllm 0.33.0)
    handler_task = asyncio.ensure_future(handler)
    disconnect_task = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    done, pending = await asyncio.wait({handler_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if handler_task in done:
        return handler_task.result()
    await asyncio.gather(handler_task, return_exceptions=True)
    return Response(status_code=499)  # nobody is listening any more


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    # Mirrors: vllm.entrypoints.serve.exception_handling.handlers.validation:validation_exception_handler (vllm 0.33.0)
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    if any(e.get("type") == "json_invalid" for e in errors):
        return "the request body is not valid JSON", None
    messages_by_field: dict[str, list[str]] = {}
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        # A union (prompt: str | list[int]) names the member that failed; the field is enough.
        loc = [p for p in loc if not (p.startswith(("str", "list[", "function-")) or p in ("int", "float", "bool"))]
        messages_by_field.setdefault(".".join(loc) or "body", []).append(e.get("msg", "invalid"))
    parts = [f"{name}: {' or '.join(dict.fromkeys(msgs))}" for name, msgs in messages_by_field.items()]
    first_field = next(iter(messages_by_field))
    return "invalid request: " + "; ".join(parts), None if first_field == "body" else first_field.split(".")[0]


class ApiKeyMiddleware:
    """401 for /v1 requests without `Authorization: Bearer <api_key>`; /health and the rest stay open.

    Mirrors: vllm.entrypoints.serve.middleware.authenticate:AuthenticationMiddleware (vllm 0.33.0)
    A plain ASGI middleware, as there: Starlette's BaseHTTPMiddleware would sit between the
    routes and their client and break cancel-on-disconnect and streaming. Both sides are hashed
    before a constant-time compare, so neither the key's bytes nor its length leak through
    timing. vLLM answers {"error": "Unauthorized"}; we answer in OpenAI's error shape, which the
    openai client turns into AuthenticationError with the message. The key is never logged, and
    a refused request never reaches the routes (nor the traced http.request hop).
    """

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self._key_hash = hashlib.sha256(api_key.encode()).digest()

    def _authorized(self, scope) -> bool:
        value = Headers(scope=scope).get("authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._key_hash)

    async def __call__(self, scope, receive, send) -> None:
        guarded = scope["type"] == "http" and scope.get("method") != "OPTIONS" and \
            scope["path"].removeprefix(scope.get("root_path", "")).startswith("/v1")
        if not guarded or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        has_header = bool(Headers(scope=scope).get("authorization"))
        message = "incorrect API key" if has_header else "missing API key: send Authorization: Bearer <key>"
        body = {"error": {"message": message, "type": "AuthenticationError", "param": None, "code": 401}}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
