"""RMSNorm and SiLU-and-mul for a bfloat16 model on the CPU, each one pass in C (engine/c_build.py).

Speed trick, behind rms_norm() and silu_and_mul(): in torch each is a chain of ops over the whole
activation (RMSNorm: upcast, square, mean, rsqrt, scale, downcast, weight: seven passes; SwiGLU:
silu over a strided half of gate_up, then the product), and on this CPU bfloat16 elementwise ops
run far below memory speed: a 2048-token prefill step spent ~20% of its time in them, and a
decode step pays ~4 us of dispatch per op. One pass each, with the same roundings as the torch
ops they replace (float32 math, bf16 where transformers rounds): bench/results/cpu_kernels.md,
"RMSNorm (bf16): C" and "SiLU-and-mul (bf16): C". vLLM 0.32's x86 CPU path runs SiLU-and-mul as these same torch ops
(vllm/model_executor/layers/activation.py:156-159 SiluAndMul.forward_cpu -> forward_native; the
peers bench runs vLLM with --enforce-eager).

bfloat16 only: a float32 model keeps the torch ops, so its greedy output stays bit-for-bit what
the token-equality tests against transformers check. None: not built or not applicable, the
caller runs the torch ops.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from engine import c_build

_SOURCE = c_build.PRELUDE + r"""
#include <math.h>

/* o = weight * bf16(x * rsqrt(mean(x^2) + eps)), x float32 math: transformers' LlamaRMSNorm in bf16. */
static void rms_norm_row(const uint16_t *__restrict xr, const uint16_t *__restrict weight, uint16_t *__restrict o,
                         int64_t dim, float eps) {
    float lanes[16] = {0};
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16)
        for (int j = 0; j < 16; j++) { float v = bf16_to_f32(xr[d + j]); lanes[j] += v * v; }
    float sum = 0.0f;
    for (; d < dim; d++) { float v = bf16_to_f32(xr[d]); sum += v * v; }
    for (int w = 8; w >= 1; w /= 2) for (int j = 0; j < w; j++) lanes[j] += lanes[j + w];
    sum += lanes[0];
    const float inv = 1.0f / sqrtf(sum / (float)dim + eps);
    for (d = 0; d < dim; d++) {
        const float normed = bf16_to_f32(f32_to_bf16(bf16_to_f32(xr[d]) * inv));
        o[d] = f32_to_bf16(bf16_to_f32(weight[d]) * normed);
    }
}

void rms_norm_bf16(const uint16_t *__restrict x, int64_t x_stride, const uint16_t *__restrict weight, uint16_t *__restrict out,
                   int64_t rows, int64_t dim, float eps, int num_threads) {
    #pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * dim >= 65536)
    for (int64_t r = 0; r < rows; r++)
        rms_norm_row(x + r * x_stride, weight, out + r * dim, dim, eps);
}

/* residual = bf16(residual + x) in place, then out = rms_norm(residual): the residual add and the next
   norm in one pass (x contiguous rows, residual contiguous). */
void add_rms_norm_bf16(const uint16_t *__restrict x, uint16_t *__restrict residual, const uint16_t *__restrict weight,
                       uint16_t *__restrict out, int64_t rows, int64_t dim, float eps, int num_threads) {
    #pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * dim >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        uint16_t *res = residual + r * dim;
        const uint16_t *xr = x + r * dim;
        for (int64_t d = 0; d < dim; d++) res[d] = f32_to_bf16(bf16_to_f32(res[d]) + bf16_to_f32(xr[d]));
        rms_norm_row(res, weight, out + r * dim, dim, eps);
    }
}

static void silu_and_mul_row(const uint16_t *__restrict g, const uint16_t *__restrict u, uint16_t *__restrict o, int64_t n) {
    for (int64_t d = 0; d < n; d++) {
        const float x = bf16_to_f32(g[d]);
        const float s = bf16_to_f32(f32_to_bf16(x / (1.0f + exp_f(-x))));
        o[d] = f32_to_bf16(s * bf16_to_f32(u[d]));
    }
}

/* out[r] = bf16(bf16(silu(gate)) * up), gate_up[r] = [gate | up] (width 2 * half): torch's
   F.silu(gate) * up in bf16. */
void silu_and_mul_bf16(const uint16_t *gate_up, uint16_t *out, int64_t rows, int64_t half, int num_threads) {
    #pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * half >= 65536)
    for (int64_t r = 0; r < rows; r++)
        silu_and_mul_row(gate_up + r * 2 * half, gate_up + r * 2 * half + half, out + r * half, half);
}

/* One head: o = bf16(bf16(x * cos) + bf16(roll(x, dim / 2) * signed_sin)), engine.model.apply_rotary's roundings. */
static void rotate_head(const uint16_t *__restrict x, const uint16_t *__restrict c, const uint16_t *__restrict s,
                        uint16_t *__restrict o, int64_t dim) {
    const int64_t half = dim / 2;
    /* roll(x, half)[d] is x[d + half] in the first half and x[d - half] in the second: two loops that
       read x in order, so both vectorize. */
    for (int64_t d = 0; d < half; d++) {
        const float a = bf16_to_f32(f32_to_bf16(bf16_to_f32(x[d]) * bf16_to_f32(c[d])));
        const float b = bf16_to_f32(f32_to_bf16(bf16_to_f32(x[d + half]) * bf16_to_f32(s[d])));
        o[d] = f32_to_bf16(a + b);
    }
    for (int64_t d = half; d < dim; d++) {
        const float a = bf16_to_f32(f32_to_bf16(bf16_to_f32(x[d]) * bf16_to_f32(c[d])));
        const float b = bf16_to_f32(f32_to_bf16(bf16_to_f32(x[d - half]) * bf16_to_f32(s[d])));
        o[d] = f32_to_bf16(a + b);
    }
}

