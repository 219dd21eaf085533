"""Decode attention over the paged KV cache as a small C kernel, built on first use (CPU only).

Speed trick, behind decode_attention(): the torch backend's decode path gathers every request's
context blocks (index_select), upcasts them to float32 and runs torch's CPU SDPA kernel with a
padding mask. At decode shapes (one query row per request) that kernel's per-(request, head)
overhead dominates: about 1 ms per layer for 32 requests of 192 tokens, 30 ms of a 70 ms step.
This kernel reads each request's K/V where it lies in the pool (no gather, no upcast copy),
computes the heads sharing a KV head together (one K/V read for the group), in float32, with a
two-pass softmax over the row's own length (no mask): bench/results/cpu_kernels.md, "decode
attention: C kernel vs the torch path". vLLM's CPU build does the same with its own C++ kernel
(vllm/v1/attention/backends/cpu_attn.py, vllm 0.32.0).

It is plain C (no torch headers, so it builds in about a second), compiled with the system's cc
into ~/.cache/servetrace/ keyed by its source, flags and this CPU's flags, loaded with ctypes
(which drops the GIL for the call) and parallel over (request, KV head) with OpenMP: it links the
libgomp torch already loaded, so both share one thread pool. No compiler, a failed build, or
SERVETRACE_CPU_DECODE_KERNEL=0: decode_attention returns None and the torch path runs.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from engine import c_build

_SOURCE = c_build.PRELUDE + r"""
#include <stdlib.h>
#include <string.h>

#define MAX_GROUP 16
#ifdef __AVX512BF16__
#include <immintrin.h>
/* a[0]+a[1], a[2]+a[3], ..., a[14]+a[15], then the same of b: 16 lanes */
static inline __m512 pair_sums(__m512 a, __m512 b) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}

/* exp_f (engine/c_build.PRELUDE) on 16 lanes, x clamped to [-87, 0] (scores minus their max). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_setzero_ps()), _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
    const __m512 n = _mm512_floor_ps(t);
    const __m512 r = _mm512_add_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x), _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.9875691500e-4f), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    const __m512i k = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(k, 23)));
}

static inline __m512 bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* The 3 query heads' scores (times scale) for keys [t0, t0 + n) of one KV head (n <= 16), into
   dst[g * padded + j]: vdpbf16ps pair dot products, 16 keys' partial sums reduced together. */
static inline void score_tile(__m512bh q[3][2], const uint16_t *k_cache, const int64_t *table, int64_t t0, int64_t n,
                              int64_t block_size, int64_t token_stride, int64_t head_off, float *dst, int64_t padded, float scale) {
    __m512 p[3][16];
    for (int j = 0; j < 16; j++) {
        if (j < n) {
            const int64_t pos = t0 + j;
            const uint16_t *k = k_cache + (table[pos / block_size] * block_size + pos % block_size) * token_stride + head_off;
            const __m512bh lo = (__m512bh)_mm512_loadu_si512(k), hi = (__m512bh)_mm512_loadu_si512(k + 32);
            for (int g = 0; g < 3; g++) p[g][j] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), q[g][0], lo), q[g][1], hi);
        } else {
            for (int g = 0; g < 3; g++) p[g][j] = _mm512_setzero_ps();
        }
    }
    for (int g = 0; g < 3; g++) {
        for (int w = 16; w > 1; w /= 2)
            for (int m = 0; m < w / 2; m++) p[g][m] = pair_sums(p[g][2 * m], p[g][2 * m + 1]);
        _mm512_store_ps(dst + g * padded, _mm512_mul_ps(p[g][0], _mm512_set1_ps(scale)));
    }
}

/* Each of `rows` score rows (len live of padded, 64-byte aligned) replaced by exp(score - its max),
   16 lanes at a time; total[g] is row g's sum (the softmax's divisor, applied at the end). */
static inline void exp_rows(float *scores, int64_t rows, int64_t len, int64_t padded, float *total) {
    for (int64_t g = 0; g < rows; g++) {
        float *sg = scores + g * padded, m = -3.0e38f;
        for (int64_t t = 0; t < len; t++) m = sg[t] > m ? sg[t] : m;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t t0 = 0; t0 < padded; t0 += 16) {
            const __mmask16 live = len - t0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - t0)) - 1);
            const __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_load_ps(sg + t0), _mm512_set1_ps(m))));
            _mm512_store_ps(sg + t0, e);
            sum = _mm512_add_ps(sum, e);
        }
        total[g] = _mm512_reduce_add_ps(sum);
    }
}

