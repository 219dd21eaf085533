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
                     int64_t block_size, float scale, int is_bf16, int num_threads) {
    const int64_t group = heads / kv_heads;
    if (group > MAX_GROUP || dim > MAX_DIM || heads % kv_heads) return -1;
    const int64_t token_stride = kv_heads * dim;
    #pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t kh = 0; kh < kv_heads; kh++) {
            const int64_t *table = block_tables + b * table_width;
            const int64_t q_off = b * q_stride + kh * group * dim, out_off = (b * heads + kh * group) * dim;
#define ROW(G, D, BF16) one_row(query, q_off, k_cache, v_cache, table, seq_lens[b], out, out_off, block_size, \
                                token_stride, kh * dim, scale, G, D, BF16)
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
                   ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 5, ctypes.c_float, ctypes.c_int, ctypes.c_int]
    return library


def available() -> bool:
    return _library() is not None


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float) -> torch.Tensor | None:
    """query [B, heads, d] (rows may be strided, heads and d contiguous), caches [num_blocks, block_size,
    kv_heads, d], block_tables [B, W] and seq_lens [B] int64 -> [B, heads, d]; None where the kernel
    does not apply (not built, another device or dtype, a layout it does not take)."""
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
        torch.get_num_threads(),
    )
    return out if status == 0 else None
