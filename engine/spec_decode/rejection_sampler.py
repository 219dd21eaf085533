"""Verify draft tokens against the target model's distributions.

Mirrors: vllm.v1.sample.rejection_sampler:RejectionSampler (vllm 0.33.0)
The rule of Leviathan et al. (arXiv 2211.17192) as vLLM applies it per request, in plain torch
instead of vLLM's Triton kernels (rejection_sampler.py:792-967 rejection_greedy_sample_kernel,
rejection_random_sample_kernel; :1070-1151 sample_recovered_tokens_kernel):
- greedy request: output the target argmax at each draft position while it equals the draft;
  the first disagreement outputs the argmax and stops; if every draft agrees, the bonus token
  (sampled from the last position's logits) is appended. So greedy output is unchanged.
- random request: draft token d at a position is accepted when p_target(d) / p_draft(d) >= u,
  u ~ U[0, 1) (float64); n-gram drafts have no distribution, p_draft(d) = 1. At the first
  rejection a recovered token is sampled from max(p_target - p_draft, 0) (for n-gram: p_target
  with d removed), by the exponential race with one Exp(1) row per request, and the request stops
  there; if all are accepted the bonus token is appended. The output is distributed as p_target.
Output rows are padded with PLACEHOLDER_TOKEN_ID; parse_output drops the padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampler import SAMPLING_EPS, apply_top_k_top_p
from engine.sampling_params import SamplingParams

PLACEHOLDER_TOKEN_ID = -1


@dataclass
class SpecDecodeMetadata:
    """Where each request's draft and bonus rows sit in the sampled logits.

    Mirrors: vllm.v1.spec_decode.metadata:SpecDecodeMetadata (vllm 0.33.0)
    """

    # [num_draft_tokens_total], the drafts of all requests in batch order.
    draft_token_ids: torch.Tensor
    num_draft_tokens: list[int]
    # Rows of the sampled logits: a request with n drafts has n target rows, then its bonus row.
    target_logits_indices: torch.Tensor
    bonus_logits_indices: torch.Tensor

    @property
    def max_spec_len(self) -> int:
        return max(self.num_draft_tokens, default=0)

    @classmethod
    def from_drafts(cls, drafts: list[list[int]], device: torch.device | str) -> "SpecDecodeMetadata":
        """Rows laid out as vLLM's _calc_spec_decode_metadata lays out logits_indices: per request,
        its n draft positions and then its bonus position, n + 1 consecutive rows.

        Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner._calc_spec_decode_metadata (vllm 0.33.0)
        """
        target, bonus, row = [], [], 0
        for draft in drafts:
            target.extend(range(row, row + len(draft)))
            row += len(draft)
            bonus.append(row)
            row += 1
        as_long = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        return cls(
            draft_token_ids=as_long([t for draft in drafts for t in draft]),
            num_draft_tokens=[len(d) for d in drafts],
            target_logits_indices=as_long(target),
            bonus_logits_indices=as_long(bonus),
        )


class RejectionSampler:
    def __init__(self, sampler) -> None:
        # The engine's Sampler draws the bonus tokens, with the requests' own parameters.
        self.sampler = sampler

    def forward(
        self,
        metadata: SpecDecodeMetadata,
        draft_probs: torch.Tensor | None,
        logits: torch.Tensor,
        sampling_params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:
        """logits [num_drafts + batch, V] in SpecDecodeMetadata's row order -> [batch, max_spec_len + 1]
        token ids, PLACEHOLDER_TOKEN_ID past each request's last output token.

        Mirrors: vllm.v1.sample.rejection_sampler:RejectionSampler.forward (vllm 0.33.0)
        The bonus tokens are drawn first, then the uniforms, then the recovered tokens' noise,
        the order vLLM consumes a seeded request's generator in.
        """
        bonus_token_ids = self.sampler.sample(logits[metadata.bonus_logits_indices], sampling_params, generators)
        target_logits = logits[metadata.target_logits_indices].float()
        target_logits = apply_sampling_constraints(target_logits, metadata.num_draft_tokens, sampling_params)
        return rejection_sample(
            metadata.draft_token_ids, metadata.num_draft_tokens, draft_probs, target_logits, bonus_token_ids,
            sampling_params, generators,
        )

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        # Through the attribute, so a wrapper put on forward (the tracer's hook) sees every call.
        return self.forward(*args, **kwargs)

    @staticmethod
    def parse_output(output_token_ids: torch.Tensor) -> list[list[int]]:
        """Mirrors: vllm.v1.sample.rejection_sampler:RejectionSampler.parse_output (vllm 0.33.0)"""
        return [[t for t in row if t != PLACEHOLDER_TOKEN_ID] for row in output_token_ids.tolist()]


def apply_sampling_constraints(
    logits: torch.Tensor, num_draft_tokens: list[int], sampling_params: list[SamplingParams]
) -> torch.Tensor:
    """Temperature, then top-k / top-p, per draft row with its request's parameters; greedy rows
    get temperature 1 (their argmax is all that is read).

    Mirrors: vllm.v1.sample.rejection_sampler:apply_sampling_constraints (vllm 0.33.0)
    """
    if all(p.temperature < SAMPLING_EPS for p in sampling_params):
        return logits
    repeat = lambda values: torch.tensor(  # noqa: E731
        [v for v, n in zip(values, num_draft_tokens) for _ in range(n)], device=logits.device
    )
    temperature = repeat([1.0 if p.temperature < SAMPLING_EPS else p.temperature for p in sampling_params])
    logits = logits / temperature.unsqueeze(-1)
    vocab_size = logits.shape[-1]
    top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in sampling_params]
    top_p = [p.top_p for p in sampling_params]
    return apply_top_k_top_p(
        logits,
        repeat(top_k) if min(top_k) < vocab_size else None,
        repeat(top_p) if min(top_p) < 1.0 else None,
    )


def rejection_sample(
    draft_token_ids: torch.Tensor,
    num_draft_tokens: list[int],
    draft_probs: torch.Tensor | None,
    target_logits: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    sampling_params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """Mirrors: vllm.v1.sample.rejection_sampler:rejection_sample (vllm 0.33.0)"""
    batch_size = len(num_draft_tokens)
    max_spec_len = max(num_draft_tokens, default=0)
    device = target_logits.device
    output = torch.full((batch_size, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.long, device=device)
    is_greedy = [p.temperature < SAMPLING_EPS for p in sampling_params]
    cu = [0]
    for n in num_draft_tokens:
        cu.append(cu[-1] + n)
    drafts = draft_token_ids.tolist()
    bonus = bonus_token_ids.tolist()

    if any(is_greedy):
        target_argmax = target_logits.argmax(dim=-1).tolist()
        for req, start in enumerate(cu[:-1]):
            if is_greedy[req]:
                _accept_greedy(output[req], drafts[start: cu[req + 1]], target_argmax[start: cu[req + 1]], bonus[req])
        if all(is_greedy):
            return output

    uniform_probs = generate_uniform_probs(cu[-1], num_draft_tokens, generators, device).tolist()
    target_probs = target_logits.softmax(dim=-1, dtype=torch.float32)
    recovered = sample_recovered_tokens(num_draft_tokens, draft_token_ids, draft_probs, target_probs, generators)
    positions = torch.arange(cu[-1], device=device)
    draft_index = draft_token_ids.clamp_min(0)  # placeholders read token 0's (unused) probability
    target_prob_of_draft = target_probs[positions, draft_index].tolist()
    draft_prob_of_draft = [1.0] * cu[-1] if draft_probs is None else draft_probs[positions, draft_index].tolist()
    for req, start in enumerate(cu[:-1]):
        if is_greedy[req]:
            continue
        tokens = []
        for pos in range(start, cu[req + 1]):
            # A placeholder draft (vLLM's padding, -1) is rejected without a look at its probability.
            if drafts[pos] < 0 or not accepts(target_prob_of_draft[pos], draft_prob_of_draft[pos], uniform_probs[pos]):
                tokens.append(recovered[pos])
                break
            tokens.append(drafts[pos])
        else:
            tokens.append(bonus[req])
        output[req, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return output


def accepts(target_prob: float, draft_prob: float, uniform_prob: float) -> bool:
    """A sampled draft token stays when p_target / p_draft >= u (vLLM rejects where p_draft is 0,
    which would only give NaNs).

    Mirrors: vllm.v1.sample.rejection_sampler:rejection_random_sample_kernel (vllm 0.33.0)
    """
    return draft_prob > 0 and target_prob / draft_prob >= uniform_prob


def _accept_greedy(row: torch.Tensor, drafts: list[int], target_argmax: list[int], bonus: int) -> None:
    # Mirrors: vllm.v1.sample.rejection_sampler:rejection_greedy_sample_kernel (vllm 0.33.0)
    tokens = []
    for draft, target in zip(drafts, target_argmax):
        tokens.append(target)
        if draft != target:
            break
    else:
        tokens.append(bonus)
    row[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)


def generate_uniform_probs(
    num_tokens: int, num_draft_tokens: list[int], generators: list[torch.Generator | None], device: torch.device
) -> torch.Tensor:
    """One U[0, 1) per draft token, float64 (float32 draws exact zeros too often); a seeded
    request's come from its generator, and a request without drafts draws none.

    Mirrors: vllm.v1.sample.rejection_sampler:generate_uniform_probs (vllm 0.33.0)
    """
    uniform_probs = torch.rand((num_tokens,), dtype=torch.float64, device=device)
    start = 0
    for n, generator in zip(num_draft_tokens, generators):
        if n == 0:
            continue
        if generator is not None:
            uniform_probs[start: start + n].uniform_(generator=generator)
        start += n
    return uniform_probs


def sample_recovered_tokens(
    num_draft_tokens: list[int],
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generators: list[torch.Generator | None],
) -> list[int]:
    """For every draft position, the token to output if the draft is rejected there.

    Mirrors: vllm.v1.sample.rejection_sampler:sample_recovered_tokens (vllm 0.33.0)
    argmax(residual / q) with q ~ Exp(1) samples the residual distribution without normalising it;
    one q row per request serves all of its positions (only one of them is ever used).
    """
    batch_size = len(num_draft_tokens)
    q = torch.empty((batch_size, target_probs.shape[-1]), dtype=torch.float32, device=target_probs.device)
    q.exponential_()
    for req, generator in enumerate(generators):
        if generator is not None and num_draft_tokens[req] > 0:
            q[req].exponential_(generator=generator)
    inv_q = q.reciprocal()
    rows = torch.repeat_interleave(torch.arange(batch_size, device=q.device), torch.tensor(num_draft_tokens, device=q.device))
    if draft_probs is None:
        # p_draft is a point mass on the draft: the residual is p_target without it (a placeholder
        # draft removes nothing).
        residual = target_probs.clone()
        real = draft_token_ids >= 0
        residual[torch.arange(residual.shape[0], device=q.device)[real], draft_token_ids[real]] = 0.0
    else:
        residual = (target_probs - draft_probs).clamp_min(0.0)
    return (residual * inv_q[rows]).argmax(dim=-1).tolist()
