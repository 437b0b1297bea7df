"""Weight-only int4 / int8 matmuls for the CPU in C (cpu_quant.c, built by ``cpu_build``), on the
canonical int layout (``fw.plugins.quantization.int_weights``) with its codes repacked once
into column tiles.

Why our own kernel: torch's CPU ops each fit one part of the job. On a 2-core Xeon (AVX-512,
AMX), one thread, bfloat16 activations, int4 with zero points, in ms:

====================================  ========  ========  ========  =========
[576 -> 1536], group size 64             M=1       M=8      M=32      M=512
====================================  ========  ========  ========  =========
aten._weight_int4pack_mm_for_cpu        0.046     0.166     0.669     9.69
  (float32 or float16 activations)      1.4      15.5         -         -
dense bf16, oneDNN pre-packed           0.052     0.056       -       0.54
torch dequantize, then matmul           0.79      0.80        -       1.34
``int_gemm`` (this file)                0.051     0.145     0.523       -
``int_dequant`` to bf16, then matmul    0.271     0.289     0.312     0.892
====================================  ========  ========  ========  =========

At 4096 x 4096 (group 128): int4pack 0.80 / 3.06 ms at M = 1 / 8, ``int_gemm`` 0.74 / 2.50 ms,
``int_dequant`` + matmul 24 ms at M = 512. The int4pack op is as fast at decode but only in
bfloat16, only for group sizes 32..256, and grows linearly with M (no AMX): prefill wants the
weights dequantized and a oneDNN matmul. Its packed layout is private (it differs between its
AVX-512 and AVX2 builds), so using it for decode would mean keeping a second copy of the codes
for prefill: 1 byte per weight against 0.5. These kernels read one copy: ``int_gemm`` for
small M (x in float32, any model dtype, any group size, zero points) and ``int_dequant`` to
bfloat16 or float32 for large M, which then multiply in torch. benchmarks/quant_matmul.py
measures them per method.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fw.kernels.cpu_build import build

SOURCE = Path(__file__).with_name("cpu_quant.c")
#: Build variants: the CPU's own instructions, and narrower ones for tests on a wide CPU.
VARIANT_FLAGS = {"native": (), "avx2": ("-mno-avx512f",), "portable": ("-mno-avx512f", "-mno-avx2", "-mno-fma")}
SCALE_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
OUT_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "int_vector_width": [],
    "int_tile_width": [],
    "int_gemm": [_ptr, _ptr, _i64, _i64, _ptr, _i64, _ptr, _int, _ptr, _int, _i64, _ptr, _int],
    "int_dequant": [_ptr, _i64, _i64, _ptr, _int, _ptr, _int, _i64, _ptr, _int, _int],
}


@functools.cache
def load(variant: str = "native") -> ctypes.CDLL | None:
    """The compiled kernels, or None without a compiler or with ``FW_CPU_QUANT_KERNELS=0``."""
    if os.environ.get("FW_CPU_QUANT_KERNELS", "1") == "0":
        return None
    library = build(SOURCE, VARIANT_FLAGS[variant])
    if library is None:
        return None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = ctypes.c_int, argtypes
    return library


def vector_width(variant: str = "native") -> int:
    """Floats per vector in this build: N must be a multiple of it."""
    return load(variant).int_vector_width()


def supports(num_outputs: int, bits: int, group_size: int, variant: str = "native") -> bool:
    """Whether the kernels take a layer of this shape (else the caller computes in torch)."""
    return (load(variant) is not None and bits in (4, 8) and num_outputs % vector_width(variant) == 0
            and group_size % (32 // bits) == 0)


@dataclass
class TiledIntWeights:
    """Canonical int weights with the codes repacked into the kernels' column tiles (cpu_quant.c)."""

    tiles: torch.Tensor  # int32 [K / P * N]: tiles of [K / P, T] columns, one after the other
    scales: torch.Tensor  # [G, N] float32, bfloat16 or float16
    zeros: torch.Tensor | None  # uint8 [G, N]; None: 2**(bits - 1)
    bits: int
    group_size: int
    variant: str = "native"

    @property
    def num_inputs(self) -> int:
        return self.scales.shape[0] * self.group_size

    @property
    def num_outputs(self) -> int:
        return self.scales.shape[1]


