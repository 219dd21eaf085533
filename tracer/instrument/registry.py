"""Which trace a request belongs to, in this process: request id -> the SpanContext of its root span,
and internal id -> external id. Filled where a request's root opens (or when a carrier brings the
context from another process); read by every later span of that request and by the steps linking to it."""
from __future__ import annotations

import threading
from collections import OrderedDict

from opentelemetry.trace import SpanContext


class RequestRegistry:
    """request id -> SpanContext of the request's root span, and internal id -> external id
    (bounded: oldest dropped first)."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._contexts: OrderedDict[str, SpanContext] = OrderedDict()
        self._external: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request_id: str) -> SpanContext | None:
        return self._contexts.get(request_id)

    def external_id(self, request_id: str) -> str | None:
        return self._external.get(request_id)

    def name_external(self, request_id: str, external_id: str) -> None:
        if request_id == external_id:
            return
        with self._lock:
            self._external[request_id] = external_id
            while len(self._external) > self.max_size:
                self._external.popitem(last=False)

    def register(self, request_id: str, span_context: SpanContext) -> None:
        with self._lock:
            if request_id in self._contexts:
                return
            self._contexts[request_id] = span_context
            while len(self._contexts) > self.max_size:
                self._contexts.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()
            self._external.clear()

    def __len__(self) -> int:
        return len(self._contexts)


registry = RequestRegistry()
