"""Dequantizing GGUF tensors with gguf's own block code, a whole tensor at a time.

``gguf.quants.dequantize`` hands its per-type ``dequantize_blocks`` sixteen rows at a
time (a Python loop with a split and a concatenation per group): about 45 tensors a
second on the default model, where the numpy arithmetic itself takes a tenth of that.
Here the same ``dequantize_blocks`` gets large chunks of blocks instead, so the values
are gguf's, bit for bit, for every type it knows. The chunks bound the temporaries
(about 13 bytes per value for the 4-bit types) on large tensors.

This stays single-threaded numpy on purpose: the same work as torch ops measured no
faster on one thread, and on a busy machine torch's OpenMP threads spin-wait on each
other between the many small ops (20x slower with 2 threads on a loaded 2-core box).
"""

from __future__ import annotations

import gguf.quants
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
# Stored as numbers, not blocks: reinterpreted, keeping their dtype.
PLAIN_DTYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
CHUNK_ELEMENTS = 1 << 22


def dequantize(data: np.ndarray, tensor_type: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor's stored bytes (flat uint8) -> a new tensor of its values, shaped ``shape`` (torch order).

    F32, F16 and BF16 keep their dtype; block-quantized types become float32.
    """
    if tensor_type in PLAIN_DTYPES:
        # A copy: ``data`` is usually a view of the memory-mapped file.
        return torch.from_numpy(data.copy()).view(PLAIN_DTYPES[tensor_type]).reshape(shape)
    block_size, type_size = GGML_QUANT_SIZES[tensor_type]
    blocks = data.reshape(-1, type_size)  # [num_blocks, type_size]
    quant = getattr(gguf.quants, tensor_type.name, None)  # gguf names each block class after its type
    if getattr(quant, "qtype", None) != tensor_type:  # a gguf without that class: its slow generic path
        return torch.from_numpy(gguf.quants.dequantize(blocks, tensor_type)).reshape(shape)
    quant.init_grid()  # the lookup tables of the IQ types; a no-op for the others
    values = np.empty((blocks.shape[0], block_size), dtype=np.float32)  # [num_blocks, block_size]
    step = max(CHUNK_ELEMENTS // block_size, 1)
    for start in range(0, blocks.shape[0], step):
        values[start : start + step] = quant.dequantize_blocks(blocks[start : start + step])
    return torch.from_numpy(values).reshape(shape)
