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

Retokenization at the boundary, as SGLang 0.4.3.post2 did it (Req.jump_forward_and_retokenize,
schedule_batch.py:461-519 in that wheel; XGrammarGrammar.jump_and_retokenize,
constrained/xgrammar_backend.py:64-79 there): the text generated so far plus the jump string is
decoded and tokenized again, the output keeps the tokens up to the first that changed, the
grammar is rolled back to there and advanced over the new ones. SGLang tokenized prompt + output +
string (and gave up where the prompt's last token fused with the output) and re-prefilled the
request over whatever changed; ours retokenizes the output alone and rewrites only tokens that are
neither computed nor streamed yet (the step's sampled tokens): where the retokenization would
change an earlier token, only the step's tokens and the string are retokenized. So a forced `name"`
after a sampled `"` becomes the one token the model would have chosen for `"name`, where tokenizing
the string alone split it (what made 9 of 20 bench outputs differ from jump-forward off).
The appended tokens are computed in the next step as one chunk, like a prefill: one forward pass
for all of them, which SGLang got by sending the request back through prefill (extend).
"""
from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class JumpForward:
    """A jump: drop the last num_replaced output tokens (this step's, never computed or sent), append token_ids."""

    num_replaced: int = 0
    token_ids: list[int] = field(default_factory=list)

    @property
    def num_forced(self) -> int:
        """Tokens the jump added beyond those replaced (appended without a forward pass each)."""
        return len(self.token_ids) - self.num_replaced


def jump_forward_and_retokenize(
    grammar: XgrammarGrammar, output_token_ids: list[int], num_rewritable: int,
    decode: Callable[[list[int]], str], encode: Callable[[str], list[int]], max_new_tokens: int,
) -> JumpForward:
    """Mirrors: sglang.srt.managers.schedule_batch:Req.jump_forward_and_retokenize (sglang 0.4.3.post2, read off its wheel)
    The last num_rewritable output tokens may be replaced; the output grows by at most max_new_tokens."""
    if grammar.is_terminated() or not output_token_ids:
        return JumpForward()
    text = grammar.find_jump_forward_string()
    if not text:
        return JumpForward()
    old = output_token_ids
    floor = len(old) - num_rewritable
    all_ids = encode(decode(old) + text)
    if all_ids[:floor] != old[:floor]:
        # The retokenization reaches into tokens already computed or streamed: keep them.
        all_ids = old[:floor] + encode(decode(old[floor:]) + text)
    k = floor
    while k < len(old) and k < len(all_ids) and all_ids[k] == old[k]:
        k += 1
    new_ids = all_ids[k: len(old) + max_new_tokens]
    # The rewritten output must still hold the text generated so far (a truncated tail may not).
    if len(new_ids) < len(old) - k or not decode(old[:k] + new_ids).startswith(decode(old)):
        return JumpForward(0, jump_forward_tokens(grammar, encode, max_new_tokens))
    # Mirrors: sglang.srt.constrained.xgrammar_backend:XGrammarGrammar.jump_and_retokenize (sglang 0.4.3.post2, read off its wheel)
    if len(old) > k:
        grammar.rollback(len(old) - k)
    if len(grammar.validate_tokens(new_ids)) < len(new_ids):  # a tokenization the grammar refuses: keep the old one
        if not grammar.accept_tokens("", old[k:]):
            raise AssertionError("the grammar refused tokens it had accepted")
        return JumpForward(0, jump_forward_tokens(grammar, encode, max_new_tokens))
    if not grammar.accept_tokens("", new_ids):
        raise AssertionError("a validated retokenized token was rejected")
    return JumpForward(len(old) - k, new_ids)
