"""Triton kernel: write a step's new keys and values into the paged KV cache.

The GPU twin of ``reference.write_kv_ref`` (vLLM calls it ``reshape_and_cache_flash``).
Leaf code: imports neither ``fw.core`` nor ``fw.plugins``, and importing it touches no GPU.

An fp8 cache (float8_e4m3fn, float8_e5m2) is handed to the kernels as its bytes (a uint8 view)
and encoded / decoded here with integer operations (``_fp8_encode``, ``_fp8_to_float16``), not
with Triton's fp8 types, for two reasons: the GPU's e4m3 conversions exist from sm_89 only, and
the interpreter's fp32 -> fp8 conversion rounds wrongly (1.96 -> 1.0 in Triton 3.9: its mantissa
carry does not reach the exponent), so the kernels the tests interpret would not be the ones a
GPU runs. The encoding is torch's (round to nearest even) after saturating, so the bytes equal
``reference.write_kv_ref``'s.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Fp8Format(NamedTuple):
    mantissa_bits: int
    exponent_bias: int
    max: float  # the largest finite value: larger magnitudes saturate to it


FP8_FORMATS = {torch.float8_e4m3fn: Fp8Format(3, 7, 448.0), torch.float8_e5m2: Fp8Format(2, 15, 57344.0)}
#: No fp8: the kernels' constexpr for a cache in a float dtype.
NOT_FP8 = Fp8Format(0, 0, 0.0)


def fp8_format(dtype: torch.dtype) -> Fp8Format:
    return FP8_FORMATS.get(dtype, NOT_FP8)


@triton.jit
def _fp8_encode(x, inv_scale, MANTISSA_BITS: tl.constexpr, EXPONENT_BIAS: tl.constexpr, FP8_MAX: tl.constexpr):
    """The fp8 bits (uint8) of ``x * inv_scale``, saturated at +-FP8_MAX, rounded to nearest even."""
    y = x.to(tl.float32) * inv_scale
    is_nan = y != y
    y = tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX)
    bits = y.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    magnitude = bits & 0x7FFFFFFF
    # Normal range: round the float32 mantissa to MANTISSA_BITS (nearest, ties to even; a carry
    # moves into the exponent by itself), then rebias the exponent from 127 to EXPONENT_BIAS.
    drop: tl.constexpr = 23 - MANTISSA_BITS
    rounded = magnitude + ((1 << (drop - 1)) - 1) + ((magnitude >> drop) & 1)
    normal = (rounded >> drop) - ((127 - EXPONENT_BIAS) << MANTISSA_BITS)
    # Below the smallest normal, 2^(1 - bias), the step is fixed at 2^(1 - bias - mantissa bits):
    # the code is |y| in steps, rounded to nearest even by adding 2^23 in float32.
    steps = tl.abs(y) * (2.0 ** (EXPONENT_BIAS - 1 + MANTISSA_BITS)) + 8388608.0
    subnormal = steps.to(tl.int32, bitcast=True) - 0x4B000000
    code = tl.where(magnitude < ((128 - EXPONENT_BIAS) << 23), subnormal, normal) | sign
    return tl.where(is_nan, 0x7F, code).to(tl.uint8)


@triton.jit
def _fp8_to_float16(code, MANTISSA_BITS: tl.constexpr):
    """fp8 bits (uint8) -> the float16 with the same sign, exponent and mantissa bits.

    e5m2 is float16's top byte: its exact value. e4m3 (exponent bias 7, not 15) reads as 2^-8 of
    its value, subnormals included; callers fold 2^8 into their scales (``FP16_VIEW_FACTOR``).
    """
    c = code.to(tl.uint16)
    return (((c & 0x7F) << (10 - MANTISSA_BITS)) | ((c & 0x80) << 8)).to(tl.float16, bitcast=True)


def fp16_view_factor(fmt: Fp8Format) -> float:
    """What ``_fp8_to_float16``'s value must be multiplied by: 2^(15 - exponent bias)."""
    return 2.0 ** (15 - fmt.exponent_bias) if fmt.mantissa_bits else 1.0


