"""Prompt-lookup drafts: find the request's last n tokens earlier in its own context, propose what followed.

Mirrors: vllm.v1.spec_decode.ngram_proposer:NgramProposer (vllm 0.33.0)
vLLM finds the match with a KMP scan over the reversed context, compiled with numba
(ngram_proposer.py:209-295 _find_longest_matched_ngram_and_propose_tokens). Its result is: the
longest n in [prompt_lookup_min, prompt_lookup_max] for which the context's last n tokens occur
earlier (ending before the last token), taken at its earliest occurrence; the draft is the up to k
tokens after that occurrence. find_longest_matched_ngram computes the same with numpy window
comparisons (no numba here); tests/test_spec_decode_ngram.py checks it against a line-by-line
port of the KMP scan.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine.config import SpeculativeConfig


class NgramProposer:
    def __init__(self, speculative_config: SpeculativeConfig, max_model_len: int) -> None:
        self.min_n = speculative_config.prompt_lookup_min
        self.max_n = speculative_config.prompt_lookup_max
        self.k = speculative_config.num_speculative_tokens
        self.max_model_len = max_model_len

    def propose(
        self, num_speculative_tokens: int, sampled_token_ids: list[list[int]], token_ids: list[list[int]]
    ) -> list[list[int]]:
        """Drafts for each request of the batch: token_ids[i] is request i's whole context
        (prompt, outputs and the tokens sampled this step). A request that sampled nothing this
        step (a prefill chunk) or has reached max_model_len gets no draft.

        Mirrors: vllm.v1.spec_decode.ngram_proposer:NgramProposer.propose (vllm 0.33.0)
        """
        assert num_speculative_tokens <= self.k
        drafts: list[list[int]] = []
        for sampled, context in zip(sampled_token_ids, token_ids, strict=True):
            if not sampled or len(context) >= self.max_model_len:
                drafts.append([])
                continue
            drafts.append(
                find_longest_matched_ngram(
                    np.asarray(context, dtype=np.int64), self.min_n, self.max_n, self.max_model_len,
                    num_speculative_tokens,
                )
            )
        return drafts


def find_longest_matched_ngram(tokens: np.ndarray, min_n: int, max_n: int, max_model_len: int, k: int) -> list[int]:
    """The tokens after the earliest earlier occurrence of the longest suffix n-gram (min_n <= n <= max_n).

    Mirrors: vllm.v1.spec_decode.ngram_proposer:_find_longest_matched_ngram_and_propose_tokens (vllm 0.33.0)
    Speed trick: instead of vLLM's KMP loop (Python-slow without numba), compare all windows of
    the context with the suffix at once, longest n first; the first n with a hit is the longest.
    """
    total = tokens.shape[0]
    if total < min_n:
        return []
    k = min(k, max_model_len - total)
    if k <= 0:
        return []
    # Windows must end before the last token (vLLM's scan starts at reversed index 1).
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        windows = sliding_window_view(tokens[: total - 1], n)
        hits = np.flatnonzero((windows == tokens[total - n:]).all(axis=1))
        if hits.size:
            start = int(hits[0]) + n
            return tokens[start: start + k].tolist()
    return []
