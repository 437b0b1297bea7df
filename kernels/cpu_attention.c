/*
 * Paged decode attention for the CPU: one query token per sequence, keys and values read
 * in place from the paged cache (no gathered copies, no padding).
 *
 * Compiled at first use by fw.kernels.cpu_attention with the system C compiler
 * (-O3 -march=native -ffast-math -fopenmp), called through ctypes, which releases the GIL.
 * Work is split over `num_threads` OpenMP threads by sequence.
 *
 * Layouts (element strides are given for every tensor, innermost dimension contiguous):
 *   query  [num_tokens, num_heads, head_dim]
 *   caches [num_blocks, block_size, num_kv_heads, head_dim]  (keys and values separately)
 *   out    [num_tokens, num_heads, head_dim]
 * dtype (query and out): 0 = float32, 1 = bfloat16. cache_dtype: the same as dtype, or an fp8
 * cache: 2 = e4m3, 3 = e5m2, read in place and converted row by row (see fp8_row_to_f32).
 * `scale` multiplies q.k (the softmax scale times the key scale); `v_scale` multiplies the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__))
#include <immintrin.h>
#endif

#define MAX_HEAD_DIM 256
#define MAX_HEADS 128

/* ---------------------------------------------------------------- fp8 -> float32
   An fp8 byte becomes the float16 with its sign, exponent and mantissa bits shifted into place,
   which the F16C / AVX-512 instructions widen to float32, 8 or 16 at a time. e5m2 is float16's
   top byte, so that is its value. e4m3's exponent has bias 7, not 15: the float16 is 2^-8 of its
   value, subnormals included (they land on float16 subnormals), and the caller folds 2^8 into
   its scales. Where neither instruction set is compiled in, a 256-entry table per format holds
   the same float16 values. (0x7F/0xFF, e4m3's NaN, reads as 480: fw's writers saturate, so a
   cache never holds it unless the model produced NaN.) */
static float fp8_table[2][256]; /* [e5m2][byte]: the float16 view, as float32 */

__attribute__((constructor)) static void fill_fp8_tables(void) {
    for (int byte = 0; byte < 256; byte++) {
        const float sign = byte & 0x80 ? -1.0f : 1.0f;
        const int e4 = (byte >> 3) & 15, m3 = byte & 7, e5 = (byte >> 2) & 31, m2 = byte & 3;
        /* the float16 with exponent field e4 / e5 (bias 15; 0 = subnormal) and mantissa m3 / m2 */
        fp8_table[0][byte] = sign * (e4 ? ldexpf(1.0f + m3 / 8.0f, e4 - 15) : ldexpf(m3 / 8.0f, -14));
        fp8_table[1][byte] = sign * (e5 == 31 ? (m2 ? NAN : INFINITY)
                                     : e5 ? ldexpf(1.0f + m2 / 4.0f, e5 - 15) : ldexpf(m2 / 4.0f, -14));
    }
}

/* Which conversion this build uses: 2 = AVX-512, 1 = AVX2 + F16C, 0 = the table (for tests). */
int fp8_conversion_path(void) {
#if defined(__AVX512F__)
    return 2;
#elif defined(__AVX2__) && defined(__F16C__)
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512F__)
static inline __m512 fp8x16_to_f32(const uint8_t *src, int e4m3) {
    __m256i h = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)src));
    if (e4m3)
        h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7F)), 7),
                            _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x80)), 8));
    else
        h = _mm256_slli_epi16(h, 8);
    return _mm512_cvtph_ps(h);
}
#elif defined(__AVX2__) && defined(__F16C__)
static inline __m256 fp8x8_to_f32(const uint8_t *src, int e4m3) {
    __m128i h = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)src));
    if (e4m3)
        h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7F)), 7),
                         _mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x80)), 8));
    else
        h = _mm_slli_epi16(h, 8);
    return _mm256_cvtph_ps(h);
}
#endif

static inline void fp8_row_to_f32(const uint8_t *src, int64_t n, int e4m3, float *dst) {
    int64_t d = 0;
#if defined(__AVX512F__)
    for (; d + 16 <= n; d += 16) _mm512_storeu_ps(dst + d, fp8x16_to_f32(src + d, e4m3));
#elif defined(__AVX2__) && defined(__F16C__)
    for (; d + 8 <= n; d += 8) _mm256_storeu_ps(dst + d, fp8x8_to_f32(src + d, e4m3));
#endif
    const float *table = fp8_table[!e4m3];
    for (; d < n; d++) dst[d] = table[src[d]];
}

