/* The AVX2 and AVX-512 (VNNI) kernels of gguf_ops.c: one group of 16 weight rows (the
 * layout in gguf_layout.h) times MT activation rows quantized to int8 blocks of 32.
 *
 * Each function carries its own target attribute, so both compile whatever -march the file
 * is built with (an AVX2-only CPU builds the AVX-512 code too and never runs it); gguf_ops.c
 * picks one at run time from the CPU's features. One 32-bit lane per weight row: a column
 * group's 4 unsigned weights times 4 broadcast activation bytes are summed per row
 * (vpdpbusd, or pmaddubsw + pmaddwd on AVX2), so no horizontal sums are needed; each
 * block's int32 sums become floats once per block, times the row's scale and the
 * activation's scale, plus the min (or offset) term.
 *
 * Ranges: activations are in [-127, 127]. AVX2's pmaddubsw sums two u x s products into
 * int16: at most 63 * 127 * 2 = 16002 for 6-bit weights, so the low and high nibble
 * products of a chunk are added in int16 (32004) before widening. Q8 weights are signed:
 * AVX2 uses |w| and the activation carrying w's sign (at most 128 * 127 * 2 = 32512, widened
 * at once); VNNI has no int16 step, so it flips w to unsigned (w + 128) and subtracts
 * 128 * sum(activations), which the activation quantizer already has.
 */
#ifndef FW_GGUF_X86_H
#define FW_GGUF_X86_H

#include <immintrin.h>

#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 8192
#endif

static inline int32_t load_i32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ------------------------------------------------------------------ AVX-512 VNNI */

/* The high bits of column group g (a plane byte's bits `pos`, `pos`+1...) moved to bit 4 of
 * each byte. 16-bit shifts never carry a neighbour byte's bits into bit 4 for pos <= 7. */
ALWAYS_INLINE TARGET_AVX512 __m512i high_bits512(__m512i plane, int pos, int mask) {
    __m512i t = pos < 4 ? _mm512_slli_epi16(plane, 4 - pos) : pos > 4 ? _mm512_srli_epi16(plane, pos - 4) : plane;
    return _mm512_and_si512(t, _mm512_set1_epi8((char)mask));
}

/* Latency, not throughput, bounds one activation row: a block's 8 vpdpbusd into one register
 * form a chain of 8 x 5 cycles. With few rows, each row's sums run in up to 4 independent
 * chains (added at the block's end); with more rows, the rows are the independent chains. */
