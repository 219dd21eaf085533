"""Constrained decoding on SGLang's loop (cache_mode "sglang"): the grammar queue and the token FSM.

Mirrors: sglang.srt.constrained.grammar_manager:GrammarManager (sglang 0.5.23)
A constrained request does not enter the waiting queue until its grammar is compiled:
GrammarManager.process_req_with_grammar parks it in grammar_queue
(sglang/srt/constrained/grammar_manager.py:148-209), and each prefill decision first moves the
ready ones over (get_ready_grammar_requests, grammar_manager.py:211-260, called from
sglang/srt/managers/scheduler.py:4084-4087 Scheduler._get_new_batch_prefill_raw); a failed
compile comes back as a request finished with an error. After sampling, process_batch_result
advances the grammar on the token (sglang/srt/managers/scheduler_components/batch_result_processor.py:710-730
SchedulerBatchResultProcessor._apply_prefill_grammar, and the decode path) and a terminated grammar
finishes the request (sglang/srt/managers/schedule_batch.py:2045-2047 Req.update_finish_state).
The mask itself SGLang fills in the model runner after the forward, one row per request
(sglang/srt/sampling/sampling_batch_info.py:382-407 SamplingBatchInfo.update_regex_vocab_mask); ours is
the same StructuredOutputManager.grammar_bitmask the vLLM loop uses, one row per sampling request,
applied by the same model runner. The compile itself is the shared manager's (thread pool, cache by key).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.request import RequestStatus

if TYPE_CHECKING:
    from engine.request import Request
    from engine.structured_output.manager import StructuredOutputManager


@dataclass
class GrammarQueue:
    manager: "StructuredOutputManager"
    # Requests whose grammar is compiling, in arrival order (SGLang: GrammarManager.grammar_queue).
    queue: list = field(default_factory=list)
    # Compile failures, reported as finished-with-error outputs by the next update_from_output.
    errors: dict[str, str] = field(default_factory=dict)

    def hold(self, entry) -> bool:
        """Mirrors: sglang.srt.constrained.grammar_manager:GrammarManager.process_req_with_grammar (sglang 0.5.23)
        True if the request waits here for its grammar instead of joining the waiting queue."""
        if entry.request.status != RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR:
            return False
        self.queue.append(entry)
        return True

    def take_ready(self) -> list:
        """Mirrors: sglang.srt.constrained.grammar_manager:GrammarManager.get_ready_grammar_requests (sglang 0.5.23)
        The entries whose grammar compiled, in arrival order; failed ones go to errors."""
        ready, waiting = [], []
        for entry in self.queue:
            so_request = entry.request.structured_output_request
            if not so_request.is_grammar_ready:
                waiting.append(entry)
            elif isinstance(so_request.grammar, Exception):
                self.errors[entry.request.request_id] = f"Invalid structured outputs: {so_request.grammar}"
            else:
                entry.request.status = RequestStatus.WAITING
                ready.append(entry)
        self.queue = waiting
        return ready

    def remove(self, entry) -> None:
        self.queue = [e for e in self.queue if e is not entry]

    def accept_token(self, request: "Request", token_id: int) -> bool:
        """Advance the request's grammar on its sampled token; False if the grammar refused it
        (SGLang aborts the request, batch_result_processor.py:710-730)."""
        return self.manager.accept_tokens(request, [token_id])

    @staticmethod
    def is_terminated(request: "Request") -> bool:
        grammar = request.structured_output_request.grammar if request.use_structured_output else None
        return grammar is not None and not isinstance(grammar, Exception) and grammar.is_terminated()
