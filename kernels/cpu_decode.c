/*
 * A step of single-token decodes through a whole Llama-family decoder in one call.
 *
 * At batch 1 a decoder layer's matmuls take ~40 us on the default model, and the dozen
 * Python calls around them (norms, rotary, cache write, attention, the linear wrappers) as
 * long again; this function makes those calls from C. It computes nothing of its own
 * except the cache write and the bias adds: every other operation is one of fw's kernels,
 * reached through the function pointers in Decoder (cpu_ops.c's rms_norm, silu_and_mul and
 * rotary_neox, cpu_attention.c's paged_decode_attention, and each linear's native matmul,
 * e.g. gguf_ops.c's gguf_matmul), called with the arguments the Python path passes them,
 * so the outputs are the Python path's, bit for bit.
 *
 * Layout: activations are rows of `hidden` values in the model's dtype (0 = float32,
 * 1 = bfloat16); the caches are each layer's [slots, kv_heads, head_dim] keys and values
 * in that dtype; the q, k and v columns of the fused projection are in that order.
 */
#include <stdint.h>
#include <string.h>

#include "cpu_bf16.h"

typedef int (*MatmulFn)(int kind, int isa, const uint8_t *w, int64_t n, int64_t k, const void *x, int64_t x_stride,
                        int x_dtype, int64_t m, void *out, int64_t out_stride, int out_dtype, int threads);
typedef int (*RmsNormFn)(const void *x, int64_t x_stride, void *residual, int64_t r_stride, const void *weight,
                         void *out, int64_t o_stride, int64_t num_rows, int64_t dim, float eps, int dtype,
                         int threads);
typedef int (*SiluAndMulFn)(const void *gate_up, int64_t g_stride, void *out, int64_t o_stride, int64_t num_rows,
                            int64_t dim, int dtype, int threads);
typedef int (*RotaryFn)(void *q, int64_t q_tok, int64_t q_head, int64_t num_q_heads, void *k, int64_t k_tok,
                        int64_t k_head, int64_t num_k_heads, const void *cos, const void *sin, int64_t cs_stride,
                        int64_t num_rows, int64_t head_dim, int dtype, int threads);
typedef int (*AttentionFn)(const void *query, int64_t q_tok, int64_t q_head, const void *k_cache,
                           const void *v_cache, int64_t c_block, int64_t c_slot, int64_t c_head,
                           const int32_t *block_tables, int64_t bt_stride, const int32_t *seq_lens,
                           const int64_t *token_rows, int64_t num_seqs, void *out, int64_t o_tok, int64_t o_head,
                           int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                           float scale, float v_scale, int64_t sliding_window, int dtype, int cache_dtype,
                           int threads);

#define MAX_PARTS 4

/* Output columns [column, column + rows) of a linear layer: fn(kind, isa, weight, rows, ...). */
typedef struct {
    MatmulFn fn;
    int64_t kind, isa;
    const uint8_t *weight;
    int64_t rows, column;
} Part;

typedef struct {
    int64_t num_parts, in_features, out_features;
    Part parts[MAX_PARTS];
    const void *bias; /* [out_features] in the model's dtype, or NULL */
} Linear;

typedef struct {
    const void *input_norm, *post_attention_norm; /* [hidden] */
    Linear qkv, o, gate_up, down;
    void *k_cache, *v_cache; /* [slots, kv_heads, head_dim] */
    int64_t sliding_window;  /* 0: full attention */
} Layer;

typedef struct {
    RmsNormFn rms_norm;
    SiluAndMulFn silu_and_mul;
    RotaryFn rotary_neox;
    AttentionFn attention;
    int64_t hidden, num_heads, num_kv_heads, head_dim, intermediate, block_size, num_layers;
    float eps, scale;
    int64_t dtype;
    const Layer *layers;
    const void *final_norm;
} Decoder;

static int64_t elem(int64_t dtype) { return dtype == 0 ? 4 : 2; }

static void *at(void *base, int64_t index, int64_t dtype) { return (char *)base + index * elem(dtype); }

static int linear(const Linear *l, const void *x, int64_t m, void *out, int64_t dtype, int threads) {
    for (int64_t p = 0; p < l->num_parts; p++) {
        const Part *part = &l->parts[p];
        const int status = part->fn((int)part->kind, (int)part->isa, part->weight, part->rows, l->in_features, x,
                                    l->in_features, (int)dtype, m, at(out, part->column, dtype), l->out_features,
                                    (int)dtype, threads);
        if (status != 0) return 100 + status;
    }
    if (l->bias != NULL) { /* out += bias, rounded once to the dtype (torch's add_) */
        for (int64_t t = 0; t < m; t++) {
            for (int64_t j = 0; j < l->out_features; j++) {
                if (dtype == 0) {
                    ((float *)out)[t * l->out_features + j] += ((const float *)l->bias)[j];
                } else {
                    uint16_t *o = (uint16_t *)out + t * l->out_features + j;
                    *o = f32_to_bf16(bf16_to_f32(*o) + bf16_to_f32(((const uint16_t *)l->bias)[j]));
                }
            }
        }
    }
    return 0;
}