/* Speed trick for the bundled model's shape in bf16 (3 heads per KV head, dim 64) on a CPU
   with AVX-512 BF16: a key's 3 scores from bf16 pair dot products (vdpbf16ps, float32 sums),
   16 keys' partial sums reduced together (4 levels of pair_sums, not 16 horizontal sums), the
   softmax's exp 16 lanes at a time, and the weighted values in 12 register accumulators. */
static void row_3x64_bf16(const uint16_t *query, const uint16_t *k_cache, const uint16_t *v_cache, const int64_t *table,
                          int64_t len, uint16_t *out, int64_t block_size, int64_t token_stride, int64_t head_off, float scale) {
    __m512bh q[3][2];
    for (int g = 0; g < 3; g++)
        for (int h = 0; h < 2; h++) q[g][h] = (__m512bh)_mm512_loadu_si512(query + g * 64 + h * 32);
    const int64_t padded = (len + 15) / 16 * 16;
    float *scores = (float *)aligned_alloc(64, sizeof(float) * 3 * (padded > 0 ? padded : 16));
    for (int64_t t0 = 0; t0 < len; t0 += 16) {
        const int64_t n = len - t0 < 16 ? len - t0 : 16;
        score_tile(q, k_cache, table, t0, n, block_size, token_stride, head_off, scores + t0, padded, scale);
    }
    float total[3];
    exp_rows(scores, 3, len, padded, total);
    __m512 acc[3][4];
    for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) acc[g][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; t++) {
        const uint16_t *v = v_cache + (table[t / block_size] * block_size + t % block_size) * token_stride + head_off;
        const __m512 v0 = bf16x16(v), v1 = bf16x16(v + 16), v2 = bf16x16(v + 32), v3 = bf16x16(v + 48);
        for (int g = 0; g < 3; g++) {
            const __m512 w = _mm512_set1_ps(scores[g * padded + t]);
            acc[g][0] = _mm512_fmadd_ps(w, v0, acc[g][0]); acc[g][1] = _mm512_fmadd_ps(w, v1, acc[g][1]);
            acc[g][2] = _mm512_fmadd_ps(w, v2, acc[g][2]); acc[g][3] = _mm512_fmadd_ps(w, v3, acc[g][3]);
        }
    }
    for (int g = 0; g < 3; g++) {
        float o[64];
        const float inv = total[g] > 0.0f ? 1.0f / total[g] : 0.0f;
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv)));
        for (int d = 0; d < 64; d++) out[g * 64 + d] = f32_to_bf16(o[d]);
    }
    free(scores);
}
#define HAVE_ROW_3X64_BF16 1

/* Speed trick over row_3x64_bf16, for a request's every KV head in one task: the tile's 16 keys
   are scored for each KV head in turn, so each key row's kv_heads * 64 values (384 contiguous bytes
   for the bundled model) are read in one run, and the values the same way block by block. The
   pool's rows interleave the KV heads, so a task per (request, KV head) reads a third of each
   row and strides over the rest; and the next block's rows are prefetched (prefetch_keys), since
   blocks lie anywhere in the pool. Cache-cold, as a step meets them (30 layers' pools in turn), one
   thread, 30 layers: 8 requests of ~190 tokens 8.3-8.6 -> 6.8-7.0 ms, 32 of ~173 26.0-26.9 ->
   20.0-21.3 ms (bench/cpu_kernels.py, "decode attention: a task per request"). Same arithmetic, in
   the same order, per head as row_3x64_bf16, so the same bits.
   Prefetched further ahead into L2 (T1), since the near prefetch alone leaves DRAM idle between
   blocks: while scoring keys, the same rows' values (the V pass needs them next); while summing
   values, the keys of the request this thread takes next (b + num_threads, as schedule(dynamic, 1)
   hands them out when tasks take about as long). On an AMD EPYC (Zen 5, 1 MB L2), the same 30
   layers, one thread: 8 requests 6.8 -> 4.8-5.0 ms, 32 requests 20.9-21.2 -> 16.7 ms (blocks
   scattered) and 12.7 -> 10.1 ms (blocks in order). */
/* The rows of keys [from, from + 16) into the cache ahead of their use: the pool's blocks lie
   anywhere, so the hardware prefetcher cannot follow a jump from one block to the next. */