/* qkv [tokens, (heads + 2 kv_heads) * dim] -> q_out [tokens, heads, dim] rotated; k rotated and v as is
   into the pools' rows slots[t] (a pool: [num_slots, kv_heads, dim]). Returns the number of tokens whose
   slot lies outside the pool (nothing is written for them; the caller raises). */
int64_t rotary_write_kv_bf16(const uint16_t *qkv, int64_t qkv_stride, const uint16_t *cos, const uint16_t *signed_sin,
                             const int64_t *slots, uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache, int64_t num_slots,
                             int64_t tokens, int64_t heads, int64_t kv_heads, int64_t dim, int num_threads) {
    int64_t bad = 0;
    #pragma omp parallel for num_threads(num_threads) schedule(static) reduction(+:bad) if (tokens >= 64)
    for (int64_t t = 0; t < tokens; t++) {
        const uint16_t *row = qkv + t * qkv_stride, *c = cos + t * dim, *s = signed_sin + t * dim;
        for (int64_t h = 0; h < heads; h++)
            rotate_head(row + h * dim, c, s, q_out + (t * heads + h) * dim, dim);
        const int64_t slot = slots[t];
        if (slot < 0 || slot >= num_slots) { bad++; continue; }
        const uint16_t *k = row + heads * dim, *v = k + kv_heads * dim;
        for (int64_t h = 0; h < kv_heads; h++)
            rotate_head(k + h * dim, c, s, k_cache + (slot * kv_heads + h) * dim, dim);
        __builtin_memcpy(v_cache + slot * kv_heads * dim, v, (unsigned long)(kv_heads * dim) * 2u);
    }
    return bad;
}
"""


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = c_build.load("elementwise", _SOURCE)
    if library is None:
        return None
    library.rms_norm_bf16.restype = None
    library.rms_norm_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    library.add_rms_norm_bf16.restype = None
    library.add_rms_norm_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                          ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    library.silu_and_mul_bf16.restype = None
    library.silu_and_mul_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    library.rotary_write_kv_bf16.restype = ctypes.c_int64
    library.rotary_write_kv_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                             ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                             ctypes.c_int]
    return library


def _applies(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 2 and x.stride(1) == 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """x [T, d] bf16 (rows may be strided), weight [d] bf16 -> [T, d]; None: use the torch ops."""
    library = _library()
    if library is None or not _applies(x) or weight.dtype != torch.bfloat16 or not weight.is_contiguous():
        return None
    out = torch.empty(x.shape, dtype=x.dtype)
    library.rms_norm_bf16(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps,
                          torch.get_num_threads())
    return out


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """residual += x (bf16, in place), then rms_norm(residual); None: use the torch ops.

    vLLM's fused_add_rms_norm in one pass: a decode step's residual add is one op of dispatch per
    norm for a few KB of data. Same roundings as residual + x followed by rms_norm.
    """
    library = _library()
    if (library is None or not _applies(x) or not _applies(residual) or not x.is_contiguous()
            or not residual.is_contiguous() or x.shape != residual.shape or weight.dtype != torch.bfloat16
            or not weight.is_contiguous()):
        return None
    out = torch.empty(x.shape, dtype=x.dtype)
    library.add_rms_norm_bf16(x.data_ptr(), residual.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1],
                              eps, torch.get_num_threads())
    return out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """gate_up [T, 2h] bf16, contiguous -> silu(gate) * up [T, h]; None: use the torch ops."""
    library = _library()
    if library is None or not _applies(gate_up) or not gate_up.is_contiguous() or gate_up.shape[1] % 2:
        return None
    half = gate_up.shape[1] // 2
    out = torch.empty((gate_up.shape[0], half), dtype=gate_up.dtype)
    library.silu_and_mul_bf16(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], half, torch.get_num_threads())
    return out


def rotary_write_kv(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, slot_mapping: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int) -> torch.Tensor | None:
    """Attention's rotary and KV write in one pass: q rotated [T, heads, head_dim] out, k rotated and v
    written into the pools at slot_mapping; None: use the torch ops (apply_rotary, write_kv_cache).

    What it buys: a decode step ran ~11 small ops per layer here (views, roll, 2 mul, add, split,
    2 index_copy_), each paying torch's dispatch, for a few KB of data; one call instead
    (bench/results/cpu_kernels.md, "rotary + KV write"). Same roundings as apply_rotary.
    """
    library = _library()
    bf16 = torch.bfloat16
    if (library is None or not _applies(qkv) or slot_mapping.dtype != torch.int64 or k_cache.dtype != bf16
            or v_cache.dtype != bf16 or cos.dtype != bf16 or signed_sin.dtype != bf16):
        return None
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    tokens = qkv.shape[0]
    if (qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim or cos.numel() != tokens * head_dim
            or signed_sin.numel() != tokens * head_dim or slot_mapping.numel() != tokens or head_dim % 2
            or v_cache.shape != k_cache.shape):
        return None
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and cos.is_contiguous() and signed_sin.is_contiguous()
            and slot_mapping.is_contiguous()):
        return None
    q = torch.empty((tokens, num_heads, head_dim), dtype=qkv.dtype)
    bad = library.rotary_write_kv_bf16(qkv.data_ptr(), qkv.stride(0), cos.data_ptr(), signed_sin.data_ptr(),
                                       slot_mapping.data_ptr(), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                       num_blocks * block_size, tokens, num_heads, num_kv_heads, head_dim,
                                       torch.get_num_threads())
    if bad:
        raise IndexError(f"{bad} of {tokens} KV slots lie outside the pool of {num_blocks * block_size} slots")
    return q
