"""Integer helpers shared by the scheduler, the KV managers and the model runner."""
from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of size b hold a tokens.

    Mirrors: vllm.utils.math_utils:cdiv (vllm 0.33.0)
    """
    return -(a // -b)
