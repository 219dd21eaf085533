"""The wrapper around one hooked callable: it opens the hop's span around each call.

Plain functions, methods, async functions and sync/async generators each get a wrapper of the
same kind, so inspect (and frameworks that branch on it, like FastAPI) sees no difference. A
coroutine that returns an async generator (a streamed HTTP response) keeps its span open until
the stream ends.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any

from tracer.instrument import otel, spans
from tracer.instrument.hop_call import HopCall
from tracer.traces.schema import STREAM_CLOSED_EARLY

logger = logging.getLogger("tracer.instrument.hooks")

MARKER = "__servetrace_hop__"


def _binder(function: Any):
    """args, kwargs -> {parameter name: value}, without inspect.Signature.bind on the hot path."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_positional = next((p.name for p in parameters if p.kind == p.VAR_POSITIONAL), None)

    def bind(args: tuple, kwargs: dict) -> dict[str, Any]:
        bound = dict(zip(positional, args))
        if var_positional is not None and len(args) > len(positional):
            bound[var_positional] = args[len(positional):]
        if kwargs:
            bound.update(kwargs)
        return bound

    return bind


def make_wrapper(function: Any, call: HopCall) -> Any:
    """A wrapper of the same kind as `function` (sync, async, generator, async generator)."""
    bind = _binder(function)

    if inspect.isasyncgenfunction(function):

        @functools.wraps(function)
        async def async_gen_wrapper(*args, **kwargs):
            bound = bind(args, kwargs)
            open_span = spans.begin(call, bound)
            if open_span is None:
                async for item in function(*args, **kwargs):
                    yield item
                return
            agen = function(*args, **kwargs)
            spans.deactivate(open_span)
            error: BaseException | None = None
            try:
                to_send = None
                while True:
                    spans.activate(open_span)
                    try:
                        item = await agen.asend(to_send)
                    except StopAsyncIteration:
                        break
                    finally:
                        spans.deactivate(open_span)
                    to_send = yield item
            except BaseException as exc:
                error = None if isinstance(exc, GeneratorExit) else exc
                await agen.aclose()
                raise
            finally:
                spans.activate(open_span)
                spans.end(open_span, bound, None, error)

        wrapper = async_gen_wrapper
    elif inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args, **kwargs):
            bound = bind(args, kwargs)
            open_span = spans.begin(call, bound)
            if open_span is None:
                return await function(*args, **kwargs)
            try:
                result = await function(*args, **kwargs)
            except BaseException as exc:
                spans.end(open_span, bound, None, exc)
                raise
            if inspect.isasyncgen(result):
                spans.deactivate(open_span)
                return SpanUntilStreamEnds(result, open_span, bound)
            body = getattr(result, "body_iterator", None)  # a StreamingResponse (SGLang's handle_request)
            if body is not None and hasattr(body, "__anext__"):
                spans.deactivate(open_span)
                result.body_iterator = SpanUntilStreamEnds(body, open_span, bound)
                return result
            spans.end(open_span, bound, result)
            return result

        wrapper = async_wrapper
    elif inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def gen_wrapper(*args, **kwargs):
            bound = bind(args, kwargs)
            open_span = spans.begin(call, bound)
            if open_span is None:
                return (yield from function(*args, **kwargs))
            spans.deactivate(open_span)
            gen = function(*args, **kwargs)
            error: BaseException | None = None
            result = None
            try:
                to_send = None
                while True:
                    spans.activate(open_span)
                    try:
                        item = gen.send(to_send)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    finally:
                        spans.deactivate(open_span)
                    to_send = yield item
            except BaseException as exc:
                error = None if isinstance(exc, GeneratorExit) else exc
                gen.close()
                raise
            finally:
                spans.activate(open_span)
                spans.end(open_span, bound, result, error)
            return result

        wrapper = gen_wrapper
    else:

        @functools.wraps(function)
        def sync_wrapper(*args, **kwargs):
            bound = bind(args, kwargs)
            open_span = spans.begin(call, bound)
            if open_span is None:
                return function(*args, **kwargs)
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                spans.end(open_span, bound, None, exc)
                raise
            spans.end(open_span, bound, result)
            return result

        wrapper = sync_wrapper
    setattr(wrapper, MARKER, call.hop)
    return wrapper


def make_carrier_wrapper(function: Any, call: HopCall) -> Any:
    """A call that hands work to another process (a catalog carrier): before it runs, the engine's
    CARRY function puts the trace context on what it sends. No span; never fails the call."""
    bind = _binder(function)
    write = call.inject.write

    def carry(args: tuple, kwargs: dict) -> None:
        if otel.active_tracer() is None:
            return
        try:
            write(bind(args, kwargs), None, {})
        except Exception:  # the message goes out without our context, as it would untraced
            spans.warn_once(call, "carry", "carrying the trace context with %s failed", call.target)

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_carrier(*args, **kwargs):
            carry(args, kwargs)
            return await function(*args, **kwargs)

        wrapper = async_carrier
    else:

        @functools.wraps(function)
        def carrier(*args, **kwargs):
            carry(args, kwargs)
            return function(*args, **kwargs)

        wrapper = carrier
    setattr(wrapper, MARKER, call.hop)
    return wrapper


class SpanUntilStreamEnds:
    """What a hooked coroutine that returns an async generator (a streaming HTTP response) returns
    instead, or what a returned StreamingResponse iterates: the span stays open until the stream is exhausted, fails, or is closed.
    A stream that is never iterated ends its span when it is closed or collected."""

    CLOSED_EARLY = STREAM_CLOSED_EARLY

    def __init__(self, stream: Any, open_span: spans.OpenSpan, bound: dict[str, Any]) -> None:
        self._stream = stream
        self._open_span: spans.OpenSpan | None = open_span
        self._bound = bound

    def __aiter__(self) -> "SpanUntilStreamEnds":
        return self

    async def __anext__(self) -> Any:
        open_span = self._open_span
        if open_span is not None:
            # The stream's body runs later, in the server's task: whatever it calls (vLLM enqueues the
            # request only when its generator is first iterated) nests under this span.
            spans.activate(open_span)
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._mark_closed_early()  # the client went away mid-stream: not an error of ours
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        finally:
            if open_span is not None:
                spans.deactivate(open_span)

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._open_span is not None:
                self._mark_closed_early()
                self._end(None)

    def _mark_closed_early(self) -> None:
        open_span = self._open_span
        if open_span.span is not None:
            open_span.span.set_attribute(self.CLOSED_EARLY, True)
        else:
            open_span.attributes[self.CLOSED_EARLY] = True

    def _end(self, error: BaseException | None) -> None:
        open_span, self._open_span = self._open_span, None
        if open_span is not None:
            spans.end(open_span, self._bound, self._stream, error)

    def __del__(self) -> None:
        if self._open_span is not None:
            self._mark_closed_early()
            self._end(None)
