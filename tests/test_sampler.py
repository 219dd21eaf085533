"""The sampler, on its own: vLLM's semantics (greedy below a tiny temperature, top-k, then
top-p, per-request seeded generators that make a request's draws independent of its batch)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sampler import Sampler
from engine.sampling_params import SamplingParams


def _logits(batch: int, vocab: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _draw_seeded(seed: int, row_logits: torch.Tensor, others: int, row: int, steps: int = 12) -> list[int]:
    """Sample one seeded request `steps` times while it shares the batch with `others` unseeded rows."""
    sampler = Sampler()
    generator = torch.Generator().manual_seed(seed)
    tokens = []
    for step in range(steps):
        logits = _logits(others + 1, seed=100 + step)
        logits[row] = row_logits
        params = [SamplingParams(temperature=1.0) for _ in range(others + 1)]
        params[row] = SamplingParams(temperature=0.8, top_p=0.95, seed=seed)
        generators = [None] * (others + 1)
        generators[row] = generator
        tokens.append(sampler.sample(logits, params, generators)[row].item())
    return tokens


def test_seeded_sampling_is_reproducible_regardless_of_batch():
    row_logits = _logits(1, seed=7)[0]
    alone = _draw_seeded(1234, row_logits, others=0, row=0)
    assert _draw_seeded(1234, row_logits, others=5, row=3) == alone
    assert _draw_seeded(1234, row_logits, others=2, row=0) == alone
    assert _draw_seeded(4321, row_logits, others=0, row=0) != alone


def test_top_k_one_and_tiny_top_p_equal_greedy():
    logits = _logits(6)
    greedy = Sampler().sample(logits, [SamplingParams(temperature=0.0)] * 6)
    assert torch.equal(greedy, logits.argmax(-1))
    top_k_1 = Sampler().sample(logits, [SamplingParams(temperature=1.5, top_k=1)] * 6)
    tiny_top_p = Sampler().sample(logits, [SamplingParams(temperature=1.5, top_p=1e-6)] * 6)
    assert torch.equal(top_k_1, greedy)
    assert torch.equal(tiny_top_p, greedy)


def test_greedy_and_random_rows_mix_in_one_batch():
    logits = _logits(4)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0, top_k=3)]
    tokens = Sampler().sample(logits, params)
    assert tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()
    assert tokens[3] in logits[3].topk(3).indices


@settings(max_examples=30, deadline=None)
@given(top_k=st.integers(1, 50), top_p=st.floats(0.05, 1.0), seed=st.integers(0, 10**6))
def test_sampled_token_lies_inside_the_top_k_and_top_p_set(top_k, top_p, seed):
    logits = _logits(1, vocab=200, seed=seed)[0]
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
    generator = torch.Generator().manual_seed(seed)
    token = Sampler().sample(logits[None], [params], [generator]).item()
    order = logits.argsort(descending=True)
    rank = (order == token).nonzero().item()
    assert rank < top_k
    # Tokens ranked before it (within top-k) must not already cover top_p of the top-k mass.
    kept = logits[order[:top_k]].softmax(-1)
    assert kept[:rank].sum().item() < top_p + 1e-6