ALWAYS_INLINE TARGET_AVX512 void group_avx512(const uint8_t *wg, int64_t nb, const Act *a, int64_t m0, float *res,
                                             const int MT, const int BITS, const int OFFSET, const int HAS_MIN,
                                             const int NSC) {
    const int64_t bb = quant_bytes(BITS) + 32 * NSC + 32 * HAS_MIN, k = nb * 32;
    const __m512i m4 = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
    const int chunks = BITS == 8 ? 8 : 4, per_scale = chunks / NSC;
    const int offset = BITS == 8 ? -128 : OFFSET;
    const int NCH = MT >= 4 ? 1 : 4 / MT;
    __m512 acc[8], accm[8];
    for (int i = 0; i < MT; i++) acc[i] = accm[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = wg + b * bb, *scales = blk + quant_bytes(BITS);
        for (int64_t line = 0; line < bb; line += 64) _mm_prefetch((const char *)(blk + PREFETCH_BYTES + line), _MM_HINT_T0);
        __m512i h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
        if (BITS == 5 || BITS == 6) h0 = _mm512_loadu_si512(blk + 256);
        if (BITS == 6) h1 = _mm512_loadu_si512(blk + 320);
        for (int s = 0; s < NSC; s++) {
            __m512i isum[8][4];
            for (int i = 0; i < MT; i++)
                for (int j = 0; j < NCH; j++) isum[i][j] = _mm512_setzero_si512();
            int chain = 0;
            for (int c = s * per_scale; c < (s + 1) * per_scale; c++) {
                __m512i v = _mm512_loadu_si512(blk + 64 * c);
                if (BITS == 8) {
                    v = _mm512_xor_si512(v, flip);
                    for (int i = 0; i < MT; i++) {
                        const int8_t *q = a->q + (m0 + i) * k + 32 * b + 4 * c;
                        isum[i][chain] = _mm512_dpbusd_epi32(isum[i][chain], v, _mm512_set1_epi32(load_i32(q)));
                    }
                    chain = (chain + 1) % NCH;
                    continue;
                }
                __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                if (BITS == 5) {
                    lo = _mm512_or_si512(lo, high_bits512(h0, 2 * c, 0x10));
                    hi = _mm512_or_si512(hi, high_bits512(h0, 2 * c + 1, 0x10));
                } else if (BITS == 6) {
                    __m512i plane = c < 2 ? h0 : h1;
                    lo = _mm512_or_si512(lo, high_bits512(plane, 4 * (c % 2), 0x30));
                    hi = _mm512_or_si512(hi, high_bits512(plane, 4 * (c % 2) + 2, 0x30));
                }
                const int next = (chain + 1) % NCH;
                for (int i = 0; i < MT; i++) {
                    const int8_t *q = a->q + (m0 + i) * k + 32 * b + 8 * c;
                    isum[i][chain] = _mm512_dpbusd_epi32(isum[i][chain], lo, _mm512_set1_epi32(load_i32(q)));
                    isum[i][next] = _mm512_dpbusd_epi32(isum[i][next], hi, _mm512_set1_epi32(load_i32(q + 4)));
                }
                chain = (next + 1) % NCH;
            }
            const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + 32 * s)));
            for (int i = 0; i < MT; i++) {
                const int64_t ab = (m0 + i) * nb + b;
                __m512i total = isum[i][0];
                if (NCH >= 2) total = _mm512_add_epi32(total, isum[i][1]);
                if (NCH == 4) total = _mm512_add_epi32(total, _mm512_add_epi32(isum[i][2], isum[i][3]));
                if (!HAS_MIN) {
                    const int32_t qsum = NSC == 2 ? a->qs[2 * ab + s] : a->qs[2 * ab] + a->qs[2 * ab + 1];
                    total = _mm512_add_epi32(total, _mm512_set1_epi32(offset * qsum));
                }
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(scale, _mm512_set1_ps(a->d[ab])),
                                         acc[i]);
            }
        }
        if (HAS_MIN) {
            const __m512 mins = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + 32 * NSC)));
            for (int i = 0; i < MT; i++)
                accm[i] = _mm512_fmadd_ps(mins, _mm512_set1_ps(a->sa[(m0 + i) * nb + b]), accm[i]);
        }
    }
    for (int i = 0; i < MT; i++) _mm512_storeu_ps(res + 16 * i, _mm512_add_ps(acc[i], accm[i]));
}

/* ------------------------------------------------------------------ AVX2 */

ALWAYS_INLINE TARGET_AVX2 __m256i high_bits256(__m256i plane, int pos, int mask) {
    __m256i t = pos < 4 ? _mm256_slli_epi16(plane, 4 - pos) : pos > 4 ? _mm256_srli_epi16(plane, pos - 4) : plane;
    return _mm256_and_si256(t, _mm256_set1_epi8((char)mask));
}

/* Rows 0-7 of the group are the first 32 bytes of each 64-byte chunk, rows 8-15 the second:
 * one pass over the group's blocks per half (the second pass finds them in cache), so that
 * AVX2's 16 registers hold one half's accumulators. */
