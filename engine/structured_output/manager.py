"""Engine-level structured output: async compile cached by key, the batch bitmask, grammar state.

Mirrors: vllm.v1.structured_output:StructuredOutputManager (vllm 0.33.0)
- grammar_init submits the compile to a thread pool (vllm/v1/structured_output/__init__.py:195-204)
  and the request waits in WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR until the Future is done;
- grammar_bitmask fills one row per structured request on the scheduler side (__init__.py:382-531),
  in the order of structured_output_request_ids; the model runner reorders and applies it (apply.py);
- accept_tokens advances a grammar on the tokens the scheduler kept (__init__.py:533-553);
  validate_tokens cuts drafts at the first token the grammar refuses (update_draft_token_ids);
  grammar_bitmask fills 1 + k rows per request, advancing over the drafts and rolling back after.
The compile cache by key is explicit here (SGLang keeps one too: BaseGrammarBackend.cache,
sglang/srt/constrained/base_grammar_backend.py:304-316; vLLM relies on xgrammar's compiler cache,
backend_xgrammar.py:219-224), so a span can say whether a request's compile hit it.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from engine.structured_output.backend_xgrammar import XgrammarBackend, XgrammarGrammar
from engine.structured_output.jump_forward import JumpForward, jump_forward_and_retokenize, jump_forward_tokens

if TYPE_CHECKING:
    import xgrammar as xgr

    from engine.request import Request

# (kind, spec, disable_any_whitespace): the compiled grammar depends on all three.
CacheKey = tuple[Any, str, bool]


@dataclass
class GrammarOutput:
    """Mirrors: vllm.v1.core.sched.output:GrammarOutput (vllm 0.33.0)"""

    structured_output_request_ids: list[str]
    # [requests * (1 + k), ceil(vocab / 32)] int32: a block of 1 + k rows per request with k-token
    # speculation (one row each without), of which the first 1 + its drafts are filled.
    grammar_bitmask: torch.Tensor
    # Ours, for spans: the fraction of the vocabulary each request's (last) row masks.
    masked_fractions: list[float] = field(default_factory=list)
    # Per request: how many leading drafts its rows constrain (vLLM 0.33's field, output.py:347-351).
    num_acceptable_drafts: list[int] | None = None


class StructuredOutputManager:
    def __init__(
        self,
        hf_tokenizer: Any,
        vocab_size: int,
        max_num_seqs: int,
        stop_token_ids: list[int] | None = None,
        encode: Callable[[str], list[int]] | None = None,
        jump_forward: bool = False,
        max_num_spec_tokens: int = 0,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        self._hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self.max_num_seqs = max_num_seqs
        self._stop_token_ids = stop_token_ids
        self.encode = encode
        self.jump_forward = jump_forward
        self.decode = decode
        # Jump-forward retokenizes at the boundary (SGLang's way); off: the jump string's tokens alone (the bench compares).
        self.retokenize = True
        self.max_num_spec_tokens = max_num_spec_tokens
        self._backend: XgrammarBackend | None = None
        self._backend_lock = threading.Lock()
        # vLLM: half the CPUs; compiles are CPU-bound (__init__.py:89-96).
        self.executor = ThreadPoolExecutor(max_workers=max(1, (multiprocessing.cpu_count() + 1) // 2),
                                           thread_name_prefix="grammar-compile")
        self._cache: dict[CacheKey, Future] = {}
        self._cache_lock = threading.Lock()
        self._pending: set[Future] = set()
        self._grammar_bitmask: torch.Tensor | None = None

    @property
    def backend(self) -> XgrammarBackend:
        # Built on first use, as vLLM's is (grammar_init, __init__.py:157-193): the tokenizer info costs 0.4-1.2 s here.
        with self._backend_lock:
            if self._backend is None:
                self._backend = XgrammarBackend(self._hf_tokenizer, self.vocab_size, self._stop_token_ids,
                                                max_rollback_tokens=self.max_num_spec_tokens)
            return self._backend

    # -- compile -------------------------------------------------------------------------

    def grammar_init(self, request: "Request") -> None:
        """Mirrors: vllm.v1.structured_output:StructuredOutputManager.grammar_init (vllm 0.33.0)"""
        so_request = request.structured_output_request
        if so_request is None:
            return
        # The backend (its TokenizerInfo) is built here, on the caller's thread, as vLLM's is on
        # the first structured request (__init__.py:157-193); the compile itself goes to the pool.
        _ = self.backend
        future = self.executor.submit(self._create_grammar, request)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        so_request.grammar = future

    def _create_grammar(self, request: "Request") -> XgrammarGrammar:
        """Mirrors: vllm.v1.structured_output:StructuredOutputManager._create_grammar (vllm 0.33.0)
        Runs on a compile thread: the compiled grammar from the cache (or compiled now), then the
        request's own matcher over it."""
        so_request = request.structured_output_request
        kind, spec = so_request.structured_output_key
        key = (kind, spec, so_request.params.disable_any_whitespace)
        start = time.perf_counter()
        compiled, hit = self._compiled(key)
        ctx = compiled.result()  # a twin's compile in flight: wait for it; a failed one raises here
        so_request.compile_time_s = time.perf_counter() - start
        so_request.cache_hit = hit
        return self.backend.new_grammar(ctx)

    def _compiled(self, key: CacheKey) -> tuple["Future[xgr.CompiledGrammar]", bool]:
        """The compile cache: one Future per key, filled by the first request that needs it."""
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                return cached, True
            future: Future = Future()
            self._cache[key] = future
        try:
            future.set_result(self.backend.compile(*key))
        except Exception as exc:
            future.set_exception(exc)
        return future, False

    def has_pending_compiles(self) -> bool:
        return bool(self._pending)

    def wait_for_compiles(self, timeout: float) -> None:
        """Block up to timeout for any compile to finish (an idle engine step need not spin)."""
        pending = list(self._pending)
        if pending:
            wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")

    # -- the batch bitmask (scheduler side) ----------------------------------------------

    def grammar_bitmask(
        self,
        requests: dict[str, "Request"],
        structured_output_request_ids: list[str],
        scheduled_spec_decode_tokens: dict[str, list[int]] | None = None,
    ) -> GrammarOutput | None:
        """Mirrors: vllm.v1.structured_output:StructuredOutputManager.grammar_bitmask (vllm 0.33.0)
        Each request owns a block of 1 + k rows (k = num_speculative_tokens; mask_stride,
        vllm/v1/structured_output/__init__.py:393-395): row i is the grammar's state after the
        request's first i drafts, so it masks the logits that verify draft i (the last row, the
        bonus token's). The grammar is advanced over each draft to fill the next row and rolled
        back after (__init__.py:449-521); it is advanced for good only on the tokens the verifier
        keeps (accept_tokens, from update_from_output). After a -1 placeholder draft the rows are
        all-allowed (those drafts are never accepted); a draft the grammar refuses (validation
        should have cut it) makes its row and the later ones copies of the last valid row."""
        if not structured_output_request_ids:
            return None
        spec_tokens = scheduled_spec_decode_tokens or {}
        stride = 1 + self.max_num_spec_tokens
        if self._grammar_bitmask is None:
            self._grammar_bitmask = self.backend.allocate_token_bitmask(self.max_num_seqs * stride)
        bitmask = self._grammar_bitmask
        fractions: list[float] = []
        num_acceptable_drafts: list[int] = []
        for grammar_idx, req_id in enumerate(structured_output_request_ids):
            index = grammar_idx * stride
            so_request = requests[req_id].structured_output_request
            grammar = so_request.grammar
            req_tokens = spec_tokens.get(req_id, [])
            state_advancements = 0
            seen_padding = False
            failed_index: int | None = None
            for token in req_tokens:
                if failed_index is not None:
                    bitmask[index].copy_(bitmask[failed_index])
                    index += 1
                    continue
                self._fill_row(grammar, bitmask, index, apply_bitmask=not seen_padding)
                if token == -1:
                    seen_padding = True
                elif not seen_padding:
                    if not grammar.is_terminated() and grammar.accept_tokens(req_id, [token]):
                        state_advancements += 1
                    else:
                        failed_index = index
                index += 1
            if failed_index is not None:
                bitmask[index].copy_(bitmask[failed_index])
            else:
                self._fill_row(grammar, bitmask, index, apply_bitmask=not seen_padding)
            so_request.masked_fraction = masked_fraction(bitmask[index], self.vocab_size)
            fractions.append(so_request.masked_fraction)
            num_acceptable_drafts.append(len(strip_speculative_padding(req_tokens)))
            if state_advancements > 0:
                grammar.rollback(state_advancements)
        num_masks = len(structured_output_request_ids) * stride
        return GrammarOutput(list(structured_output_request_ids), bitmask[:num_masks], fractions, num_acceptable_drafts)

    @staticmethod
    def _fill_row(grammar: XgrammarGrammar, bitmask: torch.Tensor, index: int, apply_bitmask: bool = True) -> None:
        # Mirrors: vllm.v1.structured_output:StructuredOutputManager._fill_bitmasks (vllm 0.33.0)
        # A terminated grammar (or a row past a placeholder draft) leaves its row all-allowed.
        if apply_bitmask and not grammar.is_terminated():
            grammar.fill_bitmask(bitmask, index)
        else:
            bitmask[index].fill_(-1)

    def validate_tokens(self, request: "Request", spec_tokens: list[int]) -> list[int]:
        """Mirrors: vllm.v1.structured_output:StructuredOutputManager.validate_tokens (vllm 0.33.0)
        The drafts up to the first the grammar refuses (placeholders and what follows stripped);
        the scheduler keeps only these (Scheduler.update_draft_token_ids, scheduler.py:2862-2881)."""
        if not request.use_structured_output:
            return spec_tokens
        spec_tokens = strip_speculative_padding(spec_tokens)
        grammar = request.structured_output_request.grammar
        if grammar is None or isinstance(grammar, Exception):
            return []
        return grammar.validate_tokens(spec_tokens)

    # -- grammar state ---------------------------------------------------------------------

    def accept_tokens(self, request: "Request", new_token_ids: list[int]) -> bool:
        """Mirrors: vllm.v1.structured_output:StructuredOutputManager.accept_tokens (vllm 0.33.0)
        Advance the grammar on accepted tokens; False on a rejection (the request is ended)."""
        if request.structured_output_request is None or not new_token_ids:
            return True
        return request.structured_output_request.grammar.accept_tokens(request.request_id, new_token_ids)

    def rollback(self, request: "Request", num_tokens: int) -> None:
        """Undo the last num_tokens a request's grammar accepted (drafts the verifier rejected).
        vLLM rolls back inside grammar_bitmask only; its accepted tokens are final
        (XgrammarGrammar.rollback, backend_xgrammar.py:310-313)."""
        if request.structured_output_request is not None and num_tokens > 0:
            request.structured_output_request.grammar.rollback(num_tokens)

    def jump_forward_tokens(self, request: "Request", max_new_tokens: int, num_rewritable: int = 0) -> JumpForward:
        """With --jump-forward: the grammar's forced continuation, retokenized with the output's last
        num_rewritable tokens (SGLang's earlier design), already accepted into the grammar."""
        so_request = request.structured_output_request
        if not self.jump_forward or so_request is None or self.encode is None or max_new_tokens <= 0:
            return JumpForward()
        if self.decode is None or not self.retokenize:
            jump = JumpForward(0, jump_forward_tokens(so_request.grammar, self.encode, max_new_tokens))
        else:
            jump = jump_forward_and_retokenize(so_request.grammar, request.output_token_ids, num_rewritable,
                                               self.decode, self.encode, max_new_tokens)
        so_request.num_jump_forward_tokens += jump.num_forced
        return jump

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def strip_speculative_padding(token_ids: list[int]) -> list[int]:
    """Mirrors: vllm.v1.structured_output.utils:strip_speculative_padding (vllm 0.33.0)
    The drafts before the first -1 placeholder."""
    for i, token_id in enumerate(token_ids):
        if token_id < 0:
            return token_ids[:i]
    return token_ids


def masked_fraction(row: torch.Tensor, vocab_size: int) -> float:
    """The fraction of the vocabulary a bitmask row forbids (a 0 bit is a masked token)."""
    bits = np.unpackbits(row.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return 1.0 - float(bits.sum()) / vocab_size
