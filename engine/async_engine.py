"""Async front end over the engine's busy loop: asyncio handlers on one side, one engine thread on the other.

Mirrors: vllm.v1.engine.async_llm:AsyncLLM (vllm 0.33.0)
vLLM runs EngineCore in its own process and talks to it over ZMQ; here the engine core is a thread in the server process.

Threads and what they touch:
- the engine thread runs the busy loop: step() while there is work, otherwise it waits on
  a condition. It holds `engine_lock` for each step, because LLMEngine is not thread-safe.
- asyncio handlers add requests through `asyncio.to_thread`, which copies contextvars, so
  whatever context the HTTP handler had (an OpenTelemetry span, for one) is current inside
  LLMEngine.add_request. The worker thread takes `engine_lock` between two steps.
- outputs travel back to per-request asyncio.Queues via loop.call_soon_threadsafe.
- aborts are messages: the busy loop applies them before its next step, as vLLM's
  EngineCore applies the aborts it reads from its input queue. Asking for one never waits,
  so a handler can do it from a `finally` while it is being cancelled.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import logging
import threading
from typing import AsyncIterator

from engine.llm_engine import LLMEngine, RequestOutput
from engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineOverloadedError(RuntimeError):
    """As many requests are in flight as the server admits; the client should retry later."""


class EngineShutdownError(RuntimeError):
    """The server is shutting down and admits no new requests."""


class EngineDeadError(RuntimeError):
    """The busy loop crashed; no request can be served any more."""


class RequestAbortedError(RuntimeError):
    """The engine aborted the request before it finished (the server is shutting down)."""


class RequestStream:
    """The outputs of one request, in order. Iteration ends after the finished output.

    Closing it (or dropping it) before the end aborts the request, so its KV blocks are freed.
    """

    def __init__(self, request_id: str, queue: asyncio.Queue, on_abandon) -> None:
        self.request_id = request_id
        self.finished = False
        self._queue = queue
        self._on_abandon = on_abandon

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
            if item.finish_reason == "abort":
                raise RequestAbortedError(f"request {self.request_id} was aborted: the server is shutting down")
        return item

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_abandon(self.request_id)

    def __del__(self) -> None:
        # A handler that never iterated its stream (its client left first) still frees the request.
        self.close()


class AsyncLLM:
    def __init__(self, engine: LLMEngine, max_queue: int = 256) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.engine = engine
        self.max_queue = max_queue
        self.engine_lock = threading.Lock()
        self._work = threading.Condition(self.engine_lock)
        # A thread that wants the engine between two steps registers here first; the busy loop
        # waits for it rather than re-taking the lock at once (threading.Lock is not fair).
        self._num_waiting_callers = 0
        self._callers_lock = threading.Lock()
        self._pending_aborts: collections.deque[str] = collections.deque()
        self._request_ids_in_engine: set[str] = set()  # guarded by engine_lock
        self._streams: dict[str, asyncio.Queue] = {}  # event loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopping = False
        self.dead_error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the busy loop; call from the event loop that will consume the outputs."""
        if self._thread is not None:
            raise RuntimeError("AsyncLLM.start() was already called")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run_busy_loop, name="engine-busy-loop", daemon=True)
        self._thread.start()
        self._accepting = True

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop admitting, give in-flight requests `timeout` seconds to finish, abort the rest, stop the loop."""
        self._accepting = False
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._streams and self._thread.is_alive() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._streams:
            logger.warning("aborting %d request(s) still running at shutdown", len(self._streams))
        await asyncio.to_thread(self._stop_busy_loop)
        await asyncio.sleep(0)  # let the abort outputs reach their queues

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_error is None

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    @property
    def max_request_tokens(self) -> int:
        """Prompt + output tokens one request may use: the context, and what the KV pool holds."""
        return self.engine.max_request_tokens

    # -- requests ------------------------------------------------------------------------

    async def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        priority: int = 0,
    ) -> RequestStream:
        """Admit a request and hand it to the engine; raises rather than queueing past max_queue."""
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine loop has stopped: {self.dead_error!r}")
        if not self._accepting:
            raise EngineShutdownError("the server is not accepting requests (shutting down)")
        if len(self._streams) >= self.max_queue:
            raise EngineOverloadedError(
                f"the server is at capacity ({self.max_queue} requests in flight); retry later"
            )
        # Checked before the request is queued: the scheduler would wait forever for KV blocks
        # that can never be free at once.
        self.engine.check_request_size(prompt_token_ids, sampling_params)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in flight")
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue  # before the engine can emit anything for it
        adding = asyncio.ensure_future(
            asyncio.to_thread(self._with_engine, self._add_request_locked, request_id, prompt_token_ids, sampling_params, priority)
        )
        try:
            await asyncio.shield(adding)
        except asyncio.CancelledError:
            # The worker thread may still add it after we stop waiting: abort it once it is in.
            self._streams.pop(request_id, None)
            adding.add_done_callback(lambda task: task.cancelled() or task.exception() or self.abort_nowait(request_id))
            raise
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        return RequestStream(request_id, queue, self._abandon)

    def abort_nowait(self, request_id: str) -> None:
        """Ask the busy loop to abort a request before its next step. Thread-safe; never blocks.

        No wake-up is needed: if the request is still in the engine, the loop is busy.
        """
        self._pending_aborts.append(request_id)

    def _abandon(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            self.abort_nowait(request_id)

    # -- the engine thread ---------------------------------------------------------------

    def _with_engine(self, fn, *args):
        """Run fn(*args) under engine_lock between two steps (from a worker thread)."""
        with self._callers_lock:
            self._num_waiting_callers += 1
        with self._work:
            with self._callers_lock:
                self._num_waiting_callers -= 1
            try:
                return fn(*args)
            finally:
                self._work.notify_all()

    def _add_request_locked(
        self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams, priority: int
    ) -> None:
        if self._stopping:
            raise EngineShutdownError("the server is not accepting requests (shutting down)")
        self.engine.add_request(request_id, prompt_token_ids, sampling_params, priority=priority)
        self._request_ids_in_engine.add(request_id)

    def _ready_to_step(self) -> bool:
        if self._num_waiting_callers:
            return False
        return self._stopping or self.engine.has_unfinished_requests()

    def _run_busy_loop(self) -> None:
        # Mirrors: vllm.v1.engine.core:EngineCoreProc.run_busy_loop (vllm 0.33.0)
        try:
            while True:
                with self._work:
                    self._work.wait_for(self._ready_to_step)
                    if self._stopping:
                        return
                    self._apply_pending_aborts_locked()
                    outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
                    # The engine reuses a request's RequestOutput across steps: hand over copies.
                    outputs = [copy.copy(out) for out in outputs]
                    for out in outputs:
                        if out.finished:
                            self._request_ids_in_engine.discard(out.request_id)
                if outputs:
                    self._loop.call_soon_threadsafe(self._dispatch, outputs)
        except BaseException as exc:  # noqa: BLE001 - every waiting client must hear about it
            logger.exception("the engine busy loop crashed")
            self.dead_error = exc
            self._loop.call_soon_threadsafe(self._fail_all, exc)

    def _apply_pending_aborts_locked(self) -> list[str]:
        request_ids = []
        while self._pending_aborts:
            request_ids.append(self._pending_aborts.popleft())
        request_ids = [rid for rid in request_ids if rid in self._request_ids_in_engine]
        if request_ids:
            self.engine.abort_request(request_ids)
            self._request_ids_in_engine.difference_update(request_ids)
        return request_ids

    def _stop_busy_loop(self) -> None:
        """Abort whatever is still in the engine and end the busy loop (from a worker thread)."""
        if self._thread.is_alive():
            aborted = self._with_engine(self._abort_all_and_stop_locked)
            if aborted:
                outputs = [RequestOutput(rid, [], finish_reason="abort") for rid in aborted]
                self._loop.call_soon_threadsafe(self._dispatch, outputs)
        self._thread.join()

    def _abort_all_and_stop_locked(self) -> list[str]:
        self._apply_pending_aborts_locked()
        aborted = sorted(self._request_ids_in_engine)
        if aborted:
            self.engine.abort_request(aborted)
        self._request_ids_in_engine.clear()
        self._stopping = True
        return aborted

    # -- back on the event loop ----------------------------------------------------------

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._streams.get(out.request_id)
            if queue is None:
                continue  # its client has gone; the abort is on its way
            queue.put_nowait(out)
            if out.finished:
                del self._streams[out.request_id]

    def _fail_all(self, exc: BaseException) -> None:
        for queue in self._streams.values():
            queue.put_nowait(EngineDeadError(f"the engine loop has stopped: {exc!r}"))
        self._streams.clear()
