"""Triton kernel: write a step's new keys and values into the paged KV cache.

The GPU twin of ``reference.write_kv_ref`` (vLLM calls it ``reshape_and_cache_flash``).
Leaf code: imports neither ``fw.core`` nor ``fw.plugins``, and importing it touches no GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # same shape and strides as key_cache
    slot_mapping_ptr,  # [num_tokens] int64
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
    tl.store(key_cache_ptr + dst, key.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_cache_ptr + dst, value.to(value_cache_ptr.dtype.element_ty), mask=mask)


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store each token's key and value at its cache slot, cast to the cache's dtype.

    key, value: [num_tokens, num_kv_heads, head_dim] (any strides, last dim contiguous)
    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim] (last dim contiguous)
    slot_mapping: [num_tokens] int64, slot = block_id * block_size + offset; a negative
    slot marks a padding token and is skipped.
    """
    _check_write_kv_args(key, value, kv_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    _write_kv_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
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
    )


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
        if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be float16, bfloat16 or float32; got {tensor.dtype}")
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head_dim) dimension")
    devices = {t.device for t in (key, value, kv_cache, slot_mapping)}
    if len(devices) != 1:
        raise ValueError(
            f"key, value, kv_cache and slot_mapping must be on one device; got {sorted(map(str, devices))}"
        )