@triton.jit
def _write_kv_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # same shape and strides as key_cache
    slot_mapping_ptr,  # [num_tokens] int64
    k_inv_scale,  # fp8 caches: 1 / the layer's key scale
    v_inv_scale,
    key_stride_token,
    key_stride_head,
    value_stride_token,
    value_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    BLOCK_SIZE: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_KV_HEADS_PADDED: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    FP8_MANTISSA_BITS: tl.constexpr,  # 0: the cache is in a float dtype, not fp8
    FP8_EXPONENT_BIAS: tl.constexpr,
    FP8_MAX: tl.constexpr,
):
    # One program per token, moving all of its kv heads at once: [heads, dims] is a few
    # KiB, enough work per program without a second grid axis.
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:
        # Padding token (e.g. a CUDA-graph batch filled up to a fixed size): nothing to store.
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE

    heads = tl.arange(0, NUM_KV_HEADS_PADDED)
    dims = tl.arange(0, HEAD_DIM_PADDED)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)

    key = tl.load(key_ptr + token * key_stride_token + heads[:, None] * key_stride_head + dims[None, :], mask=mask)
    value = tl.load(
        value_ptr + token * value_stride_token + heads[:, None] * value_stride_head + dims[None, :], mask=mask
    )
    # block * stride can pass 2**31 elements in a large pool: block is int64 already.
    dst = block * cache_stride_block + offset * cache_stride_slot + heads[:, None] * cache_stride_head + dims[None, :]
    if FP8_MANTISSA_BITS > 0:
        key = _fp8_encode(key, k_inv_scale, FP8_MANTISSA_BITS, FP8_EXPONENT_BIAS, FP8_MAX)
        value = _fp8_encode(value, v_inv_scale, FP8_MANTISSA_BITS, FP8_EXPONENT_BIAS, FP8_MAX)
    tl.store(key_cache_ptr + dst, key.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_cache_ptr + dst, value.to(value_cache_ptr.dtype.element_ty), mask=mask)


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
             k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Store each token's key and value at its cache slot, cast to the cache's dtype.

    key, value: [num_tokens, num_kv_heads, head_dim] (any strides, last dim contiguous)
    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim] (last dim contiguous); an fp8
    cache stores key / k_scale and value / v_scale, saturated (``reference.write_kv_ref``).
    slot_mapping: [num_tokens] int64, slot = block_id * block_size + offset; a negative
    slot marks a padding token and is skipped.
    """
    _check_write_kv_args(key, value, kv_cache, slot_mapping)
    fmt = fp8_format(kv_cache.dtype)
    _check_scales(fmt, k_scale, v_scale)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if fmt.mantissa_bits:
        kv_cache = kv_cache.view(torch.uint8)
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    _write_kv_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        1.0 / k_scale,
        1.0 / v_scale,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        BLOCK_SIZE=kv_cache.shape[2],
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        NUM_KV_HEADS_PADDED=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM_PADDED=triton.next_power_of_2(head_dim),
        FP8_MANTISSA_BITS=fmt.mantissa_bits,
        FP8_EXPONENT_BIAS=fmt.exponent_bias,
        FP8_MAX=fmt.max,
    )


def _check_scales(fmt: Fp8Format, k_scale: float, v_scale: float) -> None:
    if not fmt.mantissa_bits and (k_scale, v_scale) != (1.0, 1.0):
        raise ValueError("k_scale and v_scale apply to an fp8 cache only")
    if not (k_scale > 0 and v_scale > 0):
        raise ValueError(f"k_scale and v_scale must be positive; got {k_scale}, {v_scale}")


def _check_write_kv_args(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    if key.dim() != 3 or value.shape != key.shape:
        raise ValueError(
            "key and value must both be [num_tokens, num_kv_heads, head_dim]; "
            f"got {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[3:] != key.shape[1:]:
        raise ValueError(
            f"kv_cache must be [2, num_blocks, block_size, {key.shape[1]}, {key.shape[2]}] to hold these keys; "
            f"got {tuple(kv_cache.shape)}"
        )
    if slot_mapping.dtype != torch.int64 or slot_mapping.shape != (key.shape[0],):
        raise ValueError(
            f"slot_mapping must be int64 of shape [{key.shape[0]}]; "
            f"got {slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        )
    if not slot_mapping.is_contiguous():
        raise ValueError("slot_mapping must be contiguous")
    for name, tensor in (("key", key), ("value", value), ("kv_cache", kv_cache)):
        allowed = (torch.float16, torch.bfloat16, torch.float32, *(FP8_FORMATS if name == "kv_cache" else ()))
        if tensor.dtype not in allowed:
            raise ValueError(f"{name} must be float16, bfloat16 or float32{' or fp8' if len(allowed) > 3 else ''}; "
                             f"got {tensor.dtype}")
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head_dim) dimension")
    devices = {t.device for t in (key, value, kv_cache, slot_mapping)}
    if len(devices) != 1:
        raise ValueError(
            f"key, value, kv_cache and slot_mapping must be on one device; got {sorted(map(str, devices))}"
        )
