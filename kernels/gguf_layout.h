/* The repacked layout of fw's GGUF matmul kernels (gguf_ops.c), shared by every path.
 *
 * A weight [N, K] is stored as groups of 16 rows; each group as K/32 blocks of 32 columns,
 * block after block, so that a thread streams one group's bytes in order. Every GGML type is
 * brought to one of a few "kinds": value = scale * (u + offset) or value = scale * u + min,
 * with u an unsigned 4-, 5- or 6-bit integer (or a signed 8-bit one, offset 0) and one fp16
 * scale per 32 columns (two, one per 16, for Q6_K). A block of 16 rows x 32 columns holds:
 *
 *   bits 4/5/6: a nibble plane of 4 chunks x 64 bytes. Chunk c, byte 4r + j (row r, j < 4):
 *               low nibble = column 8c + j, high nibble = column 8c + 4 + j. So one 64-byte
 *               chunk, masked, holds for each of the 16 rows the 4 columns of one "column
 *               group" (g = column / 4) in one 32-bit lane: a dot product with 4 broadcast
 *               activation bytes (vpdpbusd, pmaddubsw) sums them per row, with no horizontal
 *               reduction. The fifth bit (Q5): a 64-byte plane, bit g of byte 4r + j. The two
 *               high bits (Q6): two 64-byte planes, plane g / 4, bits 2 (g % 4) and up.
 *   bits 8:     8 chunks x 64 bytes, chunk g byte 4r + j = column 4g + j (signed).
 *   then nscales x 16 fp16 scales (row order), then 16 fp16 mins for the kinds with a min.
 *
 * Rows past N in the last group are zero (so are their scales): they compute zeros, never
 * stored. K/32 blocks: K must be a multiple of 32 (every GGML block type's row is).
 */
#ifndef FW_GGUF_LAYOUT_H
#define FW_GGUF_LAYOUT_H

#include <stdint.h>
#include <string.h>

#define GROUP_ROWS 16
#define BLOCK_COLS 32

/* ggml's type ids (ggml.h, GGMLQuantizationType in the gguf package). */
enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };

typedef struct {
    int bits;     /* 4, 5, 6: unsigned u; 8: signed */
    int offset;   /* value = scale * (u + offset) when there is no min */
    int has_min;  /* value = scale * u + min */
    int nscales;  /* scales per 32 columns: 1, or 2 (one per 16) */
} Kind;

static inline int kind_of(int type, Kind *kind) {
    switch (type) {
    case T_Q4_0: *kind = (Kind){4, -8, 0, 1}; return 0;
    case T_Q4_1: case T_Q4_K: *kind = (Kind){4, 0, 1, 1}; return 0;
    case T_Q5_0: *kind = (Kind){5, -16, 0, 1}; return 0;
    case T_Q5_1: case T_Q5_K: *kind = (Kind){5, 0, 1, 1}; return 0;
    case T_Q6_K: *kind = (Kind){6, -32, 0, 2}; return 0;
    case T_Q8_0: *kind = (Kind){8, 0, 0, 1}; return 0;
    default: return -1;
    }
}

static inline int64_t quant_bytes(int bits) { return bits == 8 ? 512 : 256 + (bits == 5 ? 64 : bits == 6 ? 128 : 0); }

/* Bytes of one block of 16 rows x 32 columns. */
static inline int64_t block_bytes(const Kind *kind) {
    return quant_bytes(kind->bits) + 32 * kind->nscales + 32 * kind->has_min;
}

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 113;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even; overflow to infinity. */
static inline uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xFF, mant = x & 0x7FFFFF;
    if (exp == 255) return (uint16_t)(sign | 0x7C00 | (mant ? 0x200 : 0));
    int e = (int)exp - 112;
    if (e >= 31) return (uint16_t)(sign | 0x7C00);
    if (e <= 0) { /* subnormal or zero */
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t half = mant >> shift, rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (mant >> 13), rest = mant & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++; /* may carry into the exponent: correct */
    return (uint16_t)(sign | half);
}

#endif
