/*
 * Fused per-token operations for the CPU: each replaces a chain of small torch ops (and
 * their dispatch and temporaries) with one pass over the rows.
 *
 * Compiled at first use by fw.kernels.cpu_ops (same build as cpu_attention.c), called
 * through ctypes (which releases the GIL), run on torch's OpenMP threads.
 *
 * Every function computes in float32 and rounds once to the tensors' dtype
 * (0 = float32, 1 = bfloat16), as vLLM's fused CPU and GPU ops do; in float32 the results
 * equal the torch compositions up to float rounding of the reductions.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"

#define MAX_ROW 16384

static inline void load_row(const void *base, int64_t offset, int dtype, int64_t n, float *dst) {
    if (dtype == 0) {
        memcpy(dst, (const float *)base + offset, n * sizeof(float));
    } else {
        const uint16_t *src = (const uint16_t *)base + offset;
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    }
}

static inline void store_row(void *base, int64_t offset, int dtype, int64_t n, const float *src) {
    if (dtype == 0) {
        memcpy((float *)base + offset, src, n * sizeof(float));
    } else {
        uint16_t *dst = (uint16_t *)base + offset;
        for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
    }
}

/* Rounds a float32 value to the dtype and back (bfloat16 keeps 8 bits of mantissa). */
static inline float round_to(float x, int dtype) {
    return dtype == 0 ? x : bf16_to_f32(f32_to_bf16(x));
}

/*
 * out[t] = weight * round(r * rsqrt(mean(r^2) + eps)), with r = x[t], or, when residual is
 * given, r = round(x[t] + residual[t]) also stored back into residual[t] (the decoder's
 * "add the sublayer's output to the stream, then normalise" in one pass).
 * Rows: x [T, D] (row stride x_stride), residual [T, D] (r_stride), out [T, D] (o_stride).
 */
int rms_norm(const void *x, int64_t x_stride, void *residual, int64_t r_stride, const void *weight,
             void *out, int64_t o_stride, int64_t num_rows, int64_t dim, float eps, int dtype,
             int num_threads) {
    if (dim > MAX_ROW) return 1;
    float w[MAX_ROW];
    load_row(weight, 0, dtype, dim, w);
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t t = 0; t < num_rows; t++) {
        float r[MAX_ROW];
        load_row(x, t * x_stride, dtype, dim, r);
        if (residual != NULL) {
            float res[MAX_ROW];
            load_row(residual, t * r_stride, dtype, dim, res);
            for (int64_t i = 0; i < dim; i++) r[i] = round_to(r[i] + res[i], dtype);
            store_row(residual, t * r_stride, dtype, dim, r);
        }
        float sum = 0.0f;
        for (int64_t i = 0; i < dim; i++) sum += r[i] * r[i];
        const float inv = 1.0f / sqrtf(sum / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) r[i] = w[i] * round_to(r[i] * inv, dtype);
        store_row(out, t * o_stride, dtype, dim, r);
    }
    return 0;
}

/* out[t] = silu(gate_up[t, :I]) * gate_up[t, I:]: the gated MLP's activation. */
int silu_and_mul(const void *gate_up, int64_t g_stride, void *out, int64_t o_stride, int64_t num_rows,
                 int64_t dim, int dtype, int num_threads) {
    if (dim > MAX_ROW) return 1;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t t = 0; t < num_rows; t++) {
        float g[MAX_ROW], u[MAX_ROW];
        load_row(gate_up, t * g_stride, dtype, dim, g);
        load_row(gate_up, t * g_stride + dim, dtype, dim, u);
        for (int64_t i = 0; i < dim; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        store_row(out, t * o_stride, dtype, dim, g);
    }
    return 0;
}

/*
 * Neox-style rotary embedding in place: for each head of q [T, Hq, D] and k [T, Hk, D]
 * (token and head strides given), x1 = x[:D/2], x2 = x[D/2:] become
 * x1 * cos - x2 * sin and x2 * cos + x1 * sin, with cos, sin [T, D/2] (row strides given,
 * in the same dtype).
 */
