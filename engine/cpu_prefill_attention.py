"""Prefill attention over the paged KV cache as a small C kernel, built on first use (CPU only).

Speed trick, behind prefill_attention(): the torch backend runs each prefill (or chunk) as a call
of its own: an index_select of the request's context out of the pool, then torch's SDPA (a
materialized boolean mask where the chunk follows cached context). This kernel does every
prefill of the step in one call, reading K/V where they lie in the pool (no gather copy), tiled
flash-style: a tile of query tokens against chunks of keys, the heads sharing a KV head together
(one K/V chunk read for the group), float32 accumulation and an online softmax, the causal limit
of each token (its own chunk plus its cached context) applied in the diagonal chunks only:
bench/results/cpu_kernels.md, "prefill attention". vLLM's CPU build runs one C++ call per layer
for the whole batch, prefills included (vllm 0.32.0: vllm/v1/attention/backends/cpu_attn.py:440-460
CPUAttentionBackendImpl.forward).

Built, loaded and switched off as engine/cpu_decode_attention.py is (engine/c_build.py): None
where it does not apply (not built, a dtype or shape it does not take), and the torch path runs.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from engine import c_build

_SOURCE = c_build.PRELUDE + r"""
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#define HAVE_DPBF16 1  /* AVX-512 BF16: a bf16 pair dot product into float32 lanes per instruction */
#else
#define HAVE_DPBF16 0
#endif

#define MAX_GROUP 16
#define MAX_DIM 256
#define TILE_Q 32  /* query tokens per work item: each K/V chunk converted once is used by all of them */
#define KC 64      /* keys per chunk (4 zmm of scores per head) */

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

/* exp_f (engine/c_build.PRELUDE) on 16 lanes at once in vector types: the scalar form in this
   loop nest stayed scalar (gcc: "control flow in loop"). x is clamped to [-87, 88] first: the
   softmax only asks for x <= 0, and exp(-87) underflows to what a weight of 0 would give. */
static inline __attribute__((always_inline)) v16 exp_v16(v16 x) {
    const i16 low = x < -87.0f, high = x > 88.0f;  /* lane masks: -1 or 0 */
    x = (v16)(((i16)x & ~low) | ((i16)((v16){0} - 87.0f) & low));
    x = (v16)(((i16)x & ~high) | ((i16)((v16){0} + 88.0f) & high));
    const v16 t = x * 1.44269504088896341f + 0.5f;
    const i16 i = __builtin_convertvector(t, i16);
    const i16 k = i + (i16)(t < __builtin_convertvector(i, v16));  /* floor(t): true lanes are -1 */
    const v16 n = __builtin_convertvector(k, v16);
    const v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (v16)((k + 127) << 23);  /* 2^k: k is within [-126, 127] for x in [-87, 88] */
}

static inline __attribute__((always_inline)) float load_one(const void *src, int64_t at, const int is_bf16) {
    return is_bf16 ? bf16_to_f32(((const uint16_t *)src)[at]) : ((const float *)src)[at];
}

/* One work item: query tokens [i0, i1) of a request (context length len, of which the first
   cstart are cached context), the `group` heads sharing KV head kh. Token i sees keys
   0 .. cstart + i. Everything in float32; out rounded once. */
