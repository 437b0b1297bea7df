"""GGUF-quantized matmuls on the CPU (gguf_ops.c, built by ``cpu_build``): llama.cpp's packed
weights repacked once, multiplied without dequantizing them, and rows looked up.

Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (``SUPPORTED_TYPES``, ggml's ids).
``repack`` turns a tensor's GGUF rows into the kernels' layout (groups of 16 rows, see
gguf_layout.h); ``matmul`` computes ``x @ W.T`` from it, quantizing ``x`` to int8 blocks as
llama.cpp does (so results differ from a float matmul by that rounding: see
tests/kernels/test_gguf_ops.py for the tolerances); ``dequantize_rows`` gives rows back as
floats (a quantized token embedding's lookup, and the prefill path of the method).

The instruction set is chosen at run time (``default_isa``): AVX-512 VNNI, else AVX2, else
portable C. ``FW_GGUF_ISA=avx512|avx2|portable`` forces one (refused if the CPU lacks it);
tests pass ``isa=`` to run every path the machine has.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from fw.kernels.cpu_build import build

SOURCE = Path(__file__).with_name("gguf_ops.c")
ISAS = {"portable": 0, "avx2": 1, "avx512": 2}
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: ggml type id -> name, for the types the kernels take.
SUPPORTED_TYPES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}
#: ggml type id -> (columns per block, bytes per block) of the GGUF rows ``repack`` reads.
GGUF_BLOCKS = {2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 12: (256, 144), 13: (256, 176),
               14: (256, 210)}
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "gguf_packed_bytes": ([_int, _i64, _i64], _i64),
    "gguf_repack": ([_int, _ptr, _i64, _i64, _i64, _ptr, _int], _int),
    "gguf_dequantize_rows": ([_int, _ptr, _i64, _i64, _ptr, _i64, _ptr, _i64, _int, _int], _int),
    "gguf_isa_supported": ([_int], _int),
    "gguf_matmul": ([_int, _int, _ptr, _i64, _i64, _ptr, _i64, _int, _i64, _ptr, _i64, _int, _int], _int),
    "gguf_dequantize_t": ([_int, _int, _ptr, _i64, _i64, _ptr, _i64, _int, _int], _int),
}


@functools.cache
def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The built library (``extra_flags`` build another variant, e.g. ``("-march=x86-64-v3",)``
    for what an AVX2-only CPU compiles), or None without a C compiler."""
    library = build(SOURCE, extra_flags)
    if library is None:
        return None
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, restype
    return library


def available() -> bool:
    return load() is not None


def isa_supported(isa: str, library: ctypes.CDLL | None = None) -> bool:
    library = library or load()
    return library is not None and bool(library.gguf_isa_supported(ISAS[isa]))


@functools.cache
def default_isa() -> str:
    """The fastest path this CPU runs, or the one ``FW_GGUF_ISA`` names (checked once)."""
    forced = os.environ.get("FW_GGUF_ISA")
    if forced:
        if forced not in ISAS:
            raise ValueError(f"FW_GGUF_ISA={forced!r}: expected one of {', '.join(ISAS)}")
        if not isa_supported(forced):
            raise ValueError(f"FW_GGUF_ISA={forced}: this CPU (or build) cannot run it")
        return forced
    return next(isa for isa in ("avx512", "avx2", "portable") if isa_supported(isa))


def supports(ggml_type: int, k: int) -> bool:
    """Whether the kernels take a weight of this type with rows of ``k`` values."""
    return ggml_type in SUPPORTED_TYPES and k % 32 == 0


def packed_bytes(ggml_type: int, n: int, k: int) -> int:
    return int(load().gguf_packed_bytes(ggml_type, n, k))


def _check(status: int, name: str) -> None:
    if status == -2:
        raise ValueError(f"the GGUF kernel {name}: this CPU cannot run the instruction set asked for")
    if status == -3:
        raise MemoryError(f"the GGUF kernel {name} ran out of memory")
    if status != 0:
        raise ValueError(f"the GGUF kernel {name} refused its arguments (status {status})")