typedef struct {
    const void *query, *k_cache, *v_cache;
    void *out;
    int64_t q_tok, q_head, c_block, c_slot, c_head, o_tok, o_head;
    const int32_t *block_tables;
    int64_t bt_stride;
    const int32_t *seq_lens;
    const int64_t *token_rows;
    int64_t num_seqs, num_heads, num_kv_heads, head_dim, block_size, sliding_window;
    float scale, v_scale;
    int dtype, cache_dtype;
} Args;

/* A row of head_dim values as float32: the row itself, or converted into `buffer`. */
static inline const float *row_f32(const void *base, int64_t offset, int dtype, int64_t n, float *buffer) {
    if (dtype == 0) return (const float *)base + offset;
    if (dtype >= 2) {
        fp8_row_to_f32((const uint8_t *)base + offset, n, dtype == 2, buffer);
        return buffer;
    }
    const uint16_t *src = (const uint16_t *)base + offset;
    for (int64_t d = 0; d < n; d++) buffer[d] = bf16_to_f32(src[d]);
    return buffer;
}

/* One job is one sequence, all its kv heads: each cache row (all heads of one token) is
   read once per pass, front to back, which the memory system streams well. Inlined with
   a constant head_dim for the common sizes, so the compiler unrolls and vectorises. */
static inline __attribute__((always_inline)) void attend_impl(const Args *a, int64_t seq, float *scores,
                                                              const int64_t D) {
    const int64_t H = a->num_heads, Hkv = a->num_kv_heads, G = H / Hkv, bs = a->block_size;
    const int64_t len = a->seq_lens[seq], row = a->token_rows[seq];
    const int64_t first = a->sliding_window > 0 && len > a->sliding_window ? len - a->sliding_window : 0;
    const int32_t *table = a->block_tables + seq * a->bt_stride;
    float q[MAX_HEADS][MAX_HEAD_DIM], acc[MAX_HEADS][MAX_HEAD_DIM], buffer[MAX_HEAD_DIM];
    float maxes[MAX_HEADS], sums[MAX_HEADS];

    for (int64_t h = 0; h < H; h++) {
        const float *src = row_f32(a->query, row * a->q_tok + h * a->q_head, a->dtype, D, buffer);
        for (int64_t d = 0; d < D; d++) q[h][d] = src[d] * a->scale;
        maxes[h] = -INFINITY;
        sums[h] = 0.0f;
        memset(acc[h], 0, D * sizeof(float));
    }
    const int64_t first_block = first / bs, last_block = (len - 1) / bs;
    /* Pass 1: scores[h][p] = q_h . k_p (block by block: no division per position) */
    for (int64_t b = first_block; b <= last_block; b++) {
        const int64_t p0 = b * bs, lo = first > p0 ? first - p0 : 0, hi = len - p0 < bs ? len - p0 : bs;
        const int64_t base = (int64_t)table[b] * a->c_block;
        for (int64_t i = lo; i < hi; i++) {
            for (int64_t kh = 0; kh < Hkv; kh++) {
                const float *k = row_f32(a->k_cache, base + i * a->c_slot + kh * a->c_head, a->cache_dtype, D,
                                         buffer);
                for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                    float dot = 0.0f;
                    for (int64_t d = 0; d < D; d++) dot += q[h][d] * k[d];
                    scores[h * len + p0 + i] = dot;
                    if (dot > maxes[h]) maxes[h] = dot;
                }
            }
        }
    }
    for (int64_t h = 0; h < H; h++) {
        float *s = scores + h * len;
        for (int64_t p = first; p < len; p++) {
            s[p] = expf(s[p] - maxes[h]);
            sums[h] += s[p];
        }
    }
    /* Pass 2: acc_h = sum_p softmax_h[p] * v_p */
    for (int64_t b = first_block; b <= last_block; b++) {
        const int64_t p0 = b * bs, lo = first > p0 ? first - p0 : 0, hi = len - p0 < bs ? len - p0 : bs;
        const int64_t base = (int64_t)table[b] * a->c_block;
        for (int64_t i = lo; i < hi; i++) {
            for (int64_t kh = 0; kh < Hkv; kh++) {
                const float *v = row_f32(a->v_cache, base + i * a->c_slot + kh * a->c_head, a->cache_dtype, D,
                                         buffer);
                for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                    const float w = scores[h * len + p0 + i];
                    for (int64_t d = 0; d < D; d++) acc[h][d] += w * v[d];
                }
            }
        }
    }
    for (int64_t h = 0; h < H; h++) {
        float inv = a->v_scale / sums[h];
        int64_t offset = row * a->o_tok + h * a->o_head;
        if (a->dtype == 0) {
            float *dst = (float *)a->out + offset;
            for (int64_t d = 0; d < D; d++) dst[d] = acc[h][d] * inv;
        } else {
            uint16_t *dst = (uint16_t *)a->out + offset;
            for (int64_t d = 0; d < D; d++) dst[d] = f32_to_bf16(acc[h][d] * inv);
        }
    }
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)

