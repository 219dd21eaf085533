"""Incremental detokenization: the detokenize hop.

Mirrors: vllm.v1.engine.detokenizer:FastIncrementalDetokenizer (vllm 0.33.0)
Tokens arrive one step at a time; text is emitted only once it is valid UTF-8 (a multi-byte character split across
tokens is held back), and stop strings are found here, as vLLM finds them in the API
server's detokenizer and then aborts the request in the engine.
"""
from __future__ import annotations

from bisect import bisect_left

from tokenizers.decoders import DecodeStream

from engine.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None) -> None:
        self._tokenizer = tokenizer.hf.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self.stop = [s for s in (stop or []) if s]
        self.output_text = ""
        self.stop_string: str | None = None
        # Of the last update's tokens, how many to keep: those past the one completing a stop
        # string are dropped (several arrive in one step with speculation).
        self.num_kept = 0
        self._emitted = 0

    def update(self, new_token_ids: list[int]) -> str:
        """Feed new tokens; return the newly finalized text (possibly empty).

        When a stop string appears, the text is cut before it, stop_string is set, and
        nothing more is emitted.
        """
        # Mirrors: vllm.v1.engine.detokenizer:BaseIncrementalDetokenizer.update, vllm.v1.engine.detokenizer:check_stop_strings (vllm 0.33.0)
        if self.stop_string is not None:
            self.num_kept = 0
            return ""
        self.num_kept = len(new_token_ids)
        token_offsets = [len(self.output_text)]  # the text's length after each new token
        for token_id in new_token_ids:
            piece = self._stream.step(self._tokenizer, token_id)
            if piece:
                self.output_text += piece
            token_offsets.append(len(self.output_text))
        hold_back = 0
        if self.stop:
            cut = self._find_stop()
            if cut is not None:
                # vLLM drops the tokens generated after the one completing the stop string
                # (vllm/v1/engine/detokenizer.py:143-151 BaseIncrementalDetokenizer.update).
                self.num_kept = bisect_left(token_offsets, cut + len(self.stop_string), lo=1)
                self.output_text = self.output_text[:cut]
            else:
                # A stop string may be forming at the end: hold back its possible prefix.
                hold_back = max(len(s) - 1 for s in self.stop)
        end = max(self._emitted, len(self.output_text) - hold_back) if self.stop_string is None else len(self.output_text)
        delta = self.output_text[self._emitted:end]
        self._emitted = end
        return delta

    def flush(self) -> str:
        """The text held back for a possible stop string, once the request has finished."""
        delta = self.output_text[self._emitted:]
        self._emitted = len(self.output_text)
        return delta

    def _find_stop(self) -> int | None:
        # Search only the tail that could contain a new match.
        start = max(0, self._emitted - max(len(s) for s in self.stop))
        best: int | None = None
        for s in self.stop:
            idx = self.output_text.find(s, start)
            if idx != -1 and (best is None or idx < best):
                best, self.stop_string = idx, s
        return best
