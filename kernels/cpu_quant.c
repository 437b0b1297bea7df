/*
 * Weight-only int4 / int8 matmuls for the CPU on fw's canonical int layout
 * (plugins/quantization/int_weights.py), its codes repacked once into column tiles: one copy
 * of the weights serves both kernels.
 *
 * Compiled at first use by fw.kernels.cpu_quant (-O3 -march=native -fopenmp), called through
 * ctypes. The vector width is chosen where it is compiled: AVX-512 (16 floats), AVX2 + FMA +
 * F16C (8 floats), or plain C. Work is split over `num_threads` OpenMP threads by columns.
 *
 *   qweight int32, P = 32 / bits codes per word along K (lowest input, lowest bits), repacked from
 *           the canonical [K / P, N] into column tiles of T = int_tile_width() outputs, each tile
 *           [K / P, T] contiguous (the last one narrower when T does not divide N): a thread
 *           streams its tiles instead of reading T columns of every row.
 *   scales  [G, N] float32 (sdtype 0), bfloat16 (1) or float16 (2); G = K / group_size
 *   zeros   [G, N] uint8, or NULL for 2^(bits - 1)
 *
 * int_gemm:    out [M, N] float32 = x [M, K] float32 @ W^T, with xsum [M, G] the sums of each
 *              row of x over each group: sum_k x_k (q_kn - z_n) s_n = s_n (sum_k x_k q_kn - z_n xsum)
 *              per group, so the inner loop is one convert and one FMA per code.
 * int_dequant: out [K, N] float32 (odtype 0) or bfloat16 (1) = W^T, for large batches, which then
 *              multiply through oneDNN/MKL.
 * N must be a multiple of the vector width (int_vector_width()); the Python side checks.
 */
#include <stdint.h>
#include <string.h>

#include "cpu_bf16.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
typedef __m512i vi;
#define VZERO() _mm512_setzero_ps()
#define VSET1(a) _mm512_set1_ps(a)
#define VLOADF(p) _mm512_loadu_ps(p)
#define VSTOREF(p, v) _mm512_storeu_ps(p, v)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VLOADI(p) _mm512_loadu_si512((const void *)(p))
#define VCODE(w, shift, mask) _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(w, shift), _mm512_set1_epi32(mask)))
#define VLOAD_U8(p) _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VLOAD_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VLOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
typedef __m256i vi;
#define VZERO() _mm256_setzero_ps()
#define VSET1(a) _mm256_set1_ps(a)
#define VLOADF(p) _mm256_loadu_ps(p)
#define VSTOREF(p, v) _mm256_storeu_ps(p, v)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VLOADI(p) _mm256_loadu_si256((const __m256i *)(p))
#define VCODE(w, shift, mask) _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, shift), _mm256_set1_epi32(mask)))
#define VLOAD_U8(p) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define VLOAD_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VLOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#else
#define VW 1
typedef float vf;
typedef int32_t vi;
static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 31, mantissa = h & 1023;
    union { uint32_t u; float f; } v;
    if (exponent == 0) {  /* zero or subnormal: mantissa * 2^-24 */
        v.f = (float)mantissa * (1.0f / 16777216.0f);
        v.u |= sign;
    } else if (exponent == 31) {
        v.u = sign | 0x7F800000u | (mantissa << 13);
    } else {
        v.u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    return v.f;
}
#define VZERO() 0.0f
#define VSET1(a) (a)
#define VLOADF(p) (*(p))
#define VSTOREF(p, v) (*(p) = (v))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VSUB(a, b) ((a) - (b))
#define VMUL(a, b) ((a) * (b))
#define VLOADI(p) (*(p))
#define VCODE(w, shift, mask) ((float)(((uint32_t)(w) >> (shift)) & (mask)))
#define VLOAD_U8(p) ((float)*(p))
#define VLOAD_BF16(p) bf16_to_f32(*(p))
#define VLOAD_F16(p) f16_to_f32(*(p))
#endif