ALWAYS_INLINE TARGET_AVX2 void group_avx2(const uint8_t *wg, int64_t nb, const Act *a, int64_t m0, float *res,
                                         const int MT, const int BITS, const int OFFSET, const int HAS_MIN,
                                         const int NSC) {
    const int64_t bb = quant_bytes(BITS) + 32 * NSC + 32 * HAS_MIN, k = nb * 32;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const int chunks = BITS == 8 ? 8 : 4, per_scale = chunks / NSC;
    const int NCH = MT == 1 ? 2 : 1;
    for (int half = 0; half < 2; half++) {
        __m256 acc[2], accm[2];
        for (int i = 0; i < MT; i++) acc[i] = accm[i] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = wg + b * bb + 32 * half, *scales = wg + b * bb + quant_bytes(BITS);
            if (half == 0)
                for (int64_t line = 0; line < bb; line += 64)
                    _mm_prefetch((const char *)(blk + PREFETCH_BYTES + line), _MM_HINT_T0);
            __m256i h0 = _mm256_setzero_si256(), h1 = _mm256_setzero_si256();
            if (BITS == 5 || BITS == 6) h0 = _mm256_loadu_si256((const __m256i *)(blk + 256));
            if (BITS == 6) h1 = _mm256_loadu_si256((const __m256i *)(blk + 320));
            for (int s = 0; s < NSC; s++) {
                __m256i isum[2][2];
                for (int i = 0; i < MT; i++) isum[i][0] = isum[i][1] = _mm256_setzero_si256();
                int chain = 0;
                for (int c = s * per_scale; c < (s + 1) * per_scale; c++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 64 * c));
                    if (BITS == 8) {
                        const __m256i mag = _mm256_sign_epi8(v, v);
                        for (int i = 0; i < MT; i++) {
                            const int8_t *q = a->q + (m0 + i) * k + 32 * b + 4 * c;
                            __m256i p = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(_mm256_set1_epi32(load_i32(q)), v));
                            isum[i][chain] = _mm256_add_epi32(isum[i][chain], _mm256_madd_epi16(p, ones));
                        }
                        chain = (chain + 1) % NCH;
                        continue;
                    }
                    __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    if (BITS == 5) {
                        lo = _mm256_or_si256(lo, high_bits256(h0, 2 * c, 0x10));
                        hi = _mm256_or_si256(hi, high_bits256(h0, 2 * c + 1, 0x10));
                    } else if (BITS == 6) {
                        __m256i plane = c < 2 ? h0 : h1;
                        lo = _mm256_or_si256(lo, high_bits256(plane, 4 * (c % 2), 0x30));
                        hi = _mm256_or_si256(hi, high_bits256(plane, 4 * (c % 2) + 2, 0x30));
                    }
                    for (int i = 0; i < MT; i++) {
                        const int8_t *q = a->q + (m0 + i) * k + 32 * b + 8 * c;
                        __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(q))),
                                                     _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(q + 4))));
                        isum[i][chain] = _mm256_add_epi32(isum[i][chain], _mm256_madd_epi16(p, ones));
                    }
                    chain = (chain + 1) % NCH;
                }
                const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + 32 * s + 16 * half)));
                for (int i = 0; i < MT; i++) {
                    const int64_t ab = (m0 + i) * nb + b;
                    __m256i total = NCH == 2 ? _mm256_add_epi32(isum[i][0], isum[i][1]) : isum[i][0];
                    if (!HAS_MIN && OFFSET != 0) {
                        const int32_t qsum = NSC == 2 ? a->qs[2 * ab + s] : a->qs[2 * ab] + a->qs[2 * ab + 1];
                        total = _mm256_add_epi32(total, _mm256_set1_epi32(OFFSET * qsum));
                    }
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(scale, _mm256_set1_ps(a->d[ab])),
                                             acc[i]);
                }
            }
            if (HAS_MIN) {
                const __m256 mins =
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + 32 * NSC + 16 * half)));
                for (int i = 0; i < MT; i++)
                    accm[i] = _mm256_fmadd_ps(mins, _mm256_set1_ps(a->sa[(m0 + i) * nb + b]), accm[i]);
            }
        }
        for (int i = 0; i < MT; i++) _mm256_storeu_ps(res + 16 * i + 8 * half, _mm256_add_ps(acc[i], accm[i]));
    }
}

