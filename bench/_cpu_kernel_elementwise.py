"""bench/cpu_kernels.py's rows for the elementwise passes: RMSNorm, SiLU-and-mul, rotary, and rotary +
KV write (and the residual add + RMSNorm), each the chosen form vs the plain alternative."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from _model_shape import BLOCK, HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS


def rms_norm_case(batch: int) -> tuple[str, Callable, Callable, int]:
    x, weight = torch.randn(batch, HIDDEN).bfloat16(), torch.randn(HIDDEN).bfloat16()

    def four_ops():
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    return ("RMSNorm (bf16): F.rms_norm vs 4 ops", lambda: weight * F.rms_norm(x.float(), (HIDDEN,), eps=1e-5).to(x.dtype),
            four_ops, 1000)


def elementwise_cases(batch: int) -> list[tuple[str, Callable, Callable, int]]:
    """engine/cpu_elementwise.py's bf16 C passes vs the torch ops they replace, at a decode step and a prefill chunk."""
    from engine import cpu_elementwise

    rows = []
    weight = (torch.randn(HIDDEN) * 0.2 + 1).bfloat16()
    for tokens, calls in ((batch, 1000), (2048, 20)):
        x = torch.randn(tokens, HIDDEN).bfloat16()
        gate_up = torch.randn(tokens, 2 * INTERMEDIATE).bfloat16()
        rows.append((f"RMSNorm (bf16): C vs F.rms_norm + casts + weight, {tokens} rows",
                     lambda x=x: cpu_elementwise.rms_norm(x, weight, 1e-5),
                     lambda x=x: weight * F.rms_norm(x.float(), (HIDDEN,), eps=1e-5).to(x.dtype), calls))
        rows.append((f"SiLU-and-mul (bf16): C vs F.silu(gate) * up, {tokens} rows",
                     lambda g=gate_up: cpu_elementwise.silu_and_mul(g),
                     lambda g=gate_up: F.silu(g[:, :INTERMEDIATE]) * g[:, INTERMEDIATE:], calls))
    # The residual grows by x on every call (in place), in both forms alike: the same work each time.
    x, residual = torch.randn(batch, HIDDEN).bfloat16() * 1e-3, torch.randn(batch, HIDDEN).bfloat16()
    rows.append((f"residual add + RMSNorm (bf16), {batch} rows: one C pass vs the add + the C RMSNorm",
                 lambda: cpu_elementwise.add_rms_norm(x, residual, weight, 1e-5),
                 lambda: cpu_elementwise.rms_norm(residual.add_(x), weight, 1e-5), 1000))
    return rows


def rotary_case(batch: int) -> tuple[str, Callable, Callable, int]:
    """engine/model.py's RoPE (sign on sin, one roll) vs transformers' rotate_half form; bit-equal (tests/test_rotary.py)."""
    from engine.model import RotaryEmbedding, apply_rotary

    qk = torch.randn(batch, HEADS + KV_HEADS, HEAD_DIM).bfloat16()
    positions = torch.arange(90, 90 + batch)
    cos, signed_sin = RotaryEmbedding(HEAD_DIM, 10000.0)(positions, torch.bfloat16)
    sin = torch.cat((-signed_sin[..., : HEAD_DIM // 2], signed_sin[..., HEAD_DIM // 2:]), dim=-1)

    def rotate_half():
        half = HEAD_DIM // 2
        return qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin

    return ("rotary (bf16, q and k): sign on sin + roll vs rotate_half's neg + cat", lambda: apply_rotary(qk, cos, signed_sin),
            rotate_half, 1000)


def rotary_write_kv_case(batch: int) -> tuple[str, Callable, Callable, int]:
    """Attention's rotary + KV write: one C pass vs apply_rotary + split + write_kv_cache; bit-equal
    (tests/test_cpu_rotary_write_kv.py). Decode-sized, where torch's per-op dispatch dominates."""
    from engine import cpu_elementwise
    from engine.attention import write_kv_cache
    from engine.model import RotaryEmbedding, apply_rotary

    qkv = torch.randn(batch, (HEADS + 2 * KV_HEADS) * HEAD_DIM).bfloat16()
    cos, signed_sin = RotaryEmbedding(HEAD_DIM, 10000.0)(torch.arange(90, 90 + batch), torch.bfloat16)
    k_cache = torch.zeros(64, BLOCK, KV_HEADS, HEAD_DIM, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(batch) * BLOCK + 5

    def torch_ops():
        qk = qkv[:, : (HEADS + KV_HEADS) * HEAD_DIM].view(batch, HEADS + KV_HEADS, HEAD_DIM)
        q, k = apply_rotary(qk, cos, signed_sin).split([HEADS, KV_HEADS], dim=1)
        write_kv_cache(k, qkv[:, (HEADS + KV_HEADS) * HEAD_DIM:].view(batch, KV_HEADS, HEAD_DIM), k_cache, v_cache, slots)
        return q

    return (f"rotary + KV write (bf16), {batch} rows: one C pass vs apply_rotary + split + write_kv_cache",
            lambda: cpu_elementwise.rotary_write_kv(qkv, cos, signed_sin, slots, k_cache, v_cache, HEADS), torch_ops, 1000)
