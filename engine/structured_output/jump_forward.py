"""Jump-forward decoding: where the grammar admits exactly one continuation, append it without
a forward pass per token.

SGLang's earlier design, read off the sglang 0.4.3.post2 wheel (pip download, not installed): its
Scheduler.update_running_batch called ScheduleBatch.check_for_jump_forward on every decode batch
(sglang/srt/managers/scheduler.py:1056-1062, schedule_batch.py:979-1030), which moved the jumped
requests back to the waiting queue to be extended (prefilled) over the appended tokens; the overlap
scheduler switched it off (scheduler.py:231-232). sgl-project/sglang#4032 (merged 2025-03-03)
removed it: the 0.4.3.post4 wheel has no check_for_jump_forward. SGLang 0.5.23's
grammar backends still carry the per-grammar half (XGrammarGrammar.try_jump_forward /
jump_forward_str_state / jump_and_retokenize, sglang/srt/constrained/xgrammar_backend.py:168-200)
but no scheduler path calls it. The jump string is the matcher's find_jump_forward_string, as in
try_jump_forward there.

Retokenization at the boundary: the jump string is tokenized on its own, and only the prefix the
grammar accepts token by token is appended (a string boundary inside a token the model would have
chosen stays a boundary). SGLang retokenized the whole output (decoded text + jump string) and
rolled the matcher back to the first differing token (jump_and_retokenize); ours never rewrites
tokens already streamed to the client, so the jump tokens may split text the model would have
merged: that is what makes outputs differ with jump-forward on (bench/structured_output.py counts it).
The appended tokens are computed in the next step as one chunk, like a prefill: one forward pass
for all of them, which SGLang got by sending the request back through prefill (extend).
"""
from __future__ import annotations

from typing import Callable

from engine.structured_output.backend_xgrammar import XgrammarGrammar


def jump_forward_tokens(grammar: XgrammarGrammar, encode: Callable[[str], list[int]], max_new_tokens: int) -> list[int]:
    """The tokens of the grammar's forced continuation (at most max_new_tokens), accepted into the grammar."""
    if grammar.is_terminated():
        return []
    text = grammar.find_jump_forward_string()
    if not text:
        return []
    candidates = encode(text)[:max_new_tokens]
    accepted = grammar.validate_tokens(candidates)
    if accepted and not grammar.accept_tokens("", accepted):
        raise AssertionError("a validated jump-forward token was rejected")
    return accepted