/* One block of 32 activations -> int8 (round to nearest even), its scale and its half sums. */
TARGET_AVX2 static void quantize_block_avx2(const float *v, int8_t *q, float *d, int32_t qs[2], float *sa) {
    __m256 x[4], amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int j = 0; j < 4; j++) {
        x[j] = _mm256_loadu_ps(v + 8 * j);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, x[j]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float maxabs = _mm_cvtss_f32(m), inv = maxabs > 0.0f ? 127.0f / maxabs : 0.0f;
    __m256i qi[4];
    for (int j = 0; j < 4; j++)
        qi[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(x[j], _mm256_set1_ps(inv)),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (int h = 0; h < 2; h++) {
        __m256i t = _mm256_add_epi32(qi[2 * h], qi[2 * h + 1]);
        __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0x4E));
        u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0xB1));
        qs[h] = _mm_cvtsi128_si32(u);
    }
    /* packs work within 128-bit lanes: the permute puts the four 8-value groups back in order */
    const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    *d = maxabs / 127.0f;
    *sa = *d * (float)(qs[0] + qs[1]);
}

/* ------------------------------------------------------------------ dequantizing, transposed */

/* Round-to-nearest-even float -> bf16 of 16 lanes (AVX-512F; no AVX512-BF16 needed). */
ALWAYS_INLINE TARGET_AVX512 __m256i to_bf16_512(__m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i rounding = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)),
                                              _mm512_set1_epi32(0x7FFF));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(bits, rounding), 16));
}

/* One group's 16 rows as 16 columns of W^T ([K, ldo], float32 or bf16): each chunk lane is one
 * row, so column c of the group's 16 rows is one 16-lane store. */
ALWAYS_INLINE TARGET_AVX512 void dequant_group_t_avx512(const uint8_t *wg, int64_t nb, void *out, int64_t ldo,
                                                       int bf16, const int BITS, const int OFFSET,
                                                       const int HAS_MIN, const int NSC) {
    const int64_t bb = quant_bytes(BITS) + 32 * NSC + 32 * HAS_MIN;
    const __m512i m4 = _mm512_set1_epi8(0x0F), byte = _mm512_set1_epi32(0xFF);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = wg + b * bb, *scales = blk + quant_bytes(BITS);
        __m512 sc[2], mn[2];
        for (int s = 0; s < 2; s++) {
            sc[s] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + 32 * (s % NSC))));
            mn[s] = HAS_MIN ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + 32 * NSC)))
                            : _mm512_mul_ps(sc[s], _mm512_set1_ps((float)(BITS == 8 ? 0 : OFFSET)));
        }
        __m512i h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
        if (BITS == 5 || BITS == 6) h0 = _mm512_loadu_si512(blk + 256);
        if (BITS == 6) h1 = _mm512_loadu_si512(blk + 320);
        for (int g = 0; g < 8; g++) { /* column group: columns 4g .. 4g + 3 */
            __m512i u;
            if (BITS == 8) {
                u = _mm512_loadu_si512(blk + 64 * g);
            } else {
                const __m512i v = _mm512_loadu_si512(blk + 64 * (g / 2));
                u = _mm512_and_si512(g % 2 ? _mm512_srli_epi16(v, 4) : v, m4);
                if (BITS == 5) u = _mm512_or_si512(u, high_bits512(h0, g, 0x10));
                if (BITS == 6) u = _mm512_or_si512(u, high_bits512(g < 4 ? h0 : h1, 2 * (g % 4), 0x30));
            }
            for (int j = 0; j < 4; j++) {
                const int col = 4 * g + j, s = col / 16;
                const __m512i t = BITS == 8 ? _mm512_srai_epi32(_mm512_slli_epi32(u, 24 - 8 * j), 24)
                                            : _mm512_and_si512(_mm512_srli_epi32(u, 8 * j), byte);
                const __m512 value = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc[s], mn[s]);
                const int64_t at = (32 * b + col) * ldo;
                if (bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), to_bf16_512(value));
                else _mm512_storeu_ps((float *)out + at, value);
            }
        }
    }
}

