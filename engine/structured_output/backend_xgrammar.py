"""xgrammar as the grammar engine: tokenizer info, compile, and the per-request matcher.

Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarBackend, vllm.v1.structured_output.backend_xgrammar:XgrammarGrammar (vllm 0.33.0)
vLLM builds one GrammarCompiler over the tokenizer with its special tokens filtered out (JSON must
not emit them, backend_xgrammar.py:74-82, 226-244) and a GrammarMatcher per request
(backend_xgrammar.py:198-206) with max_rollback_tokens = num_speculative_tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
import xgrammar as xgr

from engine.structured_output.params import StructuredOutputOptions, choice_as_grammar


class XgrammarBackend:
    def __init__(self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: list[int] | None = None,
                 max_rollback_tokens: int = 0) -> None:
        # Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarBackend.__post_init__ (vllm 0.33.0)
        self.vocab_size = vocab_size
        full = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self.tokenizer_info = _filter_special_tokens(hf_tokenizer, full)
        # xgrammar's own compiled-grammar cache stays on (vLLM: cache_enabled=True); the manager
        # keeps the per-key Future above it so a hit is visible and a concurrent twin waits on one compile.
        self.compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=8, cache_enabled=True)
        # num_speculative_tokens, as vLLM passes it (backend_xgrammar.py:199-203); xgrammar 0.2.8 rolls back without limit.
        self.max_rollback_tokens = max_rollback_tokens

    def compile(self, kind: StructuredOutputOptions, spec: str, disable_any_whitespace: bool = False) -> xgr.CompiledGrammar:
        """Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarBackend.compile_grammar (vllm 0.33.0)
        The compiled grammar only: it is what the cache shares; each request gets its own matcher."""
        separators = (",", ":") if disable_any_whitespace else None
        if kind == StructuredOutputOptions.JSON:
            return self.compiler.compile_json_schema(spec, any_whitespace=not disable_any_whitespace, separators=separators)
        if kind == StructuredOutputOptions.JSON_OBJECT:
            return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=not disable_any_whitespace,
                                                     separators=separators)
        if kind == StructuredOutputOptions.GRAMMAR:
            return self.compiler.compile_grammar(spec)
        if kind == StructuredOutputOptions.REGEX:
            return self.compiler.compile_regex(spec)
        if kind == StructuredOutputOptions.CHOICE:
            return self.compiler.compile_grammar(choice_as_grammar(json.loads(spec)))
        raise ValueError(f"unsupported structured output kind {kind}")

    def new_grammar(self, ctx: xgr.CompiledGrammar) -> "XgrammarGrammar":
        matcher = xgr.GrammarMatcher(ctx, max_rollback_tokens=self.max_rollback_tokens)
        return XgrammarGrammar(matcher=matcher, vocab_size=self.vocab_size, ctx=ctx)

    def allocate_token_bitmask(self, max_num_seqs: int) -> torch.Tensor:
        # Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarBackend.allocate_token_bitmask (vllm 0.33.0)
        return xgr.allocate_token_bitmask(max_num_seqs, self.vocab_size)


def _filter_special_tokens(tokenizer: Any, tokenizer_info: xgr.TokenizerInfo) -> xgr.TokenizerInfo:
    """Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarBackend._filter_special_tokens (vllm 0.33.0)"""
    special = {tid for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    encoded_vocab = [""] * tokenizer_info.vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < len(encoded_vocab) and token_id not in special:
            encoded_vocab[token_id] = token
    return xgr.TokenizerInfo.from_vocab_and_metadata(encoded_vocab, tokenizer_info.dump_metadata())


@dataclass
class XgrammarGrammar:
    """Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarGrammar (vllm 0.33.0)"""

    matcher: xgr.GrammarMatcher = field(repr=False)
    vocab_size: int
    ctx: xgr.CompiledGrammar = field(repr=False)
    num_processed_tokens: int = 0
    _is_terminated: bool = False

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        """Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarGrammar.accept_tokens (vllm 0.33.0)
        False if a token is rejected; tokens after termination are ignored."""
        if self._is_terminated:
            return True
        for token in tokens:
            if not self.matcher.accept_token(token):
                return False
            self.num_processed_tokens += 1
            self._is_terminated = self.matcher.is_terminated()
            if self._is_terminated:
                break
        return True

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        """Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarGrammar.validate_tokens (vllm 0.33.0)
        The prefix of tokens the grammar accepts, without advancing it (a draft's check)."""
        if self._is_terminated:
            return []
        accepted: list[int] = []
        for token in tokens:
            if not self.matcher.accept_token(token):
                break
            accepted.append(token)
            if self.matcher.is_terminated():
                break
        if accepted:
            self.matcher.rollback(len(accepted))
        return accepted

    def rollback(self, num_tokens: int) -> None:
        """Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarGrammar.rollback (vllm 0.33.0)
        Undo the last num_tokens accepted (speculative decoding's rejected drafts)."""
        self.matcher.rollback(num_tokens)
        self.num_processed_tokens -= num_tokens
        self._is_terminated = self.matcher.is_terminated()

    def fill_bitmask(self, bitmask: torch.Tensor, idx: int) -> None:
        # Mirrors: vllm.v1.structured_output.backend_xgrammar:XgrammarGrammar.fill_bitmask (vllm 0.33.0)
        self.matcher.fill_next_token_bitmask(bitmask, idx)

    def is_terminated(self) -> bool:
        return self._is_terminated

    def is_complete(self) -> bool:
        """Ours: the output so far is a whole sentence of the grammar (stop token or not)."""
        return self._is_terminated or self.matcher.is_completed()

    def find_jump_forward_string(self) -> str:
        """The longest string every continuation starts with (SGLang's XGrammarGrammar.try_jump_forward reads it)."""
        return self.matcher.find_jump_forward_string()
