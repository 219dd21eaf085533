"""One request's prefix-cache explanation (what explain_cache and explain_radix return), and the
prefill rate that prices its uncached tokens."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracer.traces.schema import BATCH_TOTAL


@dataclass
class CacheMiss:
    request: str
    prompt_tokens: int
    block_size: int | None
    blocks: list[dict]  # per full block: index, hash (short), hit
    cached_tokens: int
    reason: str
    evidence: str
    uncached_tokens: int
    est_prefill_ms: float | None  # the uncached tokens at this request's own measured prefill rate
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(vars(self))


def prefill_ms_per_token(life: Any) -> float | None:
    """This request's share of its prefill steps' time, per prefill token it computed."""
    spent, tokens, computed = 0.0, 0, life.cached_tokens
    for step, n in life.scheduled:
        if computed >= life.prompt_tokens:
            break
        total = int(step.attr(BATCH_TOTAL) or n) or n
        spent += (step.end_ns - step.start_ns) / 1e6 * n / total
        tokens += n
        computed += n
    return spent / tokens if tokens else None


