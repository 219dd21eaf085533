"""Fixtures shared across the suite: the bundled model and transformers as the correctness oracle."""
from __future__ import annotations

import os

from engine.omp_env import use_passive_omp_wait

use_passive_omp_wait()  # before torch loads (a test client thread runs beside the engine thread)
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
# Without a GPU, Triton kernels can only run in Triton's interpreter, and it must be chosen before
# anything (torch, vLLM) first imports triton: otherwise a later @triton.jit call fails.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def bundled_gguf() -> str:
    from engine.loader import bundled_model_path

    return bundled_model_path()


@pytest.fixture(scope="session")
def hf_oracle(bundled_gguf):
    """transformers' own load of the same GGUF (dequantized to float32): the reference model."""
    import transformers

    directory, name = os.path.split(bundled_gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.eval()


# Greedy continuations already computed this session: several modules ask for the same prompts.
_ORACLE_CACHE: dict[tuple, list[int]] = {}


def oracle_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation (stops at EOS like our engine does)."""
    key = (id(model), tuple(prompt_ids), max_new_tokens)
    if key not in _ORACLE_CACHE:
        _ORACLE_CACHE[key] = _oracle_greedy(model, prompt_ids, max_new_tokens)
    return list(_ORACLE_CACHE[key])


def _oracle_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=model.generation_config.eos_token_id,
        )
    return out[0, len(prompt_ids):].tolist()