def repack(rows: torch.Tensor, ggml_type: int, k: int, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """``rows: uint8 [N, row_bytes]``, N rows of ``ggml_type`` blocks holding ``k`` values each
    -> the kernels' layout, a flat uint8 tensor."""
    library = library or load()
    if not supports(ggml_type, k):
        raise ValueError(f"the GGUF kernels do not take type {ggml_type} with rows of {k} values")
    block_cols, block_bytes = GGUF_BLOCKS[ggml_type]
    if rows.dtype != torch.uint8 or rows.dim() != 2 or rows.shape[1] != k // block_cols * block_bytes \
            or k % block_cols or rows.stride(1) != 1:
        raise ValueError(f"repack takes uint8 rows of {k // block_cols * block_bytes} bytes with a contiguous "
                         f"last dimension, got {rows.dtype} {tuple(rows.shape)}")
    n = rows.shape[0]
    out = torch.empty(int(library.gguf_packed_bytes(ggml_type, n, k)), dtype=torch.uint8)
    _check(library.gguf_repack(ggml_type, rows.data_ptr(), rows.stride(0), n, k, out.data_ptr(),
                               torch.get_num_threads()), "repack")
    return out


def _check_packed(packed: torch.Tensor, ggml_type: int, n: int, k: int, library: ctypes.CDLL) -> None:
    expected = library.gguf_packed_bytes(ggml_type, n, k) if ggml_type in SUPPORTED_TYPES else -1
    if packed.dtype != torch.uint8 or not packed.is_contiguous() or packed.numel() != expected:
        raise ValueError(f"not a repacked {SUPPORTED_TYPES.get(ggml_type, ggml_type)} weight of [{n}, {k}] "
                         f"({expected} bytes): got {packed.dtype} with {packed.numel()} elements")


def matmul(x: torch.Tensor, packed: torch.Tensor, ggml_type: int, n: int, k: int, out: torch.Tensor | None = None,
           isa: str | None = None, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """``x: [M, K]`` (float32 or bfloat16, rows with a contiguous last dimension) times the
    repacked ``[n, k]`` weight, transposed -> ``[M, n]`` in ``x``'s dtype, or written into
    ``out`` (``[M, n]``, a view with a contiguous last dimension, e.g. columns of a wider
    output: fused layers write each part in place)."""
    library = library or load()
    _check_packed(packed, ggml_type, n, k, library)
    if x.dtype not in DTYPES or x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
        raise ValueError(f"matmul takes x: [M, {k}] float32 or bfloat16 with a contiguous last dimension, got "
                         f"{x.dtype} {tuple(x.shape)}")
    if out is None:
        out = torch.empty(x.shape[0], n, dtype=x.dtype)
    elif out.dtype not in DTYPES or tuple(out.shape) != (x.shape[0], n) or out.stride(1) != 1:
        raise ValueError(f"matmul's out must be [{x.shape[0]}, {n}] float32 or bfloat16 with a contiguous last "
                         f"dimension, got {out.dtype} {tuple(out.shape)}")
    _check(library.gguf_matmul(ggml_type, ISAS[isa or default_isa()], packed.data_ptr(), n, k, x.data_ptr(),
                               x.stride(0), DTYPES[x.dtype], x.shape[0], out.data_ptr(), out.stride(0),
                               DTYPES[out.dtype], torch.get_num_threads()), "matmul")
    return out


class PackedMatrix:
    """A repacked ``[n, k]`` weight checked once, for the token path: each call checks only ``x``
    and ``out`` (about 3 us less per call than :func:`matmul`, ~120 calls per decode step)."""

    def __init__(self, packed: torch.Tensor, ggml_type: int, n: int, k: int, isa: str | None = None) -> None:
        self.library = load()
        _check_packed(packed, ggml_type, n, k, self.library)
        self.packed, self.ggml_type, self.n, self.k = packed, ggml_type, n, k
        self._pointer, self._isa = packed.data_ptr(), ISAS[isa or default_isa()]

    def c_call(self) -> tuple[int, int, int, int]:
        """``(address of gguf_matmul, type, isa code, weight address)``: what a caller in C
        passes to compute this matmul (fw.kernels.cpu_decode)."""
        return ctypes.cast(self.library.gguf_matmul, ctypes.c_void_p).value, self.ggml_type, self._isa, self._pointer

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """As :func:`matmul`."""
        m, n = x.shape[0], self.n
        if x.dtype not in DTYPES or x.dim() != 2 or x.shape[1] != self.k or x.stride(1) != 1:
            raise ValueError(f"matmul takes x: [M, {self.k}] float32 or bfloat16 with a contiguous last dimension, "
                             f"got {x.dtype} {tuple(x.shape)}")
        if out is None:
            out = torch.empty(m, n, dtype=x.dtype)
        elif out.dtype not in DTYPES or out.shape[0] != m or out.shape[1] != n or out.dim() != 2 or out.stride(1) != 1:
            raise ValueError(f"matmul's out must be [{m}, {n}] float32 or bfloat16 with a contiguous last "
                             f"dimension, got {out.dtype} {tuple(out.shape)}")
        status = self.library.gguf_matmul(self.ggml_type, self._isa, self._pointer, n, self.k, x.data_ptr(),
                                          x.stride(0), DTYPES[x.dtype], m, out.data_ptr(), out.stride(0),
                                          DTYPES[out.dtype], torch.get_num_threads())
        if status:
            _check(status, "matmul")
        return out


def dequantize_transposed(packed: torch.Tensor, ggml_type: int, n: int, k: int, dtype: torch.dtype = torch.float32,
                          out: torch.Tensor | None = None, isa: str | None = None,
                          library: ctypes.CDLL | None = None) -> torch.Tensor:
    """The whole repacked ``[n, k]`` weight as ``W.T``: ``[k, n16]`` floats, ``n16`` = n rounded up
    to 16 (the extra columns are zeros); into ``out`` (contiguous, at least that size) when given."""
    library = library or load()
    _check_packed(packed, ggml_type, n, k, library)
    if dtype not in DTYPES:
        raise ValueError(f"dequantize_transposed gives float32 or bfloat16, not {dtype}")
    width = -(-n // 16) * 16
    if out is None:
        out = torch.empty(k, width, dtype=dtype)
    elif out.dtype != dtype or not out.is_contiguous() or out.numel() < k * width:
        raise ValueError(f"dequantize_transposed's out must be contiguous {dtype} of at least {k * width} elements")
    view = out.view(-1)[: k * width].view(k, width)
    _check(library.gguf_dequantize_t(ggml_type, ISAS[isa or default_isa()], packed.data_ptr(), n, k, view.data_ptr(),
                                     width, DTYPES[dtype], torch.get_num_threads()), "dequantize_transposed")
    return view


def dequantize_rows(packed: torch.Tensor, ggml_type: int, n: int, k: int, ids: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """Rows ``ids`` (all rows when None) of the repacked ``[n, k]`` weight as ``[len(ids), k]`` floats."""
    library = library or load()
    _check_packed(packed, ggml_type, n, k, library)
    if dtype not in DTYPES:
        raise ValueError(f"dequantize_rows gives float32 or bfloat16, not {dtype}")
    ids = torch.arange(n) if ids is None else ids.to(torch.int64).contiguous()
    out = torch.empty(ids.numel(), k, dtype=dtype)
    status = library.gguf_dequantize_rows(ggml_type, packed.data_ptr(), n, k, ids.data_ptr(), ids.numel(),
                                          out.data_ptr(), k, DTYPES[dtype], torch.get_num_threads())
    if status == -2:
        raise IndexError(f"a row id is out of range for a weight of {n} rows")
    _check(status, "dequantize_rows")
    return out