int rotary_neox(void *q, int64_t q_tok, int64_t q_head, int64_t num_q_heads, void *k, int64_t k_tok,
                int64_t k_head, int64_t num_k_heads, const void *cos, const void *sin, int64_t cs_stride,
                int64_t num_rows, int64_t head_dim, int dtype, int num_threads) {
    const int64_t half = head_dim / 2;
    if (head_dim > MAX_ROW || head_dim % 2) return 1;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t t = 0; t < num_rows; t++) {
        float c[MAX_ROW / 2], s[MAX_ROW / 2], x[MAX_ROW];
        load_row(cos, t * cs_stride, dtype, half, c);
        load_row(sin, t * cs_stride, dtype, half, s);
        for (int64_t which = 0; which < 2; which++) {
            void *base = which ? k : q;
            const int64_t heads = which ? num_k_heads : num_q_heads;
            const int64_t tok = which ? k_tok : q_tok, head = which ? k_head : q_head;
            for (int64_t h = 0; h < heads; h++) {
                const int64_t offset = t * tok + h * head;
                load_row(base, offset, dtype, head_dim, x);
                float y[MAX_ROW];
                for (int64_t i = 0; i < half; i++) {
                    y[i] = x[i] * c[i] - x[i + half] * s[i];
                    y[i + half] = x[i + half] * c[i] + x[i] * s[i];
                }
                store_row(base, offset, dtype, head_dim, y);
            }
        }
    }
    return 0;
}

/* -inf, tested on the bits: -ffast-math lets the compiler assume no infinities in comparisons. */
static inline int is_minus_inf(float x) {
    union { float f; uint32_t u; } v;
    v.f = x;
    return v.u == 0xFF800000u;
}

#define SAMPLE_BLOCK 256

/*
 * One token per row of logits [N, V] (row stride l_stride, float32 or bfloat16): the argmax
 * (the first maximum, as torch's) where temperature[n] <= 0, else a sample from
 * softmax(logits / temperature) found by walking the row's cumulative probabilities to
 * uniform[n] (in [0, 1)) of their total: the inverse-CDF draw of the torch path, without a
 * probabilities tensor or a cumsum. Masked tokens (-inf) have probability 0 and never come out.
 */
int sample_rows(const void *logits, int64_t l_stride, int dtype, const float *temperature, const float *uniform,
                int64_t *out, int64_t num_rows, int64_t vocab, int num_threads) {
    int failed = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        float *row = (float *)malloc(sizeof(float) * vocab);
        if (row == NULL) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t n = 0; n < num_rows; n++) {
            if (row == NULL) continue;
            load_row(logits, n * l_stride, dtype, vocab, row);
            float best = row[0];
            for (int64_t i = 1; i < vocab; i++) best = row[i] > best ? row[i] : best;
            int64_t best_i = 0;
            while (best_i < vocab - 1 && row[best_i] != best) best_i++;
            if (!(temperature[n] > 0.0f) || is_minus_inf(best)) {
                out[n] = best_i;
                continue;
            }
            const float inv_t = 1.0f / temperature[n];
            float total = 0.0f;
            for (int64_t i = 0; i < vocab; i++) {
                const float p = is_minus_inf(row[i]) ? 0.0f : expf((row[i] - best) * inv_t);
                row[i] = p;
                total += p;
            }
            const float target = uniform[n] * total;
            /* Whole blocks first (vectorised sums), then token by token inside the block. */
            float acc = 0.0f;
            int64_t chosen = -1, last = best_i;
            for (int64_t b = 0; b < vocab && chosen < 0; b += SAMPLE_BLOCK) {
                const int64_t end = b + SAMPLE_BLOCK < vocab ? b + SAMPLE_BLOCK : vocab;
                float block = 0.0f;
                for (int64_t i = b; i < end; i++) block += row[i];
                if (acc + block <= target) {
                    acc += block;
                    for (int64_t i = end - 1; i >= b && block > 0.0f; i--) {
                        if (row[i] > 0.0f) {
                            last = i;
                            break;
                        }
                    }
                    continue;
                }
                for (int64_t i = b; i < end; i++) {
                    if (row[i] > 0.0f) {
                        acc += row[i];
                        last = i;
                        if (acc > target) {
                            chosen = i;
                            break;
                        }
                    }
                }
            }
            /* float rounding can leave the target just above the walked sum: the last possible token */
            out[n] = chosen < 0 ? last : chosen;
        }
        free(row);
    }
    return failed;
}