static inline __attribute__((always_inline, flatten)) void tile(
        const void *query, int64_t q_stride, const void *k_cache, const void *v_cache, const int64_t *table,
        int64_t q_row0, int64_t i0, int64_t i1, int64_t cstart, void *out, int64_t out_stride,
        int64_t block_size, int64_t token_stride, int64_t kh, float scale,
        const int64_t group, const int64_t dim, const int is_bf16) {
    const int64_t nv = dim / 16;  /* v16 per head row */
    v16 *q = (v16 *)aligned_alloc(64, sizeof(v16) * TILE_Q * group * nv);
    v16 *acc = (v16 *)aligned_alloc(64, sizeof(v16) * TILE_Q * group * nv);
    v16 *kt = (v16 *)aligned_alloc(64, sizeof(v16) * dim * (KC / 16));   /* K chunk transposed: [dim][KC] */
    v16 *vf = (v16 *)aligned_alloc(64, sizeof(v16) * KC * nv);           /* V chunk: [KC][dim] */
    float row_max[TILE_Q * MAX_GROUP], row_sum[TILE_Q * MAX_GROUP];
    const int64_t nq = i1 - i0;
    /* bf16 at the bundled model's shape on a CPU with AVX-512 BF16: q and K stay bf16 and the
       scores come from bf16 pair dot products (vdpbf16ps: the products exact, summed in
       float32), half the instructions of converting both to float32 first; the scale is applied
       to the scores. K is kept as [dim / 2][KC] pairs; q as its raw bf16 pairs. */
    const int dot16 = HAVE_DPBF16 && is_bf16 && group == 3 && dim == 64;
    uint32_t *kp = (uint32_t *)kt, qp[TILE_Q * 3][32];
    if (dot16)
        for (int64_t i = 0; i < nq; i++)
            for (int64_t g = 0; g < 3; g++)
                memcpy(qp[i * 3 + g], (const uint16_t *)query + (q_row0 + i0 + i) * q_stride + (kh * 3 + g) * 64, 128);
    for (int64_t i = 0; i < nq; i++)
        for (int64_t g = 0; g < group; g++) {
            float *qr = (float *)(q + (i * group + g) * nv), *ar = (float *)(acc + (i * group + g) * nv);
            const int64_t at = (q_row0 + i0 + i) * q_stride + (kh * group + g) * dim;
            for (int64_t d = 0; d < dim; d++) { qr[d] = load_one(query, at + d, is_bf16) * scale; ar[d] = 0.0f; }
            row_max[i * group + g] = -3.0e38f; row_sum[i * group + g] = 0.0f;
        }
    const int64_t kend = cstart + i1;  /* keys the tile's last token sees */
    for (int64_t k0 = 0; k0 < kend; k0 += KC) {
        const int64_t nk = kend - k0 < KC ? kend - k0 : KC;
        float *ktf = (float *)kt, *vff = (float *)vf;
        for (int64_t t = 0; t < KC; t++) {
            if (t < nk) {
                const int64_t p = k0 + t, at = (table[p / block_size] * block_size + p % block_size) * token_stride + kh * dim;
                if (dot16) { const uint32_t *pairs = (const uint32_t *)((const uint16_t *)k_cache + at); for (int64_t j = 0; j < 32; j++) kp[j * KC + t] = pairs[j]; }
                else for (int64_t d = 0; d < dim; d++) ktf[d * KC + t] = load_one(k_cache, at + d, is_bf16);
                for (int64_t d = 0; d < dim; d++) vff[t * dim + d] = load_one(v_cache, at + d, is_bf16);
            } else {  /* past the chunk's end: zeros (their scores are masked, their weights 0) */
                if (dot16) for (int64_t j = 0; j < 32; j++) kp[j * KC + t] = 0;
                else for (int64_t d = 0; d < dim; d++) ktf[d * KC + t] = 0.0f;
                for (int64_t d = 0; d < dim; d++) vff[t * dim + d] = 0.0f;
            }
        }
        for (int64_t i = 0; i < nq; i++) {
            const int64_t visible = cstart + i0 + i + 1 - k0;  /* keys of this chunk token i sees */
            if (visible <= 0) continue;
            const int64_t nvis = visible < nk ? visible : nk;
            v16 s[MAX_GROUP][KC / 16];
            float alpha[MAX_GROUP];
            /* scores: only the 16-key columns the token sees (on the diagonal, fewer than 4), the
               K chunk transposed so a key's 16 neighbours are one vector */
            const int cols = (int)((nvis + 15) / 16);
#if HAVE_DPBF16
            if (dot16) {
#define QK3B(NC) do { __m512 a[3][4]; \
                for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) a[g][c] = _mm512_setzero_ps(); \
                for (int64_t j = 0; j < 32; j++) { \
                    const __m512i *kd = (const __m512i *)(kp + j * KC); \
                    const __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)qp[i * 3][j]), x1 = (__m512bh)_mm512_set1_epi32((int)qp[i * 3 + 1][j]), \
                                   x2 = (__m512bh)_mm512_set1_epi32((int)qp[i * 3 + 2][j]); \
                    for (int c = 0; c < NC; c++) { const __m512bh k = (__m512bh)kd[c]; \
                        a[0][c] = _mm512_dpbf16_ps(a[0][c], x0, k); a[1][c] = _mm512_dpbf16_ps(a[1][c], x1, k); \
                        a[2][c] = _mm512_dpbf16_ps(a[2][c], x2, k); } } \
                for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) s[g][c] = (v16)a[g][c] * scale; } while (0)
                if (cols == 4) QK3B(4); else if (cols == 3) QK3B(3); else if (cols == 2) QK3B(2); else QK3B(1);
