"""fw's chunked dequantization is bit-identical to gguf.quants.dequantize, for every type fw loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize

from fw.plugins.loaders import gguf_dequant
from fw.plugins.loaders.gguf_dequant import PLAIN_DTYPES, dequantize
from fw.plugins.loaders.gguf_loader import SUPPORTED_TYPES

BLOCK_TYPES = sorted(SUPPORTED_TYPES - set(PLAIN_DTYPES), key=lambda t: t.name)


def random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for a [rows, cols] tensor of ``qtype``, flat: every bit pattern is a valid block."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, size=rows * cols // block_size * type_size, dtype=np.uint8)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_block_types_equal_gguf_bit_for_bit_across_chunks(qtype, monkeypatch):
    rows, cols = 7, 512  # 14 K-quant blocks, 112 of the 32-value types
    data = random_blocks(qtype, rows, cols, np.random.default_rng(int(qtype)))
    # Chunks of 3 blocks of 32 values (of 1 block for the 256-value K-quants): many, and a short last one.
    monkeypatch.setattr(gguf_dequant, "CHUNK_ELEMENTS", 3 * 32)

    with np.errstate(invalid="ignore", over="ignore"):  # random scales include NaN and infinities
        ours = dequantize(data.copy(), qtype, (rows, cols))
        expected = gguf_dequantize(data.reshape(rows, -1), qtype)

    assert ours.dtype == torch.float32 and ours.shape == (rows, cols)
    # Compared as bits, so that NaNs and the signs of zeros must match too.
    assert np.array_equal(ours.numpy().view(np.int32), expected.view(np.int32))


@pytest.mark.parametrize("qtype", sorted(PLAIN_DTYPES, key=lambda t: t.name), ids=lambda t: t.name)
def test_plain_types_keep_their_dtype_and_are_copied_from_the_file(qtype):
    values = torch.randn(3, 8).to(PLAIN_DTYPES[qtype])
    stored = values.view(torch.uint8).reshape(-1).numpy().copy()

    ours = dequantize(stored, qtype, (3, 8))
    stored[:] = 0  # the file's bytes: the result must not be a view of them

    assert ours.dtype == PLAIN_DTYPES[qtype] and torch.equal(ours, values)