ALWAYS_INLINE TARGET_AVX2 __m128i to_bf16_256(__m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i rounding = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)),
                                              _mm256_set1_epi32(0x7FFF));
    const __m256i shifted = _mm256_srli_epi32(_mm256_add_epi32(bits, rounding), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(shifted), _mm256_extracti128_si256(shifted, 1));
}

ALWAYS_INLINE TARGET_AVX2 void dequant_group_t_avx2(const uint8_t *wg, int64_t nb, void *out, int64_t ldo, int bf16,
                                                   const int BITS, const int OFFSET, const int HAS_MIN,
                                                   const int NSC) {
    const int64_t bb = quant_bytes(BITS) + 32 * NSC + 32 * HAS_MIN;
    const __m256i m4 = _mm256_set1_epi8(0x0F), byte = _mm256_set1_epi32(0xFF);
    for (int64_t b = 0; b < nb; b++) {
        for (int half = 0; half < 2; half++) {
            const uint8_t *blk = wg + b * bb + 32 * half, *scales = wg + b * bb + quant_bytes(BITS) + 16 * half;
            __m256 sc[2], mn[2];
            for (int s = 0; s < 2; s++) {
                sc[s] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + 32 * (s % NSC))));
                mn[s] = HAS_MIN ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + 32 * NSC)))
                                : _mm256_mul_ps(sc[s], _mm256_set1_ps((float)(BITS == 8 ? 0 : OFFSET)));
            }
            __m256i h0 = _mm256_setzero_si256(), h1 = _mm256_setzero_si256();
            if (BITS == 5 || BITS == 6) h0 = _mm256_loadu_si256((const __m256i *)(blk + 256));
            if (BITS == 6) h1 = _mm256_loadu_si256((const __m256i *)(blk + 320));
            for (int g = 0; g < 8; g++) {
                __m256i u;
                if (BITS == 8) {
                    u = _mm256_loadu_si256((const __m256i *)(blk + 64 * g));
                } else {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 64 * (g / 2)));
                    u = _mm256_and_si256(g % 2 ? _mm256_srli_epi16(v, 4) : v, m4);
                    if (BITS == 5) u = _mm256_or_si256(u, high_bits256(h0, g, 0x10));
                    if (BITS == 6) u = _mm256_or_si256(u, high_bits256(g < 4 ? h0 : h1, 2 * (g % 4), 0x30));
                }
                for (int j = 0; j < 4; j++) {
                    const int col = 4 * g + j, s = col / 16;
                    const __m256i t = BITS == 8 ? _mm256_srai_epi32(_mm256_slli_epi32(u, 24 - 8 * j), 24)
                                                : _mm256_and_si256(_mm256_srli_epi32(u, 8 * j), byte);
                    const __m256 value = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sc[s], mn[s]);
                    const int64_t at = (32 * b + col) * ldo + 8 * half;
                    if (bf16) _mm_storeu_si128((__m128i *)((uint16_t *)out + at), to_bf16_256(value));
                    else _mm256_storeu_ps((float *)out + at, value);
                }
            }
        }
    }
}