static inline void prefetch_keys(const uint16_t *cache, const int64_t *table, int64_t from, int64_t len, int64_t block_size,
                                 int64_t token_stride, int far) {
    const int64_t to = from + 16 < len ? from + 16 : len;
    for (int64_t pos = from; pos < to; pos++) {
        const char *row = (const char *)(cache + (table[pos / block_size] * block_size + pos % block_size) * token_stride);
        if (far) for (int64_t byte = 0; byte < token_stride * 2; byte += 64) _mm_prefetch(row + byte, _MM_HINT_T1);
        else for (int64_t byte = 0; byte < token_stride * 2; byte += 64) _mm_prefetch(row + byte, _MM_HINT_T0);
    }
}

static void request_3x64_bf16(const uint16_t *query, const uint16_t *k_cache, const uint16_t *v_cache, const int64_t *table,
                              int64_t len, uint16_t *out, int64_t block_size, int64_t token_stride, int64_t kv_heads, float scale,
                              const int64_t *next_table, int64_t next_len, int far_prefetch) {
    const int64_t padded = (len + 15) / 16 * 16, rows = 3 * kv_heads;
    float *scores = (float *)aligned_alloc(64, sizeof(float) * rows * (padded > 0 ? padded : 16));
    for (int64_t t0 = 0; t0 < len; t0 += 16) {
        const int64_t n = len - t0 < 16 ? len - t0 : 16;
        prefetch_keys(k_cache, table, t0 + 16, len, block_size, token_stride, 0);
        if (far_prefetch) prefetch_keys(v_cache, table, t0, len, block_size, token_stride, 1);
        for (int64_t kh = 0; kh < kv_heads; kh++) {
            __m512bh q[3][2];
            for (int g = 0; g < 3; g++)
                for (int h = 0; h < 2; h++) q[g][h] = (__m512bh)_mm512_loadu_si512(query + (kh * 3 + g) * 64 + h * 32);
            score_tile(q, k_cache, table, t0, n, block_size, token_stride, kh * 64, scores + kh * 3 * padded + t0, padded, scale);
        }
    }
    float *total = (float *)malloc(sizeof(float) * rows);
    exp_rows(scores, rows, len, padded, total);
    __m512 *acc = (__m512 *)aligned_alloc(64, sizeof(__m512) * rows * 4);
    for (int64_t i = 0; i < rows * 4; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t start = 0; start < len; start += block_size) {
        const int64_t end = len - start < block_size ? len : start + block_size;
        const uint16_t *block = v_cache + table[start / block_size] * block_size * token_stride;
        prefetch_keys(v_cache, table, start + block_size, len, block_size, token_stride, 0);
        if (far_prefetch)
            for (int64_t t = start; t < end; t += 16) prefetch_keys(k_cache, next_table, t, next_len, block_size, token_stride, 1);
        for (int64_t kh = 0; kh < kv_heads; kh++) {
            __m512 a[3][4];
            for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) a[g][c] = acc[(kh * 3 + g) * 4 + c];
            for (int64_t t = start; t < end; t++) {
                const uint16_t *v = block + (t - start) * token_stride + kh * 64;
                const __m512 v0 = bf16x16(v), v1 = bf16x16(v + 16), v2 = bf16x16(v + 32), v3 = bf16x16(v + 48);
                for (int g = 0; g < 3; g++) {
                    const __m512 w = _mm512_set1_ps(scores[(kh * 3 + g) * padded + t]);
                    a[g][0] = _mm512_fmadd_ps(w, v0, a[g][0]); a[g][1] = _mm512_fmadd_ps(w, v1, a[g][1]);
                    a[g][2] = _mm512_fmadd_ps(w, v2, a[g][2]); a[g][3] = _mm512_fmadd_ps(w, v3, a[g][3]);
                }
            }
            for (int g = 0; g < 3; g++) for (int c = 0; c < 4; c++) acc[(kh * 3 + g) * 4 + c] = a[g][c];
        }
    }
    for (int64_t g = 0; g < rows; g++) {
        float o[64];
        const float inv = total[g] > 0.0f ? 1.0f / total[g] : 0.0f;
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(acc[g * 4 + c], _mm512_set1_ps(inv)));
        for (int d = 0; d < 64; d++) out[g * 64 + d] = f32_to_bf16(o[d]);
    }
    free(acc); free(total); free(scores);
}
#else
#define HAVE_ROW_3X64_BF16 0
#endif
#define MAX_DIM 256

