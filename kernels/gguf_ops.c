/* fw's GGUF kernels: repack llama.cpp's quantized rows once, then multiply activations by
 * them in packed form, and look rows up (a quantized token embedding).
 *
 * Layout: gguf_layout.h. Activations are quantized per row to int8 blocks of 32 with one
 * float scale each (amax / 127, as llama.cpp's Q8_0/Q8_1 do) and the block's integer sums
 * (per 16-column half), which carry the weight's offset or min term. Integer dot products
 * then do the work: AVX-512 VNNI or AVX2 (gguf_x86.h), chosen by the caller from
 * gguf_isa_supported(); a portable path in plain C computes the same sums everywhere else.
 * Threads (OpenMP, torch's libgomp) split the groups of 16 output rows.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"
#include "gguf_layout.h"

enum { ISA_PORTABLE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
enum { DT_F32 = 0, DT_BF16 = 1 };

typedef struct {
    int8_t *q;   /* [M, K] */
    float *d;    /* [M, K / 32] the block's scale */
    int32_t *qs; /* [M, K / 32, 2] sums of each 16-column half of q */
    float *sa;   /* [M, K / 32] d * (sum of the block's q) */
} Act;

typedef void (*GroupFn)(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res);
typedef void (*DequantFn)(const uint8_t *w, int64_t nb, void *out, int64_t ldo, int bf16);

#if defined(__x86_64__)
#include "gguf_x86.h"
#endif

/* ------------------------------------------------------------------ GGUF blocks */

static inline float f16_at(const uint8_t *p) { return half_to_float((uint16_t)(p[0] | (p[1] << 8))); }

/* Column block s (32 values) of a GGUF row: unsigned (or Q8's signed) quants, the scale of
 * each 16-column half and the min. */
