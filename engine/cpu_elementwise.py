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

/* out = weight * bf16(x * rsqrt(mean(x^2) + eps)), x float32 math: transformers' LlamaRMSNorm in bf16. */
void rms_norm_bf16(const uint16_t *__restrict x, int64_t x_stride, const uint16_t *__restrict weight, uint16_t *__restrict out,
                   int64_t rows, int64_t dim, float eps, int num_threads) {
    #pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * dim >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * x_stride;
        uint16_t *o = out + r * dim;
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
"""


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = c_build.load("elementwise", _SOURCE)
    if library is None:
        return None
    library.rms_norm_bf16.restype = None
    library.rms_norm_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    library.silu_and_mul_bf16.restype = None
    library.silu_and_mul_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
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


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """gate_up [T, 2h] bf16, contiguous -> silu(gate) * up [T, h]; None: use the torch ops."""
    library = _library()
    if library is None or not _applies(gate_up) or not gate_up.is_contiguous() or gate_up.shape[1] % 2:
        return None
    half = gate_up.shape[1] // 2
    out = torch.empty((gate_up.shape[0], half), dtype=gate_up.dtype)
    library.silu_and_mul_bf16(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], half, torch.get_num_threads())
    return out
