"""A bfloat16 linear layer for decode-sized inputs (a few rows) on CPUs with AVX-512 BF16, in C.

Speed trick, behind SmallGemmWeight.matmul(): a decode step multiplies one row per request by every
weight, so it streams ~270 MB of bf16 weights through a handful of dot products each, and oneDNN's
packed bf16 GEMM (engine/cpu_gemm.py, what vLLM's CPU build calls too) reads them well below the
memory's speed at that shape. This kernel keeps the weight in the AVX-512 BF16 pair layout
([N/16][K/2][16][2]: one 64-byte load holds 16 output columns x 2 inputs, so vdpbf16ps accumulates
16 outputs at once with no horizontal sums), keeps a tile of up to 6 rows x 64 columns in
registers, and prefetches each weight stream 1 KB ahead while the tile's first rows read it (the
rest of the rows find it in L2). bench/results/cpu_kernels.md, "linear (bf16), decode rows".

Float32 accumulation of exact bf16 products, one bf16 rounding at the end: what oneDNN computes, in
another order, so results differ from it by float32 rounding only. None: not built (no cc, a CPU
without AVX-512 BF16, SERVETRACE_CPU_KERNELS=0) or not applicable; the caller runs oneDNN.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from engine import c_build

MAX_ROWS = 32  # oneDNN is as fast from about here up (bench/cpu_kernels.py), and prefill is compute-bound

_SOURCE = c_build.PRELUDE + r"""
#ifdef __AVX512BF16__
#include <immintrin.h>
#define MR 6
#define PF_AHEAD 1024
/* R rows x NB blocks of 16 columns; sizes known at compile time, so the accumulators stay in registers.
   pf: this tile is the first over these columns, so it prefetches the weight streams ahead. */
#define TILE(R, NB) \
static void tile_##R##_##NB(const uint16_t *x, int64_t xs, const uint16_t *w, int64_t half_k, float *out, int pf) { \
    __m512 acc[R][NB]; \
    for (int r = 0; r < R; r++) for (int j = 0; j < NB; j++) acc[r][j] = _mm512_setzero_ps(); \
    const int64_t block = half_k * 32; \
    for (int64_t kp = 0; kp < half_k; kp++) { \
        __m512bh wv[NB]; \
        for (int j = 0; j < NB; j++) { \
            const uint16_t *at = w + j * block + kp * 32; \
            wv[j] = (__m512bh)_mm512_loadu_si512(at); \
            if (pf) _mm_prefetch((const char *)at + PF_AHEAD, _MM_HINT_T0); \
        } \
        for (int r = 0; r < R; r++) { \
            const __m512bh b = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(x + r * xs + 2 * kp)); \
            for (int j = 0; j < NB; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv[j], b); \
        } \
    } \
    for (int r = 0; r < R; r++) for (int j = 0; j < NB; j++) _mm512_storeu_ps(out + r * 64 + 16 * j, acc[r][j]); \
}
#define TILES_OF(NB) TILE(1, NB) TILE(2, NB) TILE(3, NB) TILE(4, NB) TILE(5, NB) TILE(6, NB)
TILES_OF(1) TILES_OF(2) TILES_OF(3) TILES_OF(4)
typedef void (*tile_fn)(const uint16_t *, int64_t, const uint16_t *, int64_t, float *, int);
#define ROW_OF(NB) {0, tile_1_##NB, tile_2_##NB, tile_3_##NB, tile_4_##NB, tile_5_##NB, tile_6_##NB}
static const tile_fn TILES[5][MR + 1] = {{0}, ROW_OF(1), ROW_OF(2), ROW_OF(3), ROW_OF(4)};

/* y[M][N] = x[M][K] w^T, x rows x_stride apart (K contiguous), w in SmallGemmWeight's pair layout; N % 16 == 0, K even. */
int small_gemm_bf16(const uint16_t *x, int64_t x_stride, const uint16_t *w, uint16_t *y, int64_t rows, int64_t n,
                    int64_t k, int num_threads) {
    const int64_t blocks = n / 16, groups = (blocks + 3) / 4, half_k = k / 2;
    #pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        const int nb = blocks - 4 * g < 4 ? (int)(blocks - 4 * g) : 4;
        const uint16_t *wg = w + 4 * g * half_k * 32;
        float out[MR * 64];
        for (int64_t m = 0; m < rows; m += MR) {
            const int r = rows - m < MR ? (int)(rows - m) : MR;
            TILES[nb][r](x + m * x_stride, x_stride, wg, half_k, out, m == 0);
            for (int i = 0; i < r; i++)
                for (int c = 0; c < 16 * nb; c++) y[(m + i) * n + 64 * g + c] = f32_to_bf16(out[i * 64 + c]);
        }
    }
    return 0;
}
int available(void) { return 1; }
#else
int small_gemm_bf16(const void *x, int64_t x_stride, const void *w, void *y, int64_t rows, int64_t n, int64_t k,
                    int num_threads) { return -1; }
int available(void) { return 0; }
#endif
"""


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = c_build.load("small_gemm", _SOURCE)
    if library is None or not library.available():
        return None
    fn = library.small_gemm_bf16
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 3, ctypes.c_int]
    return library


def available() -> bool:
    return _library() is not None


class SmallGemmWeight:
    """A bf16 weight [N, K] (N % 16 == 0, K even) in the kernel's pair layout."""

    def __init__(self, weight: torch.Tensor) -> None:
        n, k = weight.shape
        self.out_features, self.in_features = n, k
        self.packed = weight.detach().view(n // 16, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()

    @staticmethod
    def applies_to(weight: torch.Tensor) -> bool:
        n, k = weight.shape
        return available() and weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and n % 16 == 0 and k % 2 == 0

    def matmul(self, x: torch.Tensor) -> torch.Tensor | None:
        """x [..., K] bf16 -> [..., N]; None where the kernel does not apply (more than MAX_ROWS rows,
        another dtype, a strided last dimension)."""
        rows = x.numel() // self.in_features if x.dim() else 0
        if not (0 < rows <= MAX_ROWS) or x.dtype != torch.bfloat16 or x.shape[-1] != self.in_features:
            return None
        flat = x.reshape(rows, self.in_features)
        if flat.stride(1) != 1:
            return None
        out = torch.empty((rows, self.out_features), dtype=torch.bfloat16)
        _library().small_gemm_bf16(flat.data_ptr(), flat.stride(0), self.packed.data_ptr(), out.data_ptr(), rows,
                                   self.out_features, self.in_features, torch.get_num_threads())
        return out.view(*x.shape[:-1], self.out_features)
