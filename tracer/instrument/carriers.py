"""Carrying request contexts inside a pickled message, for engines whose messages have no field to spare.

SGLang's inter-process messages are msgspec Structs (no extra attributes; sglang/srt/managers/
io_struct.py:86 BaseReq, :97 BaseBatchReq) sent with pickle (SGLANG_USE_PICKLE_IPC, on by default:
sglang/srt/managers/io_struct.py:2732 sock_send). A field's value is wrapped in a CarriedValue that
pickles as "call tracer.instrument.carriers.arrive(value, contexts)": the receiving process gets the
original value back, exactly, and its request registry learns each request's trace context first.
"""
from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracer.instrument.registry import registry

_propagator = TraceContextTextMapPropagator()


class CarriedValue:
    """A field value plus {request id: traceparent}; unpickles as the value alone."""

    __slots__ = ("value", "contexts")

    def __init__(self, value: Any, contexts: dict[str, str]) -> None:
        self.value = value
        self.contexts = contexts

    def __reduce__(self):
        return arrive, (self.value, self.contexts)

    # The sender may go on using the field after the hook wrapped it (SGLang's TokenizerManager puts
    # time_stats back and calls it after the send): it reaches the value itself.
    def __getattr__(self, name: str) -> Any:
        return getattr(self.value, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in CarriedValue.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.value, name, value)


def carry(message: Any, field: str, contexts: dict[str, str]) -> None:
    """Wrap message.<field> so that `contexts` travel with it (merged with what already travels)."""
    if not contexts:
        return
    value = getattr(message, field)
    if isinstance(value, CarriedValue):
        value.contexts.update(contexts)
        return
    setattr(message, field, CarriedValue(value, dict(contexts)))


def arrive(value: Any, contexts: dict[str, str]) -> Any:
    """Unpickling a CarriedValue in the receiving process: register the contexts, return the value."""
    for request_id, traceparent in contexts.items():
        context = trace.get_current_span(_propagator.extract({"traceparent": traceparent})).get_span_context()
        if context.is_valid:
            registry.register(request_id, context)
    return value
