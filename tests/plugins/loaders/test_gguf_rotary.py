"""Undoing llama.cpp's Q/K row permutation on the stored bytes equals undoing it on the values.

The loader permutes the rows of a tensor's stored blocks before dequantizing (a cheap
numpy copy); the value-level permutation is the one checked against transformers in
test_gguf_loader.py, so the two must agree for every storage type and shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize

from fw.plugins.loaders.gguf_dequant import dequantize
from fw.plugins.loaders.gguf_file import read_gguf_file
from fw.plugins.loaders.gguf_loader import dequantize_tensor, undo_rotary_permutation

NUM_HEADS = 4


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_permuting_stored_rows_equals_permuting_values(tmp_path, qtype):
    rng = np.random.default_rng(0)
    path = tmp_path / "rows.gguf"
    writer = GGUFWriter(str(path), "llama")
    # A Q/K weight ([heads * head_dim, hidden]) and a bias-like 1-D tensor, both of this type.
    for name, shape in [("blk.0.attn_q.weight", (64, 256)), ("blk.0.attn_q.bias", (256,))]:
        values = rng.standard_normal(shape).astype(np.float32)
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, values.astype(np.float16 if qtype == Q.F16 else np.float32))
        elif qtype == Q.Q6_K:  # gguf cannot quantize K-quants: random bits with a sane fp16 scale
            blocks = rng.integers(0, 256, size=(values.size // 256, 210), dtype=np.uint8)
            blocks[:, 208:210] = np.full((len(blocks), 1), 0.01, np.float16).view(np.uint8)
            writer.add_tensor(name, blocks.reshape(*shape[:-1], -1), raw_dtype=qtype)
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gguf = read_gguf_file(path)

    for tensor in gguf.tensors:
        values = dequantize(gguf.tensor_bytes(tensor), tensor.tensor_type, tensor.shape)
        expected = undo_rotary_permutation(values, NUM_HEADS)

        ours = dequantize_tensor(gguf, tensor, NUM_HEADS)

        assert not torch.equal(expected, values), tensor.name  # the permutation moves something
        assert torch.equal(ours, expected), tensor.name