def tile(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int, group_size: int,
         variant: str = "native") -> TiledIntWeights:
    """Repack canonical ``qweight: [K / P, N]`` into column tiles, once, after loading.

    Raises ValueError for shapes the kernels do not take (check ``supports`` first).
    """
    num_words, num_outputs = qweight.shape
    if not supports(num_outputs, bits, group_size, variant) or qweight.dtype != torch.int32:
        raise ValueError(f"the int kernels do not take N={num_outputs}, bits={bits}, group_size={group_size}")
    num_groups = num_words * (32 // bits) // group_size
    if scales.dtype not in SCALE_DTYPES or tuple(scales.shape) != (num_groups, num_outputs):
        raise ValueError(f"scales must be float32/bfloat16/float16 [{num_groups}, {num_outputs}]")
    if zeros is not None and (zeros.dtype != torch.uint8 or zeros.shape != scales.shape):
        raise ValueError(f"zeros must be uint8 [{num_groups}, {num_outputs}]")
    width = load(variant).int_tile_width()
    tiles = [qweight[:, start:start + width].contiguous().view(-1) for start in range(0, num_outputs, width)]
    return TiledIntWeights(torch.cat(tiles), scales.contiguous(), None if zeros is None else zeros.contiguous(),
                           bits, group_size, variant)


def int_gemm(x: torch.Tensor, w: TiledIntWeights) -> torch.Tensor:
    """``x: [M, K]`` (kernel order, any float dtype) -> float32 ``[M, N]``: ``x @ W.T`` read from the codes."""
    num_inputs, num_outputs = w.num_inputs, w.num_outputs
    x = x.to(torch.float32).contiguous()
    if x.dim() != 2 or x.shape[1] != num_inputs:
        raise ValueError(f"x must be [M, {num_inputs}], got {tuple(x.shape)}")
    xsum = x.view(x.shape[0], -1, w.group_size).sum(dim=-1).contiguous()  # [M, G]
    out = torch.empty(x.shape[0], num_outputs, dtype=torch.float32)
    status = load(w.variant).int_gemm(
        x.data_ptr(), xsum.data_ptr(), x.shape[0], num_inputs, w.tiles.data_ptr(), num_outputs, w.scales.data_ptr(),
        SCALE_DTYPES[w.scales.dtype], w.zeros.data_ptr() if w.zeros is not None else None, w.bits, w.group_size,
        out.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise ValueError(f"int_gemm refused N={num_outputs}, bits={w.bits}, group_size={w.group_size}")
    return out


def int_dequant(w: TiledIntWeights, dtype: torch.dtype = torch.bfloat16, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The dequantized ``W.T: [K, N]`` (kernel order) in ``dtype`` (bfloat16 or float32), written into
    ``out`` when given: a buffer reused over calls, since a fresh tensor this large costs page faults
    (on a 4096 x 4096 layer, 11 ms of a 16 ms dequantization)."""
    if dtype not in OUT_DTYPES:
        raise ValueError(f"int_dequant writes float32 or bfloat16, not {dtype}")
    shape = (w.num_inputs, w.num_outputs)
    if out is None:
        out = torch.empty(shape, dtype=dtype)
    elif out.shape != shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor {shape}")
    status = load(w.variant).int_dequant(
        w.tiles.data_ptr(), w.num_inputs, w.num_outputs, w.scales.data_ptr(), SCALE_DTYPES[w.scales.dtype],
        w.zeros.data_ptr() if w.zeros is not None else None, w.bits, w.group_size, out.data_ptr(), OUT_DTYPES[dtype],
        torch.get_num_threads())
    if status != 0:
        raise ValueError(f"int_dequant refused N={w.num_outputs}, bits={w.bits}, group_size={w.group_size}")
    return out
