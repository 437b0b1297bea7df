"""Triton kernels: weight-only quantized matmuls, ``y = x @ W.T``, on the canonical layouts of
``fw.plugins.quantization`` (int_weights.py, fp8_weights.py), read as they are stored.

Both kernels keep the quantized weight in memory and widen one tile at a time; activations stay
in their dtype (float16, bfloat16 or float32), ``tl.dot`` accumulates in float32, and the output
comes back in the activations' dtype. The grid is (row blocks, column blocks); a program owns a
``BLOCK_M x BLOCK_N`` tile of the output and walks K in ``BLOCK_K`` steps.

- ``int_matmul`` (W4A16 / W8A16): the int32 words hold ``32 / bits`` codes of consecutive inputs,
  the lowest input in the lowest bits. Each ``BLOCK_K x BLOCK_N`` tile of codes is read as int32
  words, one per code (consecutive rows load the same word and shift it by their own slot; the
  repeated addresses are served from L1, as in AutoGPTQ's Triton kernel), and the zero point is
  subtracted. ``BLOCK_K`` divides the group size, so a tile lies in one group: the tile's
  ``code - zero`` values are small integers, exact in every activation dtype, ``tl.dot`` multiplies
  them by ``x`` exactly and the group's scales multiply the float32 partial sum. The weight is
  never rounded to the activations' dtype, unlike dequantize-then-matmul. Act-order is the
  caller's: it passes ``x[:, perm]`` (one index_select per call, as the CPU kernel does).
- ``fp8_matmul``: float8_e4m3fn weights ``[N, K]`` are read as their bytes and widened with
  integer operations (``triton_cache._fp8_to_float16``: e4m3 conversions exist on GPUs from sm_89
  only, and the interpreter's differ from them), exactly, to the activations' dtype. Per-tensor
  and per-channel scales multiply the finished sums; block scales multiply each K tile's partial
  sum (``BLOCK_K`` divides the block's width). Activations are not quantized, whatever the
  checkpoint's ``input_scheme``: fw computes FP8 layers weight-only on every device.

Under the interpreter (the tests on CPUs) bfloat16 tiles are widened to float32 for the dot
(``_dot_options`` says why); compiled, they go to the tensor cores as bfloat16.

Tile sizes are picked from the shapes, not measured on a GPU yet: ``BLOCK_M`` follows M up to
64 and ``BLOCK_N`` is 32 for decode-sized M (more programs over N), 64 otherwise. Nothing splits K,
so a decode of a narrow layer leaves part of a large GPU idle; split-K is the next step if
profiling shows it.

Leaf code: imports neither ``fw.core`` nor ``fw.plugins``, and importing it touches no GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fw.kernels.triton_cache import FP8_FORMATS, _fp8_to_float16, fp16_view_factor

INT_BITS = (4, 8)
FP8_STRATEGIES = ("tensor", "channel", "block")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# tl.dot needs every dimension >= 16 on GPUs; smaller tiles are padded and masked.
_MIN_DOT_DIM = 16
_MAX_BLOCK_K = 64
_FP8_E4M3 = FP8_FORMATS[torch.float8_e4m3fn]
# Triton reads this when ``@triton.jit`` decorates the kernels below, and so does this module.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _int_matmul_kernel(
    out_ptr,  # [M, N], x's dtype
    x_ptr,  # [M, K], inputs in kernel order
    qweight_ptr,  # int32 [K / (32 / BITS), N], contiguous
    scales_ptr,  # [K / GROUP_SIZE, N], contiguous
    zeros_ptr,  # uint8 [K / GROUP_SIZE, N], contiguous; not read without HAS_ZEROS
    bias_ptr,  # [N]; not read without HAS_BIAS
    M,
    N,
    K,
    x_stride,
    out_stride,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # divides GROUP_SIZE, hence K: no K tile is partial
    DOT_DTYPE: tl.constexpr,  # the dot's operands: x's dtype (float32 for bfloat16 in the interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 dots; None = the default
):
    PER_WORD: tl.constexpr = 32 // BITS
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    shifts = (ks % PER_WORD) * BITS  # [BLOCK_K]: input k's slot in its word

    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * x_stride + ks[None, :]  # [BLOCK_M, BLOCK_K]
    word_ptrs = qweight_ptr + (ks // PER_WORD)[:, None] * N + cols[None, :]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        x = tl.load(x_ptrs, mask=row_mask[:, None], other=0.0)
        words = tl.load(word_ptrs, mask=col_mask[None, :], other=0)
        codes = (words >> shifts[:, None]) & ((1 << BITS) - 1)  # [BLOCK_K, BLOCK_N], in [0, 2**BITS)
        group_offset = (k_start // GROUP_SIZE) * N + cols
        if HAS_ZEROS:
            codes -= tl.load(zeros_ptr + group_offset, mask=col_mask, other=0).to(tl.int32)[None, :]
        else:
            codes -= 1 << (BITS - 1)
        scale = tl.load(scales_ptr + group_offset, mask=col_mask, other=0.0).to(tl.float32)
        # |code - zero| < 256: exact in float16 and bfloat16, so the dot's products are exact.
        acc += tl.dot(x.to(DOT_DTYPE), codes.to(DOT_DTYPE), input_precision=DOT_PRECISION) * scale[None, :]
        x_ptrs += BLOCK_K
        word_ptrs += (BLOCK_K // PER_WORD) * N

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * out_stride + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _fp8_matmul_kernel(
    out_ptr,  # [M, N], x's dtype
    x_ptr,  # [M, K]
    weight_ptr,  # uint8 [N, K]: float8_e4m3fn bytes, K contiguous
    scale_ptr,  # float32: weight (n, k)'s scale at (n // SCALE_BLOCK_N, k // SCALE_BLOCK_K) of the strides below
    bias_ptr,  # [N]; not read without HAS_BIAS
    M,
    N,
    K,
    x_stride,
    weight_stride,
    out_stride,
    scale_stride_n,
    scale_stride_k,
    view_factor,  # what _fp8_to_float16's values are multiplied by (2**8 for e4m3)
    SCALE_BLOCK_N: tl.constexpr,
    SCALE_BLOCK_K: tl.constexpr,  # 0: one scale along K (tensor, channel): applied to the finished sums
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # divides SCALE_BLOCK_K when that is set
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    scale_ptrs = scale_ptr + (cols // SCALE_BLOCK_N) * scale_stride_n  # [BLOCK_N], the first K block

    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * x_stride + ks[None, :]  # [BLOCK_M, BLOCK_K]
    weight_ptrs = weight_ptr + cols.to(tl.int64)[None, :] * weight_stride + ks[:, None]  # [BLOCK_K, BLOCK_N]: W.T
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k_mask = ks < K - k_start  # the last tile may be partial
        x = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        codes = tl.load(weight_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0)
        # Exact: every e4m3 value (times 2**-8) is a float16, bfloat16 and float32 value.
        w = _fp8_to_float16(codes, 3).to(DOT_DTYPE)
        partial = tl.dot(x.to(DOT_DTYPE), w, input_precision=DOT_PRECISION)
        if SCALE_BLOCK_K > 0:
            scale = tl.load(scale_ptrs + (k_start // SCALE_BLOCK_K) * scale_stride_k, mask=col_mask, other=0.0)
            acc += partial * scale[None, :]
        else:
            acc += partial
        x_ptrs += BLOCK_K
        weight_ptrs += BLOCK_K

    if SCALE_BLOCK_K == 0:
        acc *= tl.load(scale_ptrs, mask=col_mask, other=0.0)[None, :]
    acc *= view_factor
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * out_stride + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _dot_options(dtype: torch.dtype) -> dict:
    """The dot's operand dtype and precision for activations in ``dtype``. The interpreter's
    ``tl.dot`` multiplies bfloat16's raw uint16 storage, so there bfloat16 tiles are widened to
    float32 first: the same sums, as the products are exact in float32 either way."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and _INTERPRETED):
        return {"DOT_DTYPE": tl.float32, "DOT_PRECISION": "ieee"}  # not TF32: results match the reference
    return {"DOT_DTYPE": tl.float16 if dtype == torch.float16 else tl.bfloat16, "DOT_PRECISION": None}