#undef QK3B
            } else
#endif
            if (group == 3) {
                /* the bundled model's 3 heads per KV head together: 12 independent accumulators,
                   enough to keep both FMA pipes busy (4 per head alone left half of them idle) */
                const float *q0 = (const float *)(q + (i * 3) * nv), *q1 = q0 + dim, *q2 = q1 + dim;
#define QK3(NC) do { v16 a[3][4] = {{{0}}}; \
                for (int64_t d = 0; d < dim; d++) { \
                    const v16 *kd = kt + d * (KC / 16); const float x0 = q0[d], x1 = q1[d], x2 = q2[d]; \
                    for (int c = 0; c < NC; c++) { a[0][c] += x0 * kd[c]; a[1][c] += x1 * kd[c]; a[2][c] += x2 * kd[c]; } } \
                for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) s[g][c] = a[g][c]; } while (0)
                if (cols == 4) QK3(4); else if (cols == 3) QK3(3); else if (cols == 2) QK3(2); else QK3(1);
#undef QK3
            } else {
                for (int64_t g = 0; g < group; g++) {
                    const float *qr = (const float *)(q + (i * group + g) * nv);
                    v16 a[4] = {{0}};
                    for (int64_t d = 0; d < dim; d++)
                        for (int c = 0; c < 4; c++) a[c] += qr[d] * kt[d * (KC / 16) + c];
                    for (int c = 0; c < 4; c++) s[g][c] = a[c];
                }
            }
            for (int64_t g = 0; g < group; g++) {
                float *sg = (float *)s[g];
                const int64_t r = i * group + g;
                /* max and sum lane-wise over 16 lanes, then across them: loops without a
                   loop-carried float reduction, so they vectorize (no -ffast-math) */
                float lanes[16], m = row_max[r], sum = 0.0f;
                for (int j = 0; j < 16; j++) lanes[j] = -3.0e38f;
                for (int c = 0; c < KC / 16; c++)
                    for (int j = 0; j < 16; j++) {
                        const float v = c * 16 + j < nvis ? sg[c * 16 + j] : -3.0e38f;
                        lanes[j] = v > lanes[j] ? v : lanes[j];
                    }
                for (int j = 0; j < 16; j++) m = lanes[j] > m ? lanes[j] : m;
                /* the first chunk a row sees: nothing to rescale (and -3e38 - m is outside exp_f's range) */
                alpha[g] = row_max[r] > -1.0e38f ? exp_f(row_max[r] - m) : 0.0f;
                const i16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
                for (int c = 0; c < KC / 16; c++) {  /* weights past the row's visible keys: 0 */
                    const i16 seen = lane + c * 16 < (int32_t)nvis;
                    s[g][c] = (v16)((i16)exp_v16(s[g][c] - m) & seen);
                }
                for (int j = 0; j < 16; j++) lanes[j] = 0.0f;
                for (int c = 0; c < KC / 16; c++)
                    for (int j = 0; j < 16; j++) lanes[j] += sg[c * 16 + j];
                for (int j = 0; j < 16; j++) sum += lanes[j];
                if (is_bf16)  /* as torch's bf16 flash attention: the weights rounded to bf16 for the value
                                 product, their sum taken in float32 before (the reference bf16 runs agree more) */
                    for (int c = 0; c < KC / 16; c++) {
                        const i16 u = (i16)s[g][c];
                        s[g][c] = (v16)((u + 0x7fff + ((u >> 16) & 1)) & (int32_t)0xffff0000u);
                    }
                row_sum[r] = row_sum[r] * alpha[g] + sum;
                row_max[r] = m;
            }
            /* weighted values, the output rows held in registers over the chunk */
            if (group == 3 && nv == 4) {
                v16 o[3][4];
                v16 *ar = acc + (i * 3) * nv;
                for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) o[g][c] = ar[g * 4 + c] * alpha[g];
                const float *p0 = (const float *)s[0], *p1 = (const float *)s[1], *p2 = (const float *)s[2];
                for (int64_t t = 0; t < nvis; t++) {
                    const v16 *vt = vf + t * 4;
                    const float x0 = p0[t], x1 = p1[t], x2 = p2[t];
                    for (int c = 0; c < 4; c++) { o[0][c] += x0 * vt[c]; o[1][c] += x1 * vt[c]; o[2][c] += x2 * vt[c]; }
                }
                for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) ar[g * 4 + c] = o[g][c];
            } else {
                for (int64_t g = 0; g < group; g++) {
                    v16 o[MAX_DIM / 16];
                    v16 *ar = acc + (i * group + g) * nv;
                    const float *sg = (const float *)s[g];
                    for (int64_t c = 0; c < nv; c++) o[c] = ar[c] * alpha[g];
                    for (int64_t t = 0; t < nvis; t++)
                        for (int64_t c = 0; c < nv; c++) o[c] += sg[t] * vf[t * nv + c];
                    for (int64_t c = 0; c < nv; c++) ar[c] = o[c];
                }
            }
        }
    }
    for (int64_t i = 0; i < nq; i++)
        for (int64_t g = 0; g < group; g++) {
            const int64_t r = i * group + g, at = (q_row0 + i0 + i) * out_stride + (kh * group + g) * dim;
            const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
            const float *ar = (const float *)(acc + r * nv);
            for (int64_t d = 0; d < dim; d++) {
                const float o = ar[d] * inv;
                if (is_bf16) ((uint16_t *)out)[at + d] = f32_to_bf16(o); else ((float *)out)[at + d] = o;
            }
        }
    free(q); free(acc); free(kt); free(vf);
}

