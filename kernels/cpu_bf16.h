/* bfloat16 <-> float32 for fw's CPU kernels (cpu_attention.c, cpu_ops.c). */
#ifndef FW_CPU_BF16_H
#define FW_CPU_BF16_H

#include <stdint.h>

static inline float bf16_to_f32(uint16_t x) {
    union { uint32_t u; float f; } v;
    v.u = ((uint32_t)x) << 16;
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    uint32_t rounding = 0x7FFF + ((v.u >> 16) & 1); /* round to nearest even, as torch does */
    return (uint16_t)((v.u + rounding) >> 16);
}

#endif
