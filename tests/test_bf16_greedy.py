"""bfloat16, the default on CPUs with native bf16: our greedy output against transformers in bfloat16.

Token equality is a float32 promise (tests/test_engine.py, tests/test_model.py). In bfloat16 two
implementations round differently, so where the top two logits are nearly tied they may pick
different tokens. The promise here: equal on most prompts, and each divergence happens at a near-tie
(the two tokens within NEAR_TIE logits of each other in the float32 reference, and in transformers' own
bfloat16 logits), never at a clear winner, which is what a real bfloat16 bug (a wrongly rounded
RoPE table, attention computed on the wrong context) produces.
"""
from __future__ import annotations

import copy

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.conftest import oracle_greedy

MAX_TOKENS = 16
# Logits of this model span about 30; bfloat16 keeps 8 bits of mantissa, so rounding moves a logit
# by a few tenths. A divergence further apart than this is not a near-tie.
NEAR_TIE = 0.75
PROMPTS = [
    "The capital of France is",
    "Question: How long should I boil an egg?\nAnswer:",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "Q: What is 12 times 7?\nA:",
    "List three colours of the rainbow and explain why the sky is blue in one sentence.",
    "Write a haiku about the sea.",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. Again:",
]


@pytest.fixture(scope="module")
def hf_bf16(hf_oracle):
    """transformers in bfloat16 as from_pretrained(dtype=bfloat16) builds it: the float32 oracle's
    weights cast (a copy: a second GGUF load costs about a minute here), the RoPE inverse
    frequencies kept float32 as from_pretrained keeps them (.to() would round them to bf16, which
    moves late positions' angles by tenths of a radian and makes a worse reference)."""
    model = copy.deepcopy(hf_oracle).to(torch.bfloat16).eval()
    for cast, original in zip(model.modules(), hf_oracle.modules(), strict=True):
        if isinstance(getattr(original, "inv_freq", None), torch.Tensor):
            cast.inv_freq = original.inv_freq.clone()
            if hasattr(original, "original_inv_freq"):
                cast.original_inv_freq = original.original_inv_freq.clone()
    return model


@pytest.fixture(scope="module")
def engine_bf16() -> LLMEngine:
    return LLMEngine(EngineConfig(
        model=ModelConfig(dtype="bfloat16"),
        cache=CacheConfig(block_size=16, num_blocks=96),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=256),
    ))


def logit_gap(model, ids: list[int], a: int, b: int) -> tuple[float, float]:
    """(logit[a] - logit[b], top-1 minus top-2) of model's next-token logits after ids."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    top2 = logits.topk(2).values
    return (logits[a] - logits[b]).item(), (top2[0] - top2[1]).item()


def test_bf16_greedy_equals_transformers_bf16_on_most_prompts_and_diverges_only_at_near_ties(
    engine_bf16, hf_bf16, hf_oracle
):
    assert engine_bf16.model_runner.dtype == torch.bfloat16
    prompt_ids = [engine_bf16.render(p) for p in PROMPTS]
    # All prompts in one batch: bfloat16 batched decode over the paged cache, as served.
    ours = [out.output_token_ids for out in engine_bf16.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))]
    theirs = [oracle_greedy(hf_bf16, ids, MAX_TOKENS) for ids in prompt_ids]
    divergences = []
    for prompt, ids, mine, ref in zip(PROMPTS, prompt_ids, ours, theirs):
        at = next((i for i, (x, y) in enumerate(zip(mine, ref)) if x != y), None)
        if at is None:
            assert len(mine) == len(ref), f"{prompt!r}: one side stopped early without a differing token"
            continue
        context = ids + ref[:at]
        gap_bf16, top2_bf16 = logit_gap(hf_bf16, context, ref[at], mine[at])
        gap_fp32, top2_fp32 = logit_gap(hf_oracle, context, ref[at], mine[at])
        divergences.append((prompt, at, mine[at], ref[at], gap_bf16, top2_bf16, gap_fp32, top2_fp32))
    for prompt, at, mine, ref, gap_bf16, top2_bf16, gap_fp32, top2_fp32 in divergences:
        print(f"diverges at token {at} of {prompt[:40]!r}: ours {mine}, transformers bf16 {ref}; "
              f"|logit gap| between them: bf16 {abs(gap_bf16):.3f} (top-2 gap {top2_bf16:.3f}), "
              f"fp32 {abs(gap_fp32):.3f} (top-2 gap {top2_fp32:.3f})")
    assert len(divergences) <= len(PROMPTS) // 4, f"{len(divergences)} of {len(PROMPTS)} prompts diverge"
    for prompt, at, mine, ref, gap_bf16, _, gap_fp32, _ in divergences:
        assert abs(gap_fp32) < NEAR_TIE and abs(gap_bf16) < NEAR_TIE, (
            f"{prompt!r} diverges at token {at} ({mine} vs {ref}) where the logits are "
            f"{abs(gap_fp32):.2f} (fp32) / {abs(gap_bf16):.2f} (bf16) apart: not a near-tie"
        )