/* Every prefill of a step: request r's new tokens are query rows q_starts[r] .. + q_lens[r], its
   context (cached + new, already written to the pool) seq_lens[r] tokens in the blocks of
   block_tables[r]. query [T, heads, dim] (row stride q_stride elements), caches [num_blocks,
   block_size, kv_heads, dim], out [T, heads, dim] (row stride out_stride). is_bf16: query, caches
   and out are bfloat16, else float32. Returns 0, or -1 for a shape it does not take. */
int prefill_attention(const void *query, int64_t q_stride, const void *k_cache, const void *v_cache,
                      const int64_t *block_tables, int64_t table_width, const int64_t *q_starts, const int64_t *q_lens,
                      const int64_t *seq_lens, int64_t num_reqs, void *out, int64_t out_stride, int64_t heads,
                      int64_t kv_heads, int64_t dim, int64_t block_size, float scale, int is_bf16, int num_threads) {
    const int64_t group = heads / kv_heads;
    if (group > MAX_GROUP || dim > MAX_DIM || dim % 16 || heads % kv_heads || num_reqs <= 0) return -1;
    for (int64_t r = 0; r < num_reqs; r++)
        if (q_lens[r] > seq_lens[r] || q_lens[r] <= 0) return -1;
    /* work items: (request, query tile, KV head), the longest requests' tiles first in the list
       order they come; tile_first[r] is request r's first tile */
    int64_t *tile_first = (int64_t *)malloc(sizeof(int64_t) * (num_reqs + 1));
    tile_first[0] = 0;
    for (int64_t r = 0; r < num_reqs; r++) tile_first[r + 1] = tile_first[r] + (q_lens[r] + TILE_Q - 1) / TILE_Q;
    const int64_t items = tile_first[num_reqs] * kv_heads, token_stride = kv_heads * dim;
    #pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (int64_t w = 0; w < items; w++) {
        const int64_t t = w / kv_heads, kh = w % kv_heads;
        int64_t r = 0;
        while (tile_first[r + 1] <= t) r++;
        const int64_t i0 = (t - tile_first[r]) * TILE_Q, i1 = i0 + TILE_Q < q_lens[r] ? i0 + TILE_Q : q_lens[r];
        const int64_t cstart = seq_lens[r] - q_lens[r];
        const int64_t *table = block_tables + r * table_width;
#define TILE(G, D, BF16) tile(query, q_stride, k_cache, v_cache, table, q_starts[r], i0, i1, cstart, out, out_stride, \
                              block_size, token_stride, kh, scale, G, D, BF16)
        if (group == 3 && dim == 64) { if (is_bf16) TILE(3, 64, 1); else TILE(3, 64, 0); }
        else { if (is_bf16) TILE(group, dim, 1); else TILE(group, dim, 0); }