#define MB 4 /* rows of x per pass over a column tile: each converted code feeds MB FMAs */
#define NV 2 /* vectors of columns per tile */

int int_vector_width(void) { return VW; }
int int_tile_width(void) { return NV * VW; }

/* Where column n0's words start in the tiled layout, and the width of its tile. */
static inline const int32_t *tile_base(const int32_t *qweight, int64_t num_words, int64_t N, int64_t n0,
                                       int64_t *width) {
    const int64_t tile = (int64_t)NV * VW, t0 = n0 / tile * tile;
    *width = N - t0 < tile ? N - t0 : tile;
    return qweight + t0 * num_words + (n0 - t0);
}

static inline vf load_scales(const void *scales, int sdtype, int64_t index) {
    if (sdtype == 0) return VLOADF((const float *)scales + index);
    if (sdtype == 1) return VLOAD_BF16((const uint16_t *)scales + index);
    return VLOAD_F16((const uint16_t *)scales + index);
}

static inline vf load_zeros(const uint8_t *zeros, int bits, int64_t index) {
    return zeros ? VLOAD_U8(zeros + index) : VSET1((float)(1 << (bits - 1)));
}

/* Columns [n0, n0 + nv * VW) of rows [m0, m0 + mb) of the output. */
static inline __attribute__((always_inline)) void gemm_tile(
        const float *x, const float *xsum, int64_t K, int64_t G, const int32_t *qweight, int64_t N,
        const void *scales, int sdtype, const uint8_t *zeros, const int bits, int64_t group_size, float *out,
        int64_t m0, const int mb, int64_t n0, const int nv) {
    const int per_word = 32 / bits, mask = (1 << bits) - 1;
    const int64_t words_per_group = group_size / per_word;
    vf res[MB][NV], acc[MB][NV], w[NV];
    int64_t width;
    const int32_t *base = tile_base(qweight, K / per_word, N, n0, &width);
    for (int m = 0; m < mb; m++)
        for (int v = 0; v < nv; v++) res[m][v] = VZERO();
    for (int64_t g = 0; g < G; g++) {
        for (int m = 0; m < mb; m++)
            for (int v = 0; v < nv; v++) acc[m][v] = VZERO();
        for (int64_t r = g * words_per_group; r < (g + 1) * words_per_group; r++) {
            vi words[NV];
            for (int v = 0; v < nv; v++) words[v] = VLOADI(base + r * width + v * VW);
            const float *xr = x + m0 * K + r * per_word;
            for (int i = 0; i < per_word; i++) {
                for (int v = 0; v < nv; v++) w[v] = VCODE(words[v], bits * i, mask);
                for (int m = 0; m < mb; m++) {
                    const vf xv = VSET1(xr[m * K + i]);
                    for (int v = 0; v < nv; v++) acc[m][v] = VFMA(xv, w[v], acc[m][v]);
                }
            }
        }
        for (int v = 0; v < nv; v++) {
            const vf s = load_scales(scales, sdtype, g * N + n0 + v * VW);
            const vf z = load_zeros(zeros, bits, g * N + n0 + v * VW);
            for (int m = 0; m < mb; m++) {
                const vf shifted = VSUB(acc[m][v], VMUL(z, VSET1(xsum[(m0 + m) * G + g])));
                res[m][v] = VFMA(s, shifted, res[m][v]);
            }
        }
    }
    for (int m = 0; m < mb; m++)
        for (int v = 0; v < nv; v++) VSTOREF(out + (m0 + m) * N + n0 + v * VW, res[m][v]);
}

