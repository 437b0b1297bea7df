"""A step of single-token decodes through a whole Llama-family decoder in one C call
(cpu_decode.c, built by ``cpu_build``).

The C function only sequences fw's other kernels (reached through function pointers) and
writes the KV cache, so the structures here are the model as those kernels see it:
``Decoder`` (sizes, the op pointers, the final norm) and one ``Layer`` per decoder layer
(its norms, its four linears as native matmul parts, its caches). ``FW_CPU_FUSED_DECODE=0``
turns the path off.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from fw.kernels.cpu_build import build

SOURCE = Path(__file__).with_name("cpu_decode.c")
#: Parts a linear layer's output may be computed in (e.g. q, k, v of different GGUF types).
MAX_PARTS = 4
_i64, _ptr, _f32, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int


class Part(ctypes.Structure):
    _fields_ = [("fn", _ptr), ("kind", _i64), ("isa", _i64), ("weight", _ptr), ("rows", _i64), ("column", _i64)]


class Linear(ctypes.Structure):
    _fields_ = [("num_parts", _i64), ("in_features", _i64), ("out_features", _i64), ("parts", Part * MAX_PARTS),
                ("bias", _ptr)]


class Layer(ctypes.Structure):
    _fields_ = [("input_norm", _ptr), ("post_attention_norm", _ptr), ("qkv", Linear), ("o", Linear),
                ("gate_up", Linear), ("down", Linear), ("k_cache", _ptr), ("v_cache", _ptr),
                ("sliding_window", _i64)]


class Decoder(ctypes.Structure):
    _fields_ = [("rms_norm", _ptr), ("silu_and_mul", _ptr), ("rotary_neox", _ptr), ("attention", _ptr),
                ("hidden", _i64), ("num_heads", _i64), ("num_kv_heads", _i64), ("head_dim", _i64),
                ("intermediate", _i64), ("block_size", _i64), ("num_layers", _i64), ("eps", _f32), ("scale", _f32),
                ("dtype", _i64), ("layers", ctypes.POINTER(Layer)), ("final_norm", _ptr)]


def load() -> ctypes.CDLL | None:
    """The built library, or None (no C compiler, or ``FW_CPU_FUSED_DECODE=0``)."""
    return None if os.environ.get("FW_CPU_FUSED_DECODE", "1") == "0" else _build()


@functools.cache
def _build() -> ctypes.CDLL | None:
    library = build(SOURCE)
    if library is None:
        return None
    library.decoder_scratch_bytes.argtypes, library.decoder_scratch_bytes.restype = [ctypes.POINTER(Decoder), _i64], _i64
    library.decoder_forward.restype = _int
    library.decoder_forward.argtypes = [ctypes.POINTER(Decoder), _i64, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _i64,
                                        _ptr, _ptr, _ptr, _ptr, _int]
    return library


def address(function: ctypes._CFuncPtr) -> int:
    """The address of a loaded C function, for a Decoder's pointers."""
    return ctypes.cast(function, ctypes.c_void_p).value