#undef TILE
    }
    free(tile_first);
    return 0;
}
"""
_DTYPES = {torch.bfloat16: 1, torch.float32: 0}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernel, or None (no cc, a failed build, or SERVETRACE_CPU_KERNELS=0)."""
    library = c_build.load("prefill_attention", _SOURCE)
    if library is None:
        return None
    fn = library.prefill_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                   *[ctypes.c_int64] * 4, ctypes.c_float, ctypes.c_int, ctypes.c_int]
    return library


def available() -> bool:
    return _library() is not None


def prefill_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      q_starts: torch.Tensor, q_lens: torch.Tensor, seq_lens: torch.Tensor, out: torch.Tensor,
                      scale: float) -> bool:
    """Causal attention of each request's new query rows over its context in the pool, written into out.

    query [T, heads, d] (rows may be strided, heads and d contiguous), caches [num_blocks, block_size,
    kv_heads, d], out [T, heads, d] (heads and d contiguous); per prefill request (int64 [R]): its
    first row q_starts, its new tokens q_lens, its context length seq_lens (cached + new, all in the
    pool), and block_tables [R, W]. False where the kernel does not apply (not built, another device
    or dtype, a layout or shape it does not take): out is then untouched."""
    library = _library()
    if (
        library is None or query.device.type != "cpu" or query.dtype not in _DTYPES
        or not (k_cache.dtype == v_cache.dtype == out.dtype == query.dtype)
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
        or query.stride(2) != 1 or query.stride(1) != query.shape[2] or out.stride(2) != 1 or out.stride(1) != out.shape[2]
    ):
        return False
    _, heads, dim = query.shape
    _, block_size, kv_heads, _ = k_cache.shape
    tables = block_tables.to(torch.int64).contiguous()
    starts, lens, context = (t.to(torch.int64).contiguous() for t in (q_starts, q_lens, seq_lens))
    status = library.prefill_attention(
        query.data_ptr(), query.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), tables.shape[1],
        starts.data_ptr(), lens.data_ptr(), context.data_ptr(), len(starts), out.data_ptr(), out.stride(0), heads,
        kv_heads, dim, block_size, scale, _DTYPES[query.dtype], torch.get_num_threads(),
    )
    return status == 0