def _block_k(width: int) -> int:
    """The K tile for groups / scale blocks ``width`` inputs wide: the largest power of two that
    divides it, up to ``_MAX_BLOCK_K`` (below ``_MIN_DOT_DIM`` the kernels refuse the layout)."""
    return min(width & -width, _MAX_BLOCK_K)


def _block_mn(num_rows: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for ``num_rows`` rows of x (see the module docstring)."""
    block_m = min(64, max(_MIN_DOT_DIM, triton.next_power_of_2(num_rows)))
    return block_m, 32 if num_rows <= _MIN_DOT_DIM else 64


def supports_int(bits: int, group_size: int) -> bool:
    """Whether ``int_matmul`` takes this layout: the group size must be a multiple of 16 (a K tile
    of at least 16 inputs divides it)."""
    return bits in INT_BITS and group_size > 0 and _block_k(group_size) >= _MIN_DOT_DIM


def supports_fp8(strategy: str, block_size: tuple[int, int] | None) -> bool:
    """Whether ``fp8_matmul`` takes this layout: block scales need a block width that is a multiple
    of 16 (a K tile of at least 16 inputs divides it)."""
    if strategy != "block":
        return strategy in FP8_STRATEGIES
    return block_size is not None and min(block_size) > 0 and _block_k(block_size[1]) >= _MIN_DOT_DIM


def int_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
               group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x: [M, K]`` (inputs in kernel order: the caller applies act-order's ``perm``) times the
    canonical int weights (``qweight`` int32 ``[K / P, N]``, ``scales`` ``[G, N]``, ``zeros`` uint8
    ``[G, N]`` or None for ``2**(bits - 1)``), plus ``bias: [N]`` -> ``[M, N]`` in x's dtype."""
    _check_activations(x)
    if bits not in INT_BITS:
        raise ValueError(f"bits must be one of {INT_BITS}; got {bits}")
    if not supports_int(bits, group_size):
        raise ValueError(f"group_size {group_size} is not a multiple of {_MIN_DOT_DIM}")
    num_rows, num_inputs = x.shape
    num_outputs = qweight.shape[1] if qweight.dim() == 2 else -1
    num_groups = num_inputs // group_size
    if qweight.dtype != torch.int32 or qweight.shape != (num_inputs * bits // 32, num_outputs):
        raise ValueError(f"qweight must be int32 [{num_inputs * bits // 32}, N] for {num_inputs} inputs; "
                         f"got {qweight.dtype} {tuple(qweight.shape)}")
    if num_inputs % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {num_inputs} inputs")
    if scales.dtype not in FLOAT_DTYPES or scales.shape != (num_groups, num_outputs):
        raise ValueError(f"scales must be a float [{num_groups}, {num_outputs}] tensor; "
                         f"got {scales.dtype} {tuple(scales.shape)}")
    if zeros is not None and (zeros.dtype != torch.uint8 or zeros.shape != scales.shape):
        raise ValueError(f"zeros must be uint8 [{num_groups}, {num_outputs}]; got {zeros.dtype} {tuple(zeros.shape)}")
    _check_bias(bias, num_outputs)
    if not all(t.is_contiguous() for t in (qweight, scales) + ((zeros,) if zeros is not None else ())):
        raise ValueError("qweight, scales and zeros must be contiguous")

    out = torch.empty(num_rows, num_outputs, dtype=x.dtype, device=x.device)
    if num_rows == 0 or num_outputs == 0:
        return out
    block_m, block_n = _block_mn(num_rows)
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(num_outputs, block_n))
    _int_matmul_kernel[grid](
        out, x, qweight, scales, scales if zeros is None else zeros, out if bias is None else bias,
        num_rows, num_outputs, num_inputs, x.stride(0), out.stride(0),
        BITS=bits,
        GROUP_SIZE=group_size,
        HAS_ZEROS=zeros is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=_block_k(group_size),
        **_dot_options(x.dtype),
    )
    return out


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, strategy: str,
               block_size: tuple[int, int] | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x: [M, K]`` times the canonical FP8 weights (``weight`` float8_e4m3fn ``[N, K]``,
    ``scale`` float32 ``[1]`` for "tensor", ``[N, 1]`` for "channel", ``[ceil(N / bn),
    ceil(K / bk)]`` for "block" with ``block_size = (bn, bk)``), plus ``bias: [N]`` -> ``[M, N]``
    in x's dtype. Weight-only: x is not quantized."""
    _check_activations(x)
    if strategy not in FP8_STRATEGIES:
        raise ValueError(f"strategy must be one of {FP8_STRATEGIES}; got {strategy!r}")
    if not supports_fp8(strategy, block_size):
        raise ValueError(f"block_size {block_size} needs blocks a multiple of {_MIN_DOT_DIM} inputs wide")
    num_rows, num_inputs = x.shape
    if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2 or weight.shape[1] != num_inputs:
        raise ValueError(f"weight must be float8_e4m3fn [N, {num_inputs}]; got {weight.dtype} {tuple(weight.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("weight must be contiguous along K")
    num_outputs = weight.shape[0]
    if strategy == "block":
        block_n, block_k = block_size
        expected = (triton.cdiv(num_outputs, block_n), triton.cdiv(num_inputs, block_k))
    else:
        block_n, block_k = 1, 0
        expected = (1,) if strategy == "tensor" else (num_outputs, 1)
    if scale.dtype != torch.float32 or scale.shape != expected:
        raise ValueError(f"{strategy} scales must be float32 {list(expected)}; got {scale.dtype} {tuple(scale.shape)}")
    _check_bias(bias, num_outputs)

    out = torch.empty(num_rows, num_outputs, dtype=x.dtype, device=x.device)
    if num_rows == 0 or num_outputs == 0:
        return out
    # A tensor scale is read at offset 0 for every weight; a channel scale at row n, a block's at
    # (n // bn, k // bk).
    scale_strides = (0, 0) if strategy == "tensor" else scale.stride()
    block_m, tile_n = _block_mn(num_rows)
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(num_outputs, tile_n))
    _fp8_matmul_kernel[grid](
        out, x, weight.view(torch.uint8), scale, out if bias is None else bias,
        num_rows, num_outputs, num_inputs, x.stride(0), weight.stride(0), out.stride(0), *scale_strides,
        fp16_view_factor(_FP8_E4M3),
        SCALE_BLOCK_N=block_n,
        SCALE_BLOCK_K=block_k,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=tile_n,
        BLOCK_K=_block_k(block_k) if block_k else _MAX_BLOCK_K,
        **_dot_options(x.dtype),
    )
    return out


def _check_activations(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K]; got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32; got {x.dtype}")
    if x.stride(1) != 1:
        raise ValueError("x must be contiguous along K")


def _check_bias(bias: torch.Tensor | None, num_outputs: int) -> None:
    if bias is not None and (bias.shape != (num_outputs,) or bias.stride(0) != 1):
        raise ValueError(f"bias must be a contiguous [{num_outputs}] tensor; got {tuple(bias.shape)}")
