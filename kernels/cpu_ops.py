"""Fused per-token CPU ops in C (cpu_ops.c, built by ``cpu_build``): RMSNorm with the residual
add, SiLU-and-multiply, neox rotary embedding, and temperature sampling.

Each replaces a chain of small torch ops, whose dispatch and temporaries dominate a decode
step on a CPU once the matmuls are done. The CPU platform decides once, when a model is
built, whether its ops are these (``CpuPlatform.ops``); the wrappers check each call's
dtypes and strides and raise rather than read memory wrongly. ``FW_CPU_OPS=0`` turns them
off.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from fw.kernels.cpu_build import build

SOURCE = Path(__file__).with_name("cpu_ops.c")
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_i64, _ptr, _int, _float = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "rms_norm": [_ptr, _i64, _ptr, _i64, _ptr, _ptr, _i64, _i64, _i64, _float, _int, _int],
    "silu_and_mul": [_ptr, _i64, _ptr, _i64, _i64, _i64, _int, _int],
    "rotary_neox": [_ptr, _i64, _i64, _i64, _ptr, _i64, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _int, _int],
    "sample_rows": [_ptr, _i64, _int, _ptr, _ptr, _ptr, _i64, _i64, _int],
}


@functools.cache
def load() -> ctypes.CDLL | None:
    if os.environ.get("FW_CPU_OPS", "1") == "0":
        return None
    # Fast math for vectorised exp and reductions; the code tests -inf (masked logits) on bits.
    library = build(SOURCE, ("-ffast-math",))
    if library is None:
        return None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = ctypes.c_int, argtypes
    return library


def _check_args(name: str, *tensors: torch.Tensor) -> None:
    """The C ops read rows of one dtype with a contiguous last dimension."""
    dtype = tensors[0].dtype
    if dtype not in DTYPES or any(t.dtype != dtype or t.stride(-1) != 1 for t in tensors):
        raise ValueError(f"the C op {name} takes float32 or bfloat16 tensors of one dtype with a contiguous last "
                         f"dimension, got {[t.dtype for t in tensors]}")


def _check(status: int, name: str) -> None:
    if status != 0:
        raise ValueError(f"the C op {name} refused its arguments (a row longer than 16384 values) or ran out of memory")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of ``x: [T, D]``; with ``residual``, of ``x + residual``, which is also written
    into ``residual`` (in place)."""
    weight = weight.contiguous()
    _check_args("rms_norm", x, weight, *([] if residual is None else [residual]))
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    status = load().rms_norm(
        x.data_ptr(), x.stride(0), residual.data_ptr() if residual is not None else None,
        residual.stride(0) if residual is not None else 0, weight.data_ptr(), out.data_ptr(), out.stride(0),
        x.shape[0], x.shape[1], eps, DTYPES[x.dtype], torch.get_num_threads())
    _check(status, "rms_norm")
    return out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``gate_up: [T, 2I]`` -> ``silu(gate_up[:, :I]) * gate_up[:, I:]``."""
    _check_args("silu_and_mul", gate_up)
    num_rows, dim = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(num_rows, dim, dtype=gate_up.dtype)
    status = load().silu_and_mul(gate_up.data_ptr(), gate_up.stride(0), out.data_ptr(), out.stride(0), num_rows, dim,
                                 DTYPES[gate_up.dtype], torch.get_num_threads())
    _check(status, "silu_and_mul")
    return out


def rotary_neox_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate ``q: [T, Hq, D]`` and ``k: [T, Hk, D]`` in place; ``cos, sin: [T, D/2]`` share a row stride."""
    _check_args("rotary_neox", q, k, cos, sin)
    if cos.stride(0) != sin.stride(0):
        raise ValueError("cos and sin must share their row stride")
    status = load().rotary_neox(
        q.data_ptr(), q.stride(0), q.stride(1), q.shape[1], k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
        cos.data_ptr(), sin.data_ptr(), cos.stride(0), q.shape[0], q.shape[2], DTYPES[q.dtype],
        torch.get_num_threads())
    _check(status, "rotary_neox")


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits: [N, V]`` (float32 or bfloat16): argmax where ``temperature <= 0``,
    else the inverse-CDF draw at ``uniform`` (in [0, 1)) from ``softmax(logits / temperature)``."""
    _check_args("sample_rows", logits)
    temperature = temperature.to(torch.float32).contiguous()
    uniform = uniform.to(torch.float32).contiguous()
    out = torch.empty(logits.shape[0], dtype=torch.long)
    status = load().sample_rows(logits.data_ptr(), logits.stride(0), DTYPES[logits.dtype], temperature.data_ptr(),
                                uniform.data_ptr(), out.data_ptr(), logits.shape[0], logits.shape[1],
                                torch.get_num_threads())
    _check(status, "sample_rows")
    return out