/* Lane i of the result is the sum of v[i]'s 16 lanes: the 16 horizontal sums of a block of
   positions in 45 shuffles and adds instead of 16 separate reductions. */
static inline __m512 reduce16(const __m512 v[16]) {
    __m512 t[8], u[4], w[2];
    for (int i = 0; i < 8; i++)  /* per 128-bit chunk: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)  /* per chunk: the chunk's partial sums of v[4i..4i+3] */
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++)  /* chunks: [u0 c0+c1, u0 c2+c3, u1 c0+c1, u1 c2+c3] */
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

#define PREFETCH_AHEAD 48

static inline __m512 bf16x16_to_f32(const uint16_t *src) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
}

/* The bfloat16 path on CPUs with AVX512-BF16: q.k with vdpbf16ps on the cached bf16 keys
   (no conversion), scores of 16 positions reduced together, values summed in float32 with
   the accumulators in registers. One sequence, all its kv heads; D a multiple of 32.
   With FP8 (a bf16 query over an fp8 cache) the 16 positions' keys are first widened into a
   bf16 buffer (exact: an fp8 value has at most 3 mantissa bits) that vdpbf16ps then reads, and
   values are widened to float32 directly. Measured on the 2-core dev machine (SmolLM2-135M
   shapes, 8 decodes of 512 tokens, 2 threads): 7.1 ms per step through attend_impl's row-by-row
   widening, 5.3 ms here, against 5.2 ms for a bf16 cache. */