#define DEQUANT_FNS(ISA, TARGET)                                                                                   \
    TARGET static void ISA##_dq_q4s(const uint8_t *w, int64_t nb, void *o, int64_t ld, int bf) {                 \
        dequant_group_t_##ISA(w, nb, o, ld, bf, 4, -8, 0, 1);                                                      \
    }                                                                                                              \
    TARGET static void ISA##_dq_q4m(const uint8_t *w, int64_t nb, void *o, int64_t ld, int bf) {                 \
        dequant_group_t_##ISA(w, nb, o, ld, bf, 4, 0, 1, 1);                                                       \
    }                                                                                                              \
    TARGET static void ISA##_dq_q5s(const uint8_t *w, int64_t nb, void *o, int64_t ld, int bf) {                 \
        dequant_group_t_##ISA(w, nb, o, ld, bf, 5, -16, 0, 1);                                                     \
    }                                                                                                              \
    TARGET static void ISA##_dq_q5m(const uint8_t *w, int64_t nb, void *o, int64_t ld, int bf) {                 \
        dequant_group_t_##ISA(w, nb, o, ld, bf, 5, 0, 1, 1);                                                       \
    }                                                                                                              \
    TARGET static void ISA##_dq_q6s(const uint8_t *w, int64_t nb, void *o, int64_t ld, int bf) {                 \
        dequant_group_t_##ISA(w, nb, o, ld, bf, 6, -32, 0, 2);                                                     \
    }                                                                                                              \
    TARGET static void ISA##_dq_q8s(const uint8_t *w, int64_t nb, void *o, int64_t ld, int bf) {                 \
        dequant_group_t_##ISA(w, nb, o, ld, bf, 8, 0, 0, 1);                                                       \
    }

DEQUANT_FNS(avx512, TARGET_AVX512)
DEQUANT_FNS(avx2, TARGET_AVX2)

static const DequantFn AVX512_DEQUANT[6] = {avx512_dq_q4s, avx512_dq_q4m, avx512_dq_q5s,
                                            avx512_dq_q5m, avx512_dq_q6s, avx512_dq_q8s};
static const DequantFn AVX2_DEQUANT[6] = {avx2_dq_q4s, avx2_dq_q4m, avx2_dq_q5s, avx2_dq_q5m, avx2_dq_q6s, avx2_dq_q8s};

/* One function per (kind, MT): the kind's constants and MT folded in by inlining. */
#define GROUP_FNS(ISA, TARGET, MT)                                                                                   \
    TARGET static void ISA##_q4s_##MT(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res) {        \
        group_##ISA(w, nb, a, m0, res, MT, 4, -8, 0, 1);                                                           \
    }                                                                                                              \
    TARGET static void ISA##_q4m_##MT(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res) {        \
        group_##ISA(w, nb, a, m0, res, MT, 4, 0, 1, 1);                                                            \
    }                                                                                                              \
    TARGET static void ISA##_q5s_##MT(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res) {        \
        group_##ISA(w, nb, a, m0, res, MT, 5, -16, 0, 1);                                                          \
    }                                                                                                              \
    TARGET static void ISA##_q5m_##MT(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res) {        \
        group_##ISA(w, nb, a, m0, res, MT, 5, 0, 1, 1);                                                            \
    }                                                                                                              \
    TARGET static void ISA##_q6s_##MT(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res) {        \
        group_##ISA(w, nb, a, m0, res, MT, 6, -32, 0, 2);                                                          \
    }                                                                                                              \
    TARGET static void ISA##_q8s_##MT(const uint8_t *w, int64_t nb, const Act *a, int64_t m0, float *res) {        \
        group_##ISA(w, nb, a, m0, res, MT, 8, 0, 0, 1);                                                            \
    }

GROUP_FNS(avx512, TARGET_AVX512, 1)
GROUP_FNS(avx512, TARGET_AVX512, 2)
GROUP_FNS(avx512, TARGET_AVX512, 4)
GROUP_FNS(avx512, TARGET_AVX512, 8)
GROUP_FNS(avx2, TARGET_AVX2, 1)
GROUP_FNS(avx2, TARGET_AVX2, 2)

#define KIND_ROW(ISA, MT) {ISA##_q4s_##MT, ISA##_q4m_##MT, ISA##_q5s_##MT, ISA##_q5m_##MT, ISA##_q6s_##MT, ISA##_q8s_##MT}

/* [log2 MT][kind index] */
static const GroupFn AVX512_FNS[4][6] = {KIND_ROW(avx512, 1), KIND_ROW(avx512, 2), KIND_ROW(avx512, 4),
                                          KIND_ROW(avx512, 8)};
static const GroupFn AVX2_FNS[2][6] = {KIND_ROW(avx2, 1), KIND_ROW(avx2, 2)};

#endif
