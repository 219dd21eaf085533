"""Which trace a request belongs to, in this process: request id -> the SpanContext of its root span,
and internal id -> external id. Filled where a request's root opens (or when a carrier brings the
context from another process); read by every later span of that request and by the steps linking to it."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from opentelemetry.trace import SpanContext


class RequestRegistry:
    """request id -> SpanContext of the request's root span, and internal id -> external id
    (bounded: oldest dropped first)."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._contexts: OrderedDict[str, SpanContext] = OrderedDict()
        self._external: OrderedDict[str, str] = OrderedDict()
        # request id -> what waits for its root (a span ended on another thread before the request's
        # root was registered: the compact engine's grammar compile, submitted inside the enqueue).
        self._awaiting: OrderedDict[str, list[Callable[[SpanContext | None], None]]] = OrderedDict()
        self._lock = threading.Lock()
        # Bumped whenever a request's root is added or dropped: what was read from the registry
        # under an older version may be stale (request_links memoizes a batch's links by it).
        self.version = 0

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

    def when_registered(self, request_id: str, callback: Callable[[SpanContext | None], None]) -> SpanContext | None:
        """The request's root if it is registered; else None, and callback(root) runs (on the
        registering thread) once it is, or callback(None) if the registry is cleared or overflows first."""
        dropped: list[Callable[[SpanContext | None], None]] = []
        with self._lock:
            context = self._contexts.get(request_id)
            if context is not None:
                return context
            self._awaiting.setdefault(request_id, []).append(callback)
            while len(self._awaiting) > self.max_size:
                dropped.extend(self._awaiting.popitem(last=False)[1])
        for waiting in dropped:
            waiting(None)
        return None

    def register(self, request_id: str, span_context: SpanContext) -> None:
        with self._lock:
            if request_id in self._contexts:
                return
            self._contexts[request_id] = span_context
            self.version += 1
            while len(self._contexts) > self.max_size:
                self._contexts.popitem(last=False)
            waiting = self._awaiting.pop(request_id, ())
        for callback in waiting:  # outside the lock: a callback writes a span
            callback(span_context)

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()
            self.version += 1
            self._external.clear()
            waiting = [callback for callbacks in self._awaiting.values() for callback in callbacks]
            self._awaiting.clear()
        for callback in waiting:  # written as they are (their own trace) rather than lost
            callback(None)

    def __len__(self) -> int:
        return len(self._contexts)


registry = RequestRegistry()