static inline __attribute__((always_inline)) void attend_bf16_impl(const Args *a, int64_t seq, float *scores,
                                                                   const int64_t D, const int64_t G,
                                                                   const int FP8) {
    const int64_t bs = a->block_size, Hkv = a->num_kv_heads, NV = D / 32, NW = D / 16;
    const int64_t len = a->seq_lens[seq], row = a->token_rows[seq];
    const int64_t first = a->sliding_window > 0 && len > a->sliding_window ? len - a->sliding_window : 0;
    const int32_t *table = a->block_tables + seq * a->bt_stride;
    const uint16_t *query = (const uint16_t *)a->query, *k_cache = (const uint16_t *)a->k_cache;
    const uint16_t *v_cache = (const uint16_t *)a->v_cache;
    const uint8_t *k_cache8 = (const uint8_t *)a->k_cache, *v_cache8 = (const uint8_t *)a->v_cache;
    const int e4m3 = a->cache_dtype == 2;
    const int64_t elem = FP8 ? 1 : 2; /* bytes per cached value */
    uint16_t widened[FP8 ? 16 : 1][FP8 ? D : 1] __attribute__((aligned(64)));
    const __m512 scale = _mm512_set1_ps(a->scale);

    for (int64_t kh = 0; kh < Hkv; kh++) {
        __m512bh q[G][NV];
        float maxes[G], sums[G];
        for (int64_t g = 0; g < G; g++) {
            const uint16_t *src = query + row * a->q_tok + (kh * G + g) * a->q_head;
            for (int64_t v = 0; v < NV; v++) q[g][v] = (__m512bh)_mm512_loadu_si512(src + 32 * v);
            maxes[g] = -INFINITY;
        }
        /* Pass 1: scores[g][p] = scale * q_g . k_p, 16 positions at a time */
        for (int64_t p0 = first; p0 < len; p0 += 16) {
            const int64_t n = len - p0 < 16 ? len - p0 : 16;
            const uint16_t *keys[16];
            for (int64_t i = 0; i < n; i++) {
                const int64_t p = p0 + i;
                const int64_t offset = (int64_t)table[p / bs] * a->c_block + (p % bs) * a->c_slot + kh * a->c_head;
                if (FP8) {
                    for (int64_t v = 0; v < NV; v++)
                        _mm512_store_si512(widened[i] + 32 * v, (__m512i)_mm512_cvtne2ps_pbh(
                            fp8x16_to_f32(k_cache8 + offset + 32 * v + 16, e4m3),
                            fp8x16_to_f32(k_cache8 + offset + 32 * v, e4m3)));
                    keys[i] = widened[i];
                } else {
                    keys[i] = k_cache + offset;
                }
            }
            const __mmask16 mask = (__mmask16)((1u << n) - 1);
            if (kh == 0) {
                /* The cache is read in scattered blocks, so the hardware prefetchers see little:
                   ask for the keys and values (all heads) PREFETCH_AHEAD positions ahead now. */
                const int64_t row_bytes = Hkv * D * elem;
                const int64_t from = p0 == first ? p0 : p0 + PREFETCH_AHEAD - 16;
                for (int64_t p = from; p < p0 + PREFETCH_AHEAD && p < len; p++) {
                    const int64_t offset = ((int64_t)table[p / bs] * a->c_block + (p % bs) * a->c_slot) * elem;
                    for (int64_t e = 0; e < row_bytes; e += 64) {
                        _mm_prefetch((const char *)a->k_cache + offset + e, _MM_HINT_T0);
                        _mm_prefetch((const char *)a->v_cache + offset + e, _MM_HINT_T1);
                    }
                }
            }
            for (int64_t g = 0; g < G; g++) {
                __m512 dots[16];
                for (int64_t i = 0; i < 16; i++) {
                    dots[i] = _mm512_setzero_ps();
                    if (i < n) {
                        for (int64_t v = 0; v < NV; v++)
                            dots[i] = _mm512_dpbf16_ps(dots[i], q[g][v], (__m512bh)_mm512_loadu_si512(keys[i] + 32 * v));
                    }
                }
                const __m512 s = _mm512_mul_ps(reduce16(dots), scale);
                _mm512_mask_storeu_ps(scores + g * len + p0, mask, s);
                const float m = _mm512_mask_reduce_max_ps(mask, s);
                maxes[g] = m > maxes[g] ? m : maxes[g];
            }
        }
        for (int64_t g = 0; g < G; g++) {
            float *s = scores + g * len, sum = 0.0f;
            for (int64_t p = first; p < len; p++) {
                s[p] = expf(s[p] - maxes[g]);
                sum += s[p];
            }
            sums[g] = sum;
        }
        /* Pass 2: acc_g = sum_p softmax_g[p] * v_p, in float32 */
        __m512 acc[G][NW];
        for (int64_t g = 0; g < G; g++)
            for (int64_t j = 0; j < NW; j++) acc[g][j] = _mm512_setzero_ps();
        for (int64_t b = first / bs; b <= (len - 1) / bs; b++) {
            const int64_t p0 = b * bs, lo = first > p0 ? first - p0 : 0, hi = len - p0 < bs ? len - p0 : bs;
            const int64_t base = (int64_t)table[b] * a->c_block + kh * a->c_head;
            for (int64_t i = lo; i < hi; i++) {
                __m512 values[NW];
                for (int64_t j = 0; j < NW; j++)
                    values[j] = FP8 ? fp8x16_to_f32(v_cache8 + base + i * a->c_slot + 16 * j, e4m3)
                                    : bf16x16_to_f32(v_cache + base + i * a->c_slot + 16 * j);
                for (int64_t g = 0; g < G; g++) {
                    const __m512 w = _mm512_set1_ps(scores[g * len + p0 + i]);
                    for (int64_t j = 0; j < NW; j++) acc[g][j] = _mm512_fmadd_ps(w, values[j], acc[g][j]);
                }
            }
        }
        for (int64_t g = 0; g < G; g++) {
            const __m512 inv = _mm512_set1_ps(a->v_scale / sums[g]);
            uint16_t *dst = (uint16_t *)a->out + row * a->o_tok + (kh * G + g) * a->o_head;
            for (int64_t j = 0; j < NW; j++)
                _mm256_storeu_si256((__m256i *)(dst + 16 * j), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[g][j], inv)));
        }
    }
}