static inline __attribute__((always_inline)) void load_row(float *dst, const void *src, int64_t at, const int64_t dim, const int is_bf16) {
    if (is_bf16) { const uint16_t *p = (const uint16_t *)src + at; for (int64_t d = 0; d < dim; d++) dst[d] = bf16_to_f32(p[d]); }
    else { const float *p = (const float *)src + at; for (int64_t d = 0; d < dim; d++) dst[d] = p[d]; }
}

/* One (request, KV head): the group of query heads sharing it, over the row's len keys. Inlined
   with constant group / dim / dtype for the common shapes, so the loops over dim vectorize. */
static inline __attribute__((always_inline)) void one_row(
        const void *query, int64_t q_off, const void *k_cache, const void *v_cache, const int64_t *table,
        int64_t len, void *out, int64_t out_off, int64_t block_size, int64_t token_stride, int64_t head_off,
        float scale, const int64_t group, const int64_t dim, const int is_bf16) {
    float q[MAX_GROUP][MAX_DIM], acc[MAX_GROUP][MAX_DIM], kv[MAX_DIM], total[MAX_GROUP];
    float *scores = (float *)malloc(sizeof(float) * group * (len > 0 ? len : 1));
    for (int64_t g = 0; g < group; g++) {
        load_row(q[g], query, q_off + g * dim, dim, is_bf16);
        for (int64_t d = 0; d < dim; d++) { q[g][d] *= scale; acc[g][d] = 0.0f; }
    }
    /* pass 1: scores; each key row is read once for the whole group */
    for (int64_t start = 0, blk = 0; start < len; start += block_size, blk++) {
        const int64_t base = table[blk] * block_size, n = len - start < block_size ? len - start : block_size;
        for (int64_t o = 0; o < n; o++) {
            load_row(kv, k_cache, (base + o) * token_stride + head_off, dim, is_bf16);
            for (int64_t g = 0; g < group; g++) {
                float lanes[16] = {0};
                for (int64_t d = 0; d + 16 <= dim; d += 16)
                    for (int j = 0; j < 16; j++) lanes[j] += q[g][d + j] * kv[d + j];
                float s = 0.0f;
                for (int64_t d = dim - dim % 16; d < dim; d++) s += q[g][d] * kv[d];
                for (int j = 0; j < 16; j++) s += lanes[j];
                scores[g * len + start + o] = s;
            }
        }
    }
    /* softmax per query head (unnormalized; divided at the end) */
    for (int64_t g = 0; g < group; g++) {
        float *sg = scores + g * len, m = -3.0e38f, sum = 0.0f;
        for (int64_t t = 0; t < len; t++) m = sg[t] > m ? sg[t] : m;
        for (int64_t t = 0; t < len; t++) { sg[t] = exp_f(sg[t] - m); sum += sg[t]; }
        total[g] = sum;
    }
    /* pass 2: weighted values */
    for (int64_t start = 0, blk = 0; start < len; start += block_size, blk++) {
        const int64_t base = table[blk] * block_size, n = len - start < block_size ? len - start : block_size;
        for (int64_t o = 0; o < n; o++) {
            load_row(kv, v_cache, (base + o) * token_stride + head_off, dim, is_bf16);
            for (int64_t g = 0; g < group; g++) {
                const float p = scores[g * len + start + o];
                for (int64_t d = 0; d < dim; d++) acc[g][d] += p * kv[d];
            }
        }
    }
    for (int64_t g = 0; g < group; g++) {
        const float inv = total[g] > 0.0f ? 1.0f / total[g] : 0.0f;
        for (int64_t d = 0; d < dim; d++) {
            const float o = acc[g][d] * inv;
            if (is_bf16) ((uint16_t *)out)[out_off + g * dim + d] = f32_to_bf16(o); else ((float *)out)[out_off + g * dim + d] = o;
        }
    }
    free(scores);
}

/* One decode row per request: query [B, heads, dim] (row stride q_stride elements), caches
   [num_blocks, block_size, kv_heads, dim], block_tables [B, table_width], seq_lens [B] (the row's
   context length), out [B, heads, dim] contiguous. is_bf16: query, caches and out are bfloat16,
   else float32. Returns 0, or -1 for a shape it does not take. */
