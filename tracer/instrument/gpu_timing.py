"""GPU-timed spans (catalog `cuda_timed`): CUDA events around the call, and the span ends once its
end event has completed, so the hot path never synchronizes. Imports nothing of ours but the schema: spans
starts and queues them, otel drains them before a flush."""
from __future__ import annotations

import sys
from collections import deque
from typing import Any

from tracer.traces.schema import GPU_FORWARD_MS


def start_events() -> tuple | None:
    """(start, end) CUDA events, the start recorded now; None without an initialised CUDA context."""
    torch = sys.modules.get("torch")
    # is_initialized first: a flag, where is_available reads the environment and asks NVML / the
    # driver on every call (~0.8 us; 3% of the hooks' CPU in a py-spy profile of
    # bench/trace_overhead.py's workload on a CPU-only host). The same answer either way.
    if torch is None or not torch.cuda.is_initialized() or not torch.cuda.is_available():
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    return start, end


_pending: deque = deque()  # (span, start event, end event, wall-clock end ns), oldest first


def end_when_done(span: Any, start: Any, stop: Any, end_ns: int) -> None:
    """Record the end event now; the span ends (with its GPU time) once the event has completed."""
    stop.record()
    _pending.append((span, start, stop, end_ns))


def drain_pending(wait: bool = False) -> None:
    """End GPU-timed spans whose end event has completed (all of them when wait)."""
    while _pending:
        span, start, stop, end_ns = _pending[0]
        try:
            if wait:
                stop.synchronize()
            elif not stop.query():
                return
            span.set_attribute(GPU_FORWARD_MS, float(start.elapsed_time(stop)))
        except Exception:  # pragma: no cover - a lost CUDA context must not leak spans
            pass
        _pending.popleft()
        span.end(end_time=end_ns)