#define BF16_CASE(D_, G_, FP8_) case G_: attend_bf16_impl(a, seq, scores, D_, G_, FP8_); return 1;
#define BF16_CASES(D_, FP8_) BF16_CASE(D_, 1, FP8_) BF16_CASE(D_, 2, FP8_) BF16_CASE(D_, 3, FP8_) \
    BF16_CASE(D_, 4, FP8_) BF16_CASE(D_, 5, FP8_) BF16_CASE(D_, 6, FP8_) BF16_CASE(D_, 7, FP8_) BF16_CASE(D_, 8, FP8_)

/* 1 when the AVX512-BF16 path took the sequence (a bf16 query over a bf16 or fp8 cache,
   head_dim 64 or 128, up to 8 query heads per kv head: the common shapes, each compiled with
   its sizes as constants). */
static int attend_bf16(const Args *a, int64_t seq, float *scores) {
    if (a->dtype != 1 || a->cache_dtype == 0) return 0;
    const int64_t G = a->num_heads / a->num_kv_heads;
    if (a->cache_dtype == 1) {
        if (a->head_dim == 64) {
            switch (G) { BF16_CASES(64, 0) }
        } else if (a->head_dim == 128) {
            switch (G) { BF16_CASES(128, 0) }
        }
    } else if (a->head_dim == 64) {
        switch (G) { BF16_CASES(64, 1) }
    } else if (a->head_dim == 128) {
        switch (G) { BF16_CASES(128, 1) }
    }
    return 0;
}
#else
static int attend_bf16(const Args *a, int64_t seq, float *scores) { return 0; }
#endif

static void attend(const Args *a, int64_t seq, float *scores) {
    if (attend_bf16(a, seq, scores)) return;
    switch (a->head_dim) {
        case 64: attend_impl(a, seq, scores, 64); break;
        case 128: attend_impl(a, seq, scores, 128); break;
        default: attend_impl(a, seq, scores, a->head_dim);
    }
}

/* Returns 0 on success, 1 on bad arguments or out of memory. */
int paged_decode_attention(
    const void *query, int64_t q_tok, int64_t q_head,
    const void *k_cache, const void *v_cache, int64_t c_block, int64_t c_slot, int64_t c_head,
    const int32_t *block_tables, int64_t bt_stride, const int32_t *seq_lens, const int64_t *token_rows,
    int64_t num_seqs, void *out, int64_t o_tok, int64_t o_head,
    int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
    float scale, float v_scale, int64_t sliding_window, int dtype, int cache_dtype, int num_threads) {
    if (head_dim > MAX_HEAD_DIM || num_heads > MAX_HEADS || num_heads % num_kv_heads) return 1;
    Args base = {query, k_cache, v_cache, out, q_tok, q_head, c_block, c_slot, c_head, o_tok, o_head,
                 block_tables, bt_stride, seq_lens, token_rows, num_seqs, num_heads, num_kv_heads, head_dim,
                 block_size, sliding_window, scale, v_scale, dtype, cache_dtype};
    int64_t max_len = 0;
    for (int64_t j = 0; j < num_seqs; j++) {
        if (seq_lens[j] > max_len) max_len = seq_lens[j];
    }
    int failed = 0;
    /* torch's own OpenMP runtime runs this (the process has one libgomp.so.1, loaded by
       torch first): its worker threads, still spinning after torch's last op, take the
       work at once instead of competing with threads of our own for the cores. */
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        float *scores = (float *)malloc(sizeof(float) * (num_heads * max_len + 1));
        if (scores == NULL) failed = 1; /* every thread must still reach the loop's barrier */
#pragma omp for schedule(dynamic, 4)
        for (int64_t j = 0; j < num_seqs; j++) {
            if (scores != NULL) attend(&base, j, scores);
        }
        free(scores);
    }
    return failed;
}
