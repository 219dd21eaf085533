"""A request's constraint and its grammar: a Future while it compiles, the grammar once it has.

Mirrors: vllm.v1.structured_output.request:StructuredOutputRequest (vllm 0.33.0)
The scheduler polls is_grammar_ready while the request sits in
RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR (vllm/v1/core/sched/scheduler.py:3535-3547).
"""
from __future__ import annotations

import functools
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.structured_output.params import StructuredOutputKey, StructuredOutputsParams, get_structured_output_key

if TYPE_CHECKING:
    from engine.structured_output.backend_xgrammar import XgrammarGrammar


@dataclass
class StructuredOutputRequest:
    params: StructuredOutputsParams
    _grammar: "Future[XgrammarGrammar] | XgrammarGrammar | Exception | None" = None
    # Ours, for spans: what the compile cost this request (0 on a cache hit) and whether it hit.
    compile_time_s: float | None = None
    cache_hit: bool | None = None
    # Ours: tokens appended by jump-forward (SGLang's earlier design) without a forward pass each.
    num_jump_forward_tokens: int = 0
    # Ours: the masked fraction of the vocabulary at the last bitmask fill for this request.
    masked_fraction: float | None = field(default=None, repr=False)

    @staticmethod
    def from_params(params: StructuredOutputsParams | None) -> "StructuredOutputRequest | None":
        return None if params is None else StructuredOutputRequest(params=params)

    def _check_grammar_completion(self) -> bool:
        if isinstance(self._grammar, Future):
            if not self._grammar.done():
                return False
            try:
                self._grammar = self._grammar.result()
            except Exception as exc:  # the compile failed: the scheduler fails only this request
                self._grammar = exc
        return True

    @property
    def is_grammar_ready(self) -> bool:
        return self._check_grammar_completion()

    @property
    def grammar(self) -> "XgrammarGrammar | Exception | None":
        if not self._check_grammar_completion():
            return None
        return self._grammar

    @grammar.setter
    def grammar(self, grammar: "XgrammarGrammar | Future[XgrammarGrammar]") -> None:
        self._grammar = grammar

    @functools.cached_property
    def structured_output_key(self) -> StructuredOutputKey:
        return get_structured_output_key(self.params)

    @property
    def kind(self) -> str:
        return self.structured_output_key[0].name.lower()

    @property
    def is_complete(self) -> bool:
        """The output so far is a complete sentence of the grammar (its stop token accepted, or it
        could end here). False where max_tokens cut it off midway."""
        grammar = self.grammar
        return grammar is not None and not isinstance(grammar, Exception) and grammar.is_complete()
