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
 * dtype: 0 = float32, 1 = bfloat16 (query, caches and out share it).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"

#define MAX_HEAD_DIM 256
#define MAX_HEADS 128

typedef struct {
    const void *query, *k_cache, *v_cache;
    void *out;
    int64_t q_tok, q_head, c_block, c_slot, c_head, o_tok, o_head;
    const int32_t *block_tables;
    int64_t bt_stride;
    const int32_t *seq_lens;
    const int64_t *token_rows;
    int64_t num_seqs, num_heads, num_kv_heads, head_dim, block_size, sliding_window;
    float scale;
    int dtype;
} Args;

/* A row of head_dim values as float32: the row itself, or converted into `buffer`. */
static inline const float *row_f32(const void *base, int64_t offset, int dtype, int64_t n, float *buffer) {
    if (dtype == 0) return (const float *)base + offset;
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
                const float *k = row_f32(a->k_cache, base + i * a->c_slot + kh * a->c_head, a->dtype, D, buffer);
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
                const float *v = row_f32(a->v_cache, base + i * a->c_slot + kh * a->c_head, a->dtype, D, buffer);
                for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                    const float w = scores[h * len + p0 + i];
                    for (int64_t d = 0; d < D; d++) acc[h][d] += w * v[d];
                }
            }
        }
    }
    for (int64_t h = 0; h < H; h++) {
        float inv = 1.0f / sums[h];
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

static void attend(const Args *a, int64_t seq, float *scores) {
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
    float scale, int64_t sliding_window, int dtype, int num_threads) {
    if (head_dim > MAX_HEAD_DIM || num_heads > MAX_HEADS || num_heads % num_kv_heads) return 1;
    Args base = {query, k_cache, v_cache, out, q_tok, q_head, c_block, c_slot, c_head, o_tok, o_head,
                 block_tables, bt_stride, seq_lens, token_rows, num_seqs, num_heads, num_kv_heads, head_dim,
                 block_size, sliding_window, scale, dtype};
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