int decode_attention(const void *query, int64_t q_stride, const void *k_cache, const void *v_cache,
                     const int64_t *block_tables, int64_t table_width, const int64_t *seq_lens,
                     void *out, int64_t batch, int64_t heads, int64_t kv_heads, int64_t dim,
                     int64_t block_size, float scale, int is_bf16, int num_threads, int per_head_tasks,
                     int far_prefetch) {
    const int64_t group = heads / kv_heads;
    if (group > MAX_GROUP || dim > MAX_DIM || heads % kv_heads) return -1;
    const int64_t token_stride = kv_heads * dim;
#if HAVE_ROW_3X64_BF16
    /* Enough requests to keep every thread busy: one task per request (request_3x64_bf16 says why). */
    if (group == 3 && dim == 64 && is_bf16 && batch >= 2 * num_threads && !per_head_tasks) {
        #pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
        for (int64_t b = 0; b < batch; b++) {
            const int64_t next = b + num_threads;  /* each thread takes the next free request: about this one */
            request_3x64_bf16((const uint16_t *)query + b * q_stride, (const uint16_t *)k_cache, (const uint16_t *)v_cache,
                              block_tables + b * table_width, seq_lens[b], (uint16_t *)out + b * heads * dim, block_size,
                              token_stride, kv_heads, scale, block_tables + (next < batch ? next : b) * table_width,
                              next < batch ? seq_lens[next] : 0, far_prefetch);
        }
        return 0;
    }
#endif
    #pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t kh = 0; kh < kv_heads; kh++) {
            const int64_t *table = block_tables + b * table_width;
            const int64_t q_off = b * q_stride + kh * group * dim, out_off = (b * heads + kh * group) * dim;
#define ROW(G, D, BF16) one_row(query, q_off, k_cache, v_cache, table, seq_lens[b], out, out_off, block_size, \
                                token_stride, kh * dim, scale, G, D, BF16)
#if HAVE_ROW_3X64_BF16
            if (group == 3 && dim == 64 && is_bf16)
                row_3x64_bf16((const uint16_t *)query + q_off, (const uint16_t *)k_cache, (const uint16_t *)v_cache, table, seq_lens[b],
                              (uint16_t *)out + out_off, block_size, token_stride, kh * dim, scale);
            else
#endif
            if (group == 3 && dim == 64) { if (is_bf16) ROW(3, 64, 1); else ROW(3, 64, 0); }
            else if (dim == 64) { if (is_bf16) ROW(group, 64, 1); else ROW(group, 64, 0); }
            else { if (is_bf16) ROW(group, dim, 1); else ROW(group, dim, 0); }
#undef ROW
        }
    }
    return 0;
}
"""
_DTYPES = {torch.bfloat16: 1, torch.float32: 0}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernel, or None (no cc, a failed build, or SERVETRACE_CPU_KERNELS=0)."""
    library = c_build.load("decode_attention", _SOURCE)
    if library is None:
        return None
    fn = library.decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 5, ctypes.c_float, *[ctypes.c_int] * 4]
    return library


def available() -> bool:
    return _library() is not None


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, per_head_tasks: bool = False,
                     far_prefetch: bool = True) -> torch.Tensor | None:
    """query [B, heads, d] (rows may be strided, heads and d contiguous), caches [num_blocks, block_size,
    kv_heads, d], block_tables [B, W] and seq_lens [B] int64 -> [B, heads, d]; None where the kernel
    does not apply (not built, another device or dtype, a layout it does not take).

    per_head_tasks: one task per (request, KV head) even where a task per request applies (bf16,
    the bundled model's head shape, at least two requests per thread); the same result, for
    bench/cpu_kernels.py's comparison of the two. far_prefetch=False: the task per request without
    its L2 prefetch of the next pass's rows (request_3x64_bf16 says why); the same result, for the
    same bench's comparison."""
    library = _library()
    if (
        library is None or query.device.type != "cpu" or query.dtype not in _DTYPES
        or not (k_cache.dtype == v_cache.dtype == query.dtype) or not (k_cache.is_contiguous() and v_cache.is_contiguous())
        or query.stride(2) != 1 or query.stride(1) != query.shape[2]
    ):
        return None
    batch, heads, dim = query.shape
    _, block_size, kv_heads, _ = k_cache.shape
    tables = block_tables.to(torch.int64).contiguous()
    lens = seq_lens.to(torch.int64).contiguous()
    out = torch.empty((batch, heads, dim), dtype=query.dtype)
    status = library.decode_attention(
        query.data_ptr(), query.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), tables.shape[1],
        lens.data_ptr(), out.data_ptr(), batch, heads, kv_heads, dim, block_size, scale, _DTYPES[query.dtype],
        torch.get_num_threads(), int(per_head_tasks), int(far_prefetch),
    )
    return out if status == 0 else None
