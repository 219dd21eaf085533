"""The n-gram proposer proposes what vLLM's would: the tokens after the earliest earlier occurrence of
the longest suffix n-gram, min_n <= n <= max_n, at most k of them and never past max_model_len.

vLLM's own function is numba-compiled (vllm/v1/spec_decode/ngram_proposer.py:209-295
_find_longest_matched_ngram_and_propose_tokens); kmp_reference below is its loop line by line in
plain Python, and our numpy window search must agree with it on every context hypothesis draws.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import SpeculativeConfig
from engine.spec_decode.ngram_proposer import NgramProposer, find_longest_matched_ngram


def kmp_reference(origin: list[int], min_ngram: int, max_ngram: int, max_model_len: int, k: int) -> list[int]:
    total = len(origin)
    if total < min_ngram:
        return []
    k = min(k, max_model_len - total)
    if k <= 0:
        return []
    tokens = origin[::-1]
    lps = [0] * max_ngram
    longest_ngram = 0
    position = 0
    prev_lps = 0
    i = 1
    while i < total:
        if tokens[prev_lps] == tokens[i]:
            prev_lps += 1
            if prev_lps >= longest_ngram:
                longest_ngram = prev_lps
                position = i
            if i < max_ngram:
                lps[i] = prev_lps
            if prev_lps == max_ngram:
                prev_lps = lps[max_ngram - 1]
            i += 1
        elif prev_lps != 0:
            prev_lps = lps[prev_lps - 1]
        else:
            i += 1
    if longest_ngram < min_ngram:
        return []
    start_position = total - 1 - position + longest_ngram
    k = min(k, total - start_position)
    return origin[start_position: start_position + k]


@settings(max_examples=400, deadline=None)
@given(
    # A small alphabet makes repeats (and so matches of every length) common.
    tokens=st.lists(st.integers(0, 3), min_size=0, max_size=40),
    min_n=st.integers(1, 4),
    extra_n=st.integers(0, 3),
    k=st.integers(1, 6),
    slack=st.integers(0, 8),
)
def test_window_search_equals_vllms_kmp_scan(tokens, min_n, extra_n, k, slack):
    max_n = min_n + extra_n
    max_model_len = len(tokens) + slack
    ours = find_longest_matched_ngram(np.asarray(tokens, dtype=np.int64), min_n, max_n, max_model_len, k)
    assert ours == kmp_reference(tokens, min_n, max_n, max_model_len, k)


def test_a_planted_latest_occurrence_rule_is_caught():
    # "a b X ... a b Y ... a b": vLLM takes the earliest occurrence, so the draft starts with X.
    context = [1, 2, 7, 5, 1, 2, 8, 5, 1, 2]
    assert kmp_reference(context, 2, 2, 100, 1) == [7]
    assert find_longest_matched_ngram(np.asarray(context), 2, 2, 100, 1) == [7]


def test_the_longest_match_wins_over_an_earlier_shorter_one():
    context = [2, 9, 3, 1, 2, 6, 1, 2]  # "2" then 9 early; "1 2" then 6 later
    assert find_longest_matched_ngram(np.asarray(context), 1, 2, 100, 1) == [6]


def test_propose_skips_requests_that_sampled_nothing_or_reached_max_model_len():
    proposer = NgramProposer(SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=3), 12)
    copy = [5, 6, 7, 8, 9, 5, 6]
    drafts = proposer.propose(3, [[6], [], [6]], [copy, copy, copy + [1] * 5])
    assert drafts == [[7, 8, 9], [], []]
    # Near max_model_len the draft is cut so that the verified tokens still fit.
    assert proposer.propose(3, [[6]], [copy + [3, 5, 6]]) == [[7, 8]]


def test_config_defaults_and_errors_follow_vllm():
    assert (SpeculativeConfig().prompt_lookup_min, SpeculativeConfig().prompt_lookup_max) == (5, 5)
    assert SpeculativeConfig(prompt_lookup_max=3).prompt_lookup_min == 3
    assert SpeculativeConfig(prompt_lookup_min=2).prompt_lookup_max == 2
    for kwargs in ({"prompt_lookup_min": 4, "prompt_lookup_max": 2}, {"num_speculative_tokens": 0}, {"method": "eagle"}):
        try:
            SpeculativeConfig(**kwargs)
        except ValueError:
            continue
        raise AssertionError(f"{kwargs} was accepted")