/* Constant mb/nv/bits let the compiler keep the tile's accumulators in registers. */
#define TILE_CASES(BITS)                                                                         \
    for (int64_t m0 = 0; m0 < M; m0 += MB) {                                                     \
        const int64_t mb = M - m0 < MB ? M - m0 : MB;                                            \
        if (nv == NV && mb == 4)                                                                 \
            gemm_tile(x, xsum, K, G, qweight, N, scales, sdtype, zeros, BITS, group_size, out, m0, 4, n0, NV); \
        else if (nv == NV)                                                                       \
            for (int64_t m = m0; m < m0 + mb; m++)                                               \
                gemm_tile(x, xsum, K, G, qweight, N, scales, sdtype, zeros, BITS, group_size, out, m, 1, n0, NV); \
        else                                                                                     \
            for (int64_t m = m0; m < m0 + mb; m++)                                               \
                gemm_tile(x, xsum, K, G, qweight, N, scales, sdtype, zeros, BITS, group_size, out, m, 1, n0, 1); \
    }

int int_gemm(const float *x, const float *xsum, int64_t M, int64_t K, const int32_t *qweight, int64_t N,
             const void *scales, int sdtype, const uint8_t *zeros, int bits, int64_t group_size, float *out,
             int num_threads) {
    if ((bits != 4 && bits != 8) || N % VW || group_size % (32 / bits) || K % group_size) return 1;
    const int64_t G = K / group_size, tile = (int64_t)NV * VW, num_tiles = (N + tile - 1) / tile;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t t = 0; t < num_tiles; t++) {
        const int64_t n0 = t * tile;
        const int nv = N - n0 >= tile ? NV : 1; /* the last tile may be one vector wide */
        if (bits == 4) {
            TILE_CASES(4)
        } else {
            TILE_CASES(8)
        }
    }
    return 0;
}

/* Rounds to nearest even, as torch does (NaN aside: weights have none). */
static inline void store_bf16(uint16_t *dst, vf value) {
#if VW == 16
    const __m512i u = _mm512_castps_si512(value);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(rounded));
#elif VW == 8
    const __m256i u = _mm256_castps_si256(value);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
    const __m128i low = _mm256_castsi256_si128(rounded), high = _mm256_extracti128_si256(rounded, 1);
    _mm_storeu_si128((__m128i *)dst, _mm_packus_epi32(low, high));
#else
    *dst = f32_to_bf16(value);
#endif
}

/* Rows [r * P, (r + 1) * P) of W^T, columns [n0, n0 + VW). */
static inline __attribute__((always_inline)) void dequant_word_row(
        const int32_t *qweight, int64_t K, int64_t N, const void *scales, int sdtype, const uint8_t *zeros,
        const int bits, int64_t group_size, void *out, int odtype, int64_t r, int64_t n0) {
    const int per_word = 32 / bits, mask = (1 << bits) - 1;
    const int64_t g = r * per_word / group_size;
    int64_t width;
    const vi words = VLOADI(tile_base(qweight, K / per_word, N, n0, &width) + r * width);
    const vf s = load_scales(scales, sdtype, g * N + n0), z = load_zeros(zeros, bits, g * N + n0);
    for (int i = 0; i < per_word; i++) {
        const vf value = VMUL(VSUB(VCODE(words, bits * i, mask), z), s);
        const int64_t offset = (r * per_word + i) * N + n0;
        if (odtype == 0)
            VSTOREF((float *)out + offset, value);
        else
            store_bf16((uint16_t *)out + offset, value);
    }
}

int int_dequant(const int32_t *qweight, int64_t K, int64_t N, const void *scales, int sdtype,
                const uint8_t *zeros, int bits, int64_t group_size, void *out, int odtype, int num_threads) {
    if ((bits != 4 && bits != 8) || N % VW || group_size % (32 / bits) || K % group_size) return 1;
    const int64_t num_words = K / (32 / bits);
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t r = 0; r < num_words; r++) {
        for (int64_t n0 = 0; n0 < N; n0 += VW) {
            if (bits == 4)
                dequant_word_row(qweight, K, N, scales, sdtype, zeros, 4, group_size, out, odtype, r, n0);
            else
                dequant_word_row(qweight, K, N, scales, sdtype, zeros, 8, group_size, out, odtype, r, n0);
        }
    }
    return 0;
}
