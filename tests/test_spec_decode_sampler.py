"""The rejection sampler keeps the target distribution, and greedy verification is exact.

Synthetic draft / target distributions over a small vocabulary, many requests in one call: under
sampling, the first output token must be distributed as the target (chi-square, fixed seed), and
the second, given the first draft was accepted, as the target of the second position; this holds
for a draft model's distribution and for n-gram drafts (no distribution: p_draft(d) = 1). A planted
acceptance rule that ignores p_draft fails the same test.
"""
from __future__ import annotations

import pytest
import torch

from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.spec_decode import rejection_sampler as rs
from engine.spec_decode.rejection_sampler import PLACEHOLDER_TOKEN_ID, RejectionSampler, SpecDecodeMetadata

VOCAB = 8
TRIALS = 12000
# Reject at p < 1e-4: with the few draws below a correct sampler fails by chance about 1 in 10^4.
P_VALUE = 1e-4


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of counts against probs; the survival function of chi2(df)
    is the regularized upper incomplete gamma Q(df / 2, x / 2)."""
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was output"
    statistic = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), statistic.double() / 2))


def run_two_draft_trials(seed: int, with_draft_probs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRIALS requests, each with two drafts drawn from p_draft (or fixed n-gram drafts), verified
    against position-wise targets q1, q2 at temperature 1. Returns outputs, q1, q2, drafts."""
    generator = torch.Generator().manual_seed(seed)
    q_logits = torch.randn(2, VOCAB, generator=generator) * 1.5
    p = torch.softmax(torch.randn(2, VOCAB, generator=generator) * 1.5, dim=-1)
    if with_draft_probs:
        drafts = torch.stack([torch.multinomial(p[i], TRIALS, replacement=True, generator=generator) for i in range(2)], 1)
    else:
        drafts = torch.tensor([[3, 5]]).repeat(TRIALS, 1)
    metadata = SpecDecodeMetadata.from_drafts(drafts.tolist(), "cpu")
    logits = torch.empty(TRIALS * 3, VOCAB)
    logits[metadata.target_logits_indices] = q_logits.repeat(TRIALS, 1)
    logits[metadata.bonus_logits_indices] = 0.0
    draft_probs = p.repeat(TRIALS, 1) if with_draft_probs else None
    torch.manual_seed(seed)
    params = [SamplingParams(temperature=1.0)] * TRIALS
    out = RejectionSampler(Sampler())(metadata, draft_probs, logits, params, [None] * TRIALS)
    return out, torch.softmax(q_logits, dim=-1), drafts


def distribution_p_values(seed: int, with_draft_probs: bool) -> tuple[float, float]:
    out, q, drafts = run_two_draft_trials(seed, with_draft_probs)
    first = torch.bincount(out[:, 0], minlength=VOCAB).double()
    # A second token exists only where the first draft was accepted.
    accepted = out[:, 1] != PLACEHOLDER_TOKEN_ID
    assert bool((out[accepted, 0] == drafts[accepted, 0]).all())
    second = torch.bincount(out[accepted, 1], minlength=VOCAB).double()
    return chi_square_p_value(first, q[0]), chi_square_p_value(second, q[1])


@pytest.mark.parametrize("with_draft_probs", [True, False], ids=["draft-model-probs", "ngram"])
def test_sampling_through_drafts_keeps_the_target_distribution(with_draft_probs):
    first, second = distribution_p_values(seed=7, with_draft_probs=with_draft_probs)
    assert first > P_VALUE and second > P_VALUE, (first, second)


def test_a_planted_acceptance_rule_that_ignores_the_draft_probability_is_caught(monkeypatch):
    # Accepting with probability p_target(d) alone over-accepts tokens the draft over-proposes.
    monkeypatch.setattr(rs, "accepts", lambda target_prob, draft_prob, uniform_prob: target_prob >= uniform_prob)
    first, _ = distribution_p_values(seed=7, with_draft_probs=True)
    assert first < P_VALUE, first


def test_a_planted_recovery_from_the_target_instead_of_the_residual_is_caught(monkeypatch):
    # After a rejection the token must come from max(q - p, 0); sampling q again biases toward d.
    original = rs.sample_recovered_tokens
    monkeypatch.setattr(
        rs, "sample_recovered_tokens",
        lambda num_draft, drafts, draft_probs, target_probs, generators: original(
            num_draft, drafts, torch.zeros_like(target_probs), target_probs, generators),
    )
    first, _ = distribution_p_values(seed=7, with_draft_probs=True)
    assert first < P_VALUE, first


def greedy_verify(drafts: list[list[int]], argmax_rows: list[list[int]], bonus: list[int]) -> list[list[int]]:
    metadata = SpecDecodeMetadata.from_drafts(drafts, "cpu")
    logits = torch.zeros(sum(len(d) + 1 for d in drafts), VOCAB)
    for req, (targets, b) in enumerate(zip(argmax_rows, bonus)):
        rows = metadata.target_logits_indices[sum(len(d) for d in drafts[:req]):][: len(targets)].tolist()
        for row, token in zip(rows, targets):
            logits[row, token] = 1.0
        logits[metadata.bonus_logits_indices[req], b] = 1.0
    params = [SamplingParams(temperature=0.0)] * len(drafts)
    out = RejectionSampler(Sampler())(metadata, None, logits, params, [None] * len(drafts))
    assert out.shape == (len(drafts), max(len(d) for d in drafts) + 1)
    return RejectionSampler.parse_output(out)


def test_greedy_keeps_the_longest_agreeing_prefix_plus_one_token():
    drafts = [[1, 2, 3], [1, 2, 3], [4, 4], []]
    argmax = [[1, 2, 3], [1, 6, 3], [5, 4], []]
    assert greedy_verify(drafts, argmax, bonus=[7, 7, 7, 2]) == [
        [1, 2, 3, 7],  # all accepted: the bonus token follows
        [1, 6],  # first disagreement: the target's token, then stop
        [5],
        [2],  # no drafts: just the sampled token
    ]


def test_placeholders_pad_rows_and_parse_output_drops_them():
    out = torch.tensor([[3, PLACEHOLDER_TOKEN_ID, PLACEHOLDER_TOKEN_ID], [1, 2, 4]])
    assert RejectionSampler.parse_output(out) == [[3], [1, 2, 4]]