static void decode_block(int type, const uint8_t *row, int64_t s, uint8_t u[32], float sc[2], float *mn) {
    *mn = 0.0f;
    if (type == T_Q4_0 || type == T_Q4_1 || type == T_Q5_0 || type == T_Q5_1) {
        const int64_t size = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22 : 24;
        const uint8_t *blk = row + s * size, *p = blk + 2;
        sc[0] = sc[1] = f16_at(blk);
        if (type == T_Q4_1 || type == T_Q5_1) { *mn = f16_at(p); p += 2; }
        uint32_t qh = 0;
        if (type == T_Q5_0 || type == T_Q5_1) { memcpy(&qh, p, 4); p += 4; }
        for (int j = 0; j < 16; j++) {
            u[j] = (uint8_t)((p[j] & 0x0F) | (((qh >> j) & 1) << 4));
            u[j + 16] = (uint8_t)((p[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        }
    } else if (type == T_Q8_0) {
        const uint8_t *blk = row + s * 34;
        sc[0] = sc[1] = f16_at(blk);
        memcpy(u, blk + 2, 32);
    } else if (type == T_Q4_K || type == T_Q5_K) {
        const int64_t size = type == T_Q4_K ? 144 : 176;
        const uint8_t *blk = row + (s / 8) * size, *scales = blk + 4;
        const int j = (int)(s % 8);
        const uint8_t *qs = blk + (type == T_Q4_K ? 16 : 48) + 32 * (j / 2), *qh = blk + 16;
        int sv, mv; /* 6-bit scale and min of sub-block j */
        if (j < 4) {
            sv = scales[j] & 63;
            mv = scales[j + 4] & 63;
        } else {
            sv = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
            mv = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
        sc[0] = sc[1] = f16_at(blk) * (float)sv;
        *mn = -f16_at(blk + 2) * (float)mv;
        for (int l = 0; l < 32; l++) {
            uint8_t v = (j % 2) ? (qs[l] >> 4) : (qs[l] & 0x0F);
            if (type == T_Q5_K) v |= (uint8_t)(((qh[l] >> j) & 1) << 4);
            u[l] = v;
        }
    } else { /* Q6_K: ql[128] qh[64] scales[16] d */
        const uint8_t *blk = row + (s / 8) * 210;
        const int h = (int)(s % 8) / 4, t = (int)(s % 8) % 4;
        const uint8_t *ql = blk + 64 * h + 32 * (t % 2), *qh = blk + 128 + 32 * h;
        const int8_t *scales = (const int8_t *)(blk + 192);
        const float d = f16_at(blk + 208);
        sc[0] = d * scales[2 * (s % 8)];
        sc[1] = d * scales[2 * (s % 8) + 1];
        for (int l = 0; l < 32; l++)
            u[l] = (uint8_t)(((t / 2) ? (ql[l] >> 4) : (ql[l] & 0x0F)) | (((qh[l] >> (2 * t)) & 3) << 4));
    }
}

static void place_block(const Kind *kind, uint8_t *blk, int r, const uint8_t u[32], const float sc[2], float mn) {
    for (int col = 0; col < 32; col++) {
        const int g = col / 4, j = col % 4;
        if (kind->bits == 8) {
            blk[64 * g + 4 * r + j] = u[col];
            continue;
        }
        blk[64 * (col / 8) + 4 * r + j] |= (uint8_t)((u[col] & 0x0F) << (4 * (g % 2)));
        if (kind->bits == 5) blk[256 + 4 * r + j] |= (uint8_t)(((u[col] >> 4) & 1) << g);
        if (kind->bits == 6) blk[256 + 64 * (g / 4) + 4 * r + j] |= (uint8_t)(((u[col] >> 4) & 3) << (2 * (g % 4)));
    }
    uint8_t *scales = blk + quant_bytes(kind->bits);
    for (int s = 0; s < kind->nscales; s++) {
        const uint16_t h = float_to_half(sc[s]);
        memcpy(scales + 32 * s + 2 * r, &h, 2);
    }
    if (kind->has_min) {
        const uint16_t h = float_to_half(mn);
        memcpy(scales + 32 * kind->nscales + 2 * r, &h, 2);
    }
}

/* Value of row r, column col (< 32) of a repacked block. */
static inline float block_value(const Kind *kind, const uint8_t *blk, int r, int col) {
    const int g = col / 4, j = col % 4;
    const uint8_t *scales = blk + quant_bytes(kind->bits);
    const float scale = half_to_float((uint16_t)(scales[32 * (col / 16 % kind->nscales) + 2 * r] |
                                                 (scales[32 * (col / 16 % kind->nscales) + 2 * r + 1] << 8)));
    if (kind->bits == 8) return scale * (float)(int8_t)blk[64 * g + 4 * r + j];
    int u = (blk[64 * (col / 8) + 4 * r + j] >> (4 * (g % 2))) & 0x0F;
    if (kind->bits == 5) u |= ((blk[256 + 4 * r + j] >> g) & 1) << 4;
    if (kind->bits == 6) u |= ((blk[256 + 64 * (g / 4) + 4 * r + j] >> (2 * (g % 4))) & 3) << 4;
    if (!kind->has_min) return scale * (float)(u + kind->offset);
    const uint8_t *mp = scales + 32 * kind->nscales + 2 * r;
    return scale * (float)u + half_to_float((uint16_t)(mp[0] | (mp[1] << 8)));
}

static int kind_index(const Kind *kind) {
    switch (kind->bits) {
    case 4: return kind->has_min ? 1 : 0;
    case 5: return kind->has_min ? 3 : 2;
    case 6: return 4;
    default: return 5;
    }
}

int gguf_isa_supported(int isa);

/* ------------------------------------------------------------------ entry points */

int64_t gguf_packed_bytes(int type, int64_t n, int64_t k) {
    Kind kind;
    if (kind_of(type, &kind) != 0 || k % BLOCK_COLS != 0) return -1;
    return (n + GROUP_ROWS - 1) / GROUP_ROWS * (k / BLOCK_COLS) * block_bytes(&kind);
}

/* src: n rows of GGUF blocks, row_bytes apart; dst: gguf_packed_bytes(type, n, k) bytes. */
int gguf_repack(int type, const uint8_t *src, int64_t row_bytes, int64_t n, int64_t k, uint8_t *dst, int threads) {
    Kind kind;
    if (kind_of(type, &kind) != 0 || k % BLOCK_COLS != 0) return -1;
    const int64_t nb = k / BLOCK_COLS, bb = block_bytes(&kind), groups = (n + GROUP_ROWS - 1) / GROUP_ROWS;
    memset(dst, 0, (size_t)(groups * nb * bb));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        uint8_t u[32];
        float sc[2], mn;
        for (int r = 0; r < GROUP_ROWS && g * GROUP_ROWS + r < n; r++) {
            const uint8_t *row = src + (g * GROUP_ROWS + r) * row_bytes;
            for (int64_t b = 0; b < nb; b++) {
                decode_block(type, row, b, u, sc, &mn);
                place_block(&kind, dst + (g * nb + b) * bb, r, u, sc, mn);
            }
        }
    }
    return 0;
}

static inline void store(void *out, int dtype, int64_t i, float v) {
    if (dtype == DT_F32) ((float *)out)[i] = v;
    else ((uint16_t *)out)[i] = f32_to_bf16(v);
}

static inline float load_x(const void *x, int dtype, int64_t i) {
    return dtype == DT_F32 ? ((const float *)x)[i] : bf16_to_f32(((const uint16_t *)x)[i]);
}

/* Rows ids[0..num_ids) of the weight, dequantized into out (row stride out_stride). */
int gguf_dequantize_rows(int type, const uint8_t *w, int64_t n, int64_t k, const int64_t *ids, int64_t num_ids,
                         void *out, int64_t out_stride, int out_dtype, int threads) {
    Kind kind;
    if (kind_of(type, &kind) != 0 || k % BLOCK_COLS != 0) return -1;
    for (int64_t i = 0; i < num_ids; i++)
        if (ids[i] < 0 || ids[i] >= n) return -2;
    const int64_t nb = k / BLOCK_COLS, bb = block_bytes(&kind);
#pragma omp parallel for num_threads(threads) schedule(static) if (num_ids > 1)
    for (int64_t i = 0; i < num_ids; i++) {
        const int64_t g = ids[i] / GROUP_ROWS;
        const int r = (int)(ids[i] % GROUP_ROWS);
        for (int64_t b = 0; b < nb; b++)
            for (int col = 0; col < 32; col++)
                store(out, out_dtype, i * out_stride + 32 * b + col, block_value(&kind, w + (g * nb + b) * bb, r, col));
    }
    return 0;
}

/* The whole weight, transposed: out[c * ldo + j] = W[j, c] for j < groups * 16 (rows past n
 * are zeros), ldo >= the rows rounded up to 16. For prefill, where a matmul library on the
 * dequantized tile beats the int8 kernels (see fw.plugins.quantization.gguf). */
int gguf_dequantize_t(int type, int isa, const uint8_t *w, int64_t n, int64_t k, void *out, int64_t ldo,
                      int out_dtype, int threads) {
    Kind kind;
    if (kind_of(type, &kind) != 0 || k % BLOCK_COLS != 0) return -1;
    if (!gguf_isa_supported(isa)) return -2;
    const int64_t nb = k / BLOCK_COLS, bb = block_bytes(&kind), groups = (n + GROUP_ROWS - 1) / GROUP_ROWS;
    if (ldo < groups * GROUP_ROWS) return -1;
    const int ki = kind_index(&kind);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * nb * bb;
        void *o = (char *)out + g * GROUP_ROWS * (out_dtype == DT_F32 ? 4 : 2);
#if defined(__x86_64__)
        if (isa == ISA_AVX512) { AVX512_DEQUANT[ki](wg, nb, o, ldo, out_dtype == DT_BF16); continue; }
        if (isa == ISA_AVX2) { AVX2_DEQUANT[ki](wg, nb, o, ldo, out_dtype == DT_BF16); continue; }
#endif
        for (int64_t b = 0; b < nb; b++)
            for (int r = 0; r < GROUP_ROWS; r++)
                for (int col = 0; col < 32; col++)
                    store(o, out_dtype, (32 * b + col) * ldo + r, block_value(&kind, wg + b * bb, r, col));
    }
    return 0;
}

static void quantize_block(const float *v, int8_t *q, float *d, int32_t qs[2], float *sa) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(v[j]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    qs[0] = qs[1] = 0;
    for (int j = 0; j < 32; j++) {
        q[j] = (int8_t)lrintf(v[j] * inv); /* the default rounding: to nearest even, as the SIMD path */
        qs[j / 16] += q[j];
    }
    *d = amax / 127.0f;
    *sa = *d * (float)(qs[0] + qs[1]);
}

static void quantize_row(const void *x, int dtype, int64_t k, int simd, int8_t *q, float *d, int32_t *qs, float *sa) {
    for (int64_t b = 0; b < k / 32; b++) {
        float buffer[32];
        const float *v = (const float *)x + 32 * b;
        if (dtype != DT_F32) {
            for (int j = 0; j < 32; j++) buffer[j] = bf16_to_f32(((const uint16_t *)x)[32 * b + j]);
            v = buffer;
        }
#if defined(__x86_64__)
        if (simd) {
            quantize_block_avx2(v, q + 32 * b, d + b, qs + 2 * b, sa + b);
            continue;
        }
#endif
        (void)simd;
        quantize_block(v, q + 32 * b, d + b, qs + 2 * b, sa + b);
    }
}

/* The quantized activations' buffer, per calling thread, grown as needed and kept: a decode
 * step calls the kernels ~120 times with the same small sizes. */
static int act_reserve(Act *a, int64_t m, int64_t k) {
    static __thread char *buffer = NULL;
    static __thread int64_t capacity = 0;
    const int64_t nb = k / 32, need = m * k + 64 + (int64_t)sizeof(float) * m * nb * 2 + (int64_t)sizeof(int32_t) * 2 * m * nb;
    if (need > capacity) {
        char *grown = realloc(buffer, (size_t)need);
        if (grown == NULL) return -1;
        buffer = grown;
        capacity = need;
    }
    char *p = buffer;
    a->d = (float *)p; p += sizeof(float) * m * nb;
    a->sa = (float *)p; p += sizeof(float) * m * nb;
    a->qs = (int32_t *)p; p += sizeof(int32_t) * 2 * m * nb;
    a->q = (int8_t *)p;
    return 0;
}

/* The portable path: the same integer sums as the SIMD ones, in plain C. */
static void group_portable(const Kind *kind, const uint8_t *wg, int64_t nb, const Act *a, int64_t m, float *res) {
    const int64_t bb = block_bytes(kind), k = nb * 32;
    for (int r = 0; r < GROUP_ROWS; r++) {
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = wg + b * bb, *scales = blk + quant_bytes(kind->bits);
            const int8_t *q = a->q + m * k + 32 * b;
            int32_t isum[2] = {0, 0};
            for (int col = 0; col < 32; col++) {
                const int g = col / 4, j = col % 4;
                int u;
                if (kind->bits == 8) {
                    u = (int8_t)blk[64 * g + 4 * r + j];
                } else {
                    u = (blk[64 * (col / 8) + 4 * r + j] >> (4 * (g % 2))) & 0x0F;
                    if (kind->bits == 5) u |= ((blk[256 + 4 * r + j] >> g) & 1) << 4;
                    if (kind->bits == 6) u |= ((blk[256 + 64 * (g / 4) + 4 * r + j] >> (2 * (g % 4))) & 3) << 4;
                }
                isum[col / 16] += u * q[col];
            }
            const int64_t ab = m * nb + b;
            for (int s = 0; s < 2; s++) {
                const int sidx = s % kind->nscales;
                const float scale = half_to_float((uint16_t)(scales[32 * sidx + 2 * r] | (scales[32 * sidx + 2 * r + 1] << 8)));
                acc += scale * a->d[ab] * (float)(isum[s] + (kind->has_min ? 0 : kind->offset * a->qs[2 * ab + s]));
            }
            if (kind->has_min) {
                const uint8_t *mp = scales + 32 * kind->nscales + 2 * r;
                acc += half_to_float((uint16_t)(mp[0] | (mp[1] << 8))) * a->sa[ab];
            }
        }
        res[r] = acc;
    }
}

int gguf_isa_supported(int isa) {
    if (isa == ISA_PORTABLE) return 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (isa == ISA_AVX2) return avx2;
    if (isa == ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

/* out[i, j] = sum_c x[i, c] * W[j, c] for i < m, j < n; W repacked by gguf_repack.
 * Returns 0, or -1 (bad type or K), -2 (isa not available here), -3 (out of memory). */
int gguf_matmul(int type, int isa, const uint8_t *w, int64_t n, int64_t k, const void *x, int64_t x_stride,
                int x_dtype, int64_t m, void *out, int64_t out_stride, int out_dtype, int threads) {
    Kind kind;
    if (kind_of(type, &kind) != 0 || k % BLOCK_COLS != 0) return -1;
    if (!gguf_isa_supported(isa)) return -2;
    const int64_t nb = k / BLOCK_COLS, bb = block_bytes(&kind), groups = (n + GROUP_ROWS - 1) / GROUP_ROWS;
    Act a;
    if (act_reserve(&a, m, k) != 0) return -3;
    const int ki = kind_index(&kind);
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < m; i++)
            quantize_row((const char *)x + i * x_stride * (x_dtype == DT_F32 ? 4 : 2), x_dtype, k, isa != ISA_PORTABLE,
                         a.q + i * k, a.d + i * nb, a.qs + 2 * i * nb, a.sa + i * nb);
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; g++) {
            float res[8 * GROUP_ROWS];
            const uint8_t *wg = w + g * nb * bb;
            const int rows = (int)(n - g * GROUP_ROWS < GROUP_ROWS ? n - g * GROUP_ROWS : GROUP_ROWS);
            for (int64_t m0 = 0; m0 < m;) {
                int64_t mt = 1;
#if defined(__x86_64__)
                if (isa == ISA_AVX512) {
                    const int64_t left = m - m0;
                    const int log2 = left >= 8 ? 3 : left >= 4 ? 2 : left >= 2 ? 1 : 0;
                    mt = (int64_t)1 << log2;
                    AVX512_FNS[log2][ki](wg, nb, &a, m0, res);
                } else if (isa == ISA_AVX2) {
                    mt = m - m0 >= 2 ? 2 : 1;
                    AVX2_FNS[mt - 1][ki](wg, nb, &a, m0, res);
                } else
#endif
                    group_portable(&kind, wg, nb, &a, m0, res);
                for (int64_t i = 0; i < mt; i++)
                    for (int r = 0; r < rows; r++)
                        store(out, out_dtype, (m0 + i) * out_stride + g * GROUP_ROWS + r, res[GROUP_ROWS * i + r]);
                m0 += mt;
            }
        }
    }
    return 0;
}
