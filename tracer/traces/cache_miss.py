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
    # What each entry of `blocks` is: a hash cache's full block (block_size tokens), or in a radix
    # trace one prefix-hash unit (unit_tokens: whole pages, at least 16 tokens; block_size is the page).
    unit: str = "block"
    unit_tokens: int | None = None

    def to_json(self) -> dict:
        return dict(vars(self))

    def units_hit(self) -> str:
        """'2 of 3 full blocks hit', or in a radix trace '1 of 2 16-token prefix units hit'."""
        hits = sum(1 for block in self.blocks if block["hit"])
        noun = "full blocks" if self.unit == "block" else f"{self.unit_tokens}-token {self.unit}s"
        return f"{hits} of {len(self.blocks)} {noun} hit"

    def granularity(self) -> str:
        """What the cache keeps by: '16-token blocks', or a radix tree's page size and matched path."""
        if self.unit == "block":
            return f"{self.block_size}-token blocks" if self.block_size else ""
        page = f"page size {self.block_size}" if self.block_size else ""
        path = self.details.get("radix_path") or []
        steps = " > ".join(f"node {n['node']} ({n['tokens']})" for n in path)
        nodes = f"radix path {steps}" if path else "no radix node matched"
        return " · ".join(part for part in (page, nodes) if part)


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