/* The bytes of scratch decoder_forward needs for T tokens. */
int64_t decoder_scratch_bytes(const Decoder *d, int64_t t) {
    const Layer *l = &d->layers[0];
    const int64_t widths = 3 * d->hidden + l->qkv.out_features + d->num_heads * d->head_dim +
                           l->gate_up.out_features + d->intermediate;
    return t * widths * elem(d->dtype) + 7 * 64;
}

/*
 * hidden_out[T, hidden] = the final norm of the decoder's output for the T tokens x[T, hidden]
 * (the embeddings), one token per sequence: token t of sequence t, at cache slot slots[t],
 * with rotary cos/sin rows [T, head_dim / 2] (row stride cs_stride) and the attention
 * arguments of paged_decode_attention. scratch holds decoder_scratch_bytes(d, T) bytes.
 * Returns 0, or the first failing kernel's status (offset by 100 for a matmul).
 */
int decoder_forward(const Decoder *d, int64_t num_tokens, const void *x_in, const void *cos, const void *sin,
                    int64_t cs_stride, const int64_t *slots, const int32_t *block_tables, int64_t bt_stride,
                    const int32_t *seq_lens, const int64_t *token_rows, void *scratch, void *hidden_out,
                    int threads) {
    const int64_t T = num_tokens, H = d->hidden, dt = d->dtype, D = d->head_dim;
    const int64_t q_width = d->num_heads * D, kv_width = d->num_kv_heads * D;
    const Layer *first = &d->layers[0];
    const int64_t qkv_width = first->qkv.out_features, gate_up_width = first->gate_up.out_features;
    /* Scratch buffers, each 64-byte aligned. */
    char *cursor = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    void *buffers[7];
    const int64_t widths[7] = {H, H, H, qkv_width, q_width, gate_up_width, d->intermediate};
    for (int i = 0; i < 7; i++) {
        buffers[i] = cursor;
        cursor += ((T * widths[i] * elem(dt) + 63) / 64) * 64;
    }
    void *residual = buffers[0], *x = buffers[1], *h = buffers[2], *qkv = buffers[3], *attn = buffers[4];
    void *gate_up = buffers[5], *act = buffers[6];
    int status;

    memcpy(residual, x_in, T * H * elem(dt));
    for (int64_t i = 0; i < d->num_layers; i++) {
        const Layer *l = &d->layers[i];
        /* The first layer normalises the embeddings; the others add the last sublayer's output first. */
        if ((status = d->rms_norm(i == 0 ? residual : x, H, i == 0 ? NULL : residual, H, l->input_norm, h, H, T, H,
                                  d->eps, (int)dt, threads)))
            return status;
        if ((status = linear(&l->qkv, h, T, qkv, dt, threads))) return status;
        void *k = at(qkv, q_width, dt), *v = at(qkv, q_width + kv_width, dt);
        if ((status = d->rotary_neox(qkv, qkv_width, D, d->num_heads, k, qkv_width, D, d->num_kv_heads, cos, sin,
                                     cs_stride, T, D, (int)dt, threads)))
            return status;
        for (int64_t t = 0; t < T; t++) {
            memcpy(at(l->k_cache, slots[t] * kv_width, dt), at(k, t * qkv_width, dt), kv_width * elem(dt));
            memcpy(at(l->v_cache, slots[t] * kv_width, dt), at(v, t * qkv_width, dt), kv_width * elem(dt));
        }
        if ((status = d->attention(qkv, qkv_width, D, l->k_cache, l->v_cache, d->block_size * kv_width, kv_width, D,
                                   block_tables, bt_stride, seq_lens, token_rows, T, attn, q_width, D, d->num_heads,
                                   d->num_kv_heads, D, d->block_size, d->scale, 1.0f, l->sliding_window, (int)dt,
                                   (int)dt, threads)))
            return status;
        if ((status = linear(&l->o, attn, T, x, dt, threads))) return status;
        if ((status = d->rms_norm(x, H, residual, H, l->post_attention_norm, h, H, T, H, d->eps, (int)dt, threads)))
            return status;
        if ((status = linear(&l->gate_up, h, T, gate_up, dt, threads))) return status;
        if ((status = d->silu_and_mul(gate_up, gate_up_width, act, d->intermediate, T, d->intermediate, (int)dt,
                                      threads)))
            return status;
        if ((status = linear(&l->down, act, T, x, dt, threads))) return status;
    }
    return d->rms_norm(x, H, residual, H, d->final_norm, hidden_out, H, T, H, d->eps, (int)dt, threads);
}
