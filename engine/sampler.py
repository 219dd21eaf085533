"""Logits -> token ids, with vLLM's sampling semantics.

Mirrors: vllm.v1.sample.sampler:Sampler (vllm 0.33.0)
Greedy rows take the argmax of the raw logits; the others are divided by their temperature, filtered by top-k then top-p, and sampled with the
exponential race (probs / Exp(1), then argmax), which vLLM uses instead of torch.multinomial.
A seeded request draws its noise from its own torch.Generator, so its tokens do not depend on
which other requests share the batch.
"""
from __future__ import annotations

import torch

from engine.sampling_params import SamplingParams

# vLLM treats temperatures below this as greedy (vllm.v1.sample.sampler._SAMPLING_EPS).
SAMPLING_EPS = 1e-5


class Sampler:
    def sample(
        self,
        logits: torch.Tensor,
        sampling_params: list[SamplingParams],
        generators: list[torch.Generator | None] | None = None,
    ) -> torch.Tensor:
        """logits [B, V] (float32) + one SamplingParams per row -> token ids [B] (int64).

        Mirrors: vllm.v1.sample.sampler:Sampler.forward (vllm 0.33.0) (without logprobs and penalties).

        generators[i] is row i's private RNG (None: the global RNG); the caller owns them so a
        seeded request keeps one generator across steps.
        """
        if logits.shape[0] != len(sampling_params):
            raise ValueError(f"{logits.shape[0]} rows of logits but {len(sampling_params)} SamplingParams")
        if generators is None:
            generators = [None] * len(sampling_params)
        logits = logits.float()
        greedy_rows = [p.temperature < SAMPLING_EPS for p in sampling_params]
        greedy_tokens = logits.argmax(dim=-1)
        if all(greedy_rows):
            return greedy_tokens

        device = logits.device
        # Greedy rows go through the random path with temperature 1 and are then overwritten.
        temperature = torch.tensor(
            [1.0 if greedy else p.temperature for p, greedy in zip(sampling_params, greedy_rows)],
            device=device,
        )
        logits = logits / temperature[:, None]
        vocab_size = logits.shape[-1]
        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in sampling_params]
        top_p = [p.top_p for p in sampling_params]
        logits = apply_top_k_top_p(
            logits,
            torch.tensor(top_k, device=device) if min(top_k) < vocab_size else None,
            torch.tensor(top_p, device=device) if min(top_p) < 1.0 else None,
        )
        random_tokens = random_sample(logits.softmax(dim=-1), generators)
        is_greedy = torch.tensor(greedy_rows, device=device)
        return torch.where(is_greedy, greedy_tokens, random_tokens)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask everything outside each row's top-k and top-p set with -inf.

    Mirrors: vllm.v1.sample.ops.topk_topp_sampler:apply_top_k_top_p_pytorch (vllm 0.33.0).
    """
    if top_k is None and top_p is None:
        return logits
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    if top_k is not None:
        kth_smallest_kept = logits_sort.gather(1, (logits_sort.shape[1] - top_k).unsqueeze(1))
        logits_sort.masked_fill_(logits_sort < kth_smallest_kept, -float("inf"))
    if top_p is not None:
        probs_sum = logits_sort.softmax(dim=-1).cumsum(dim=-1)
        top_p_mask = probs_sum <= 1 - top_p.unsqueeze(1)
        top_p_mask[:, -1] = False  # always keep the most likely token
        logits_sort.masked_fill_(top_p_mask, -float("inf"))
    return logits_sort.scatter(dim=-1, index=logits_idx, src=logits_sort)


def random_sample(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Mirrors: vllm.v1.sample.ops.topk_topp_sampler:random_sample (vllm 0.33.0); argmax(probs / q), q ~ Exp(1)."""
    q = torch.empty_like(probs)
    if any(g is None for g in generators):
        q.exponential_()
    for row, generator in enumerate(generators):
        if generator is not None:
            q[row].exponential_(generator=generator)
    return probs.div_(q).argmax(dim=-1)
