"""Reading a GGUF file's header: its metadata and tensor table, with the tensor bytes memory-mapped.

``gguf.GGUFReader`` builds a numpy view for every value in the metadata, so a file with
a 49k-token vocabulary takes seconds to open (each token and each merge is a view, its
length another). fw needs the vocabulary only to build the tokenizer, which transformers
reads itself; here string arrays are skipped and given as their length, the convention
of transformers' own fast reader (``transformers.integrations.gguf.read_gguf_metadata``),
so the whole header parses in milliseconds. The layout follows the GGUF specification
(versions 2 and 3, little-endian), with the constants from the ``gguf`` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

V = GGUFValueType
SUPPORTED_VERSIONS = (2, 3)  # version 1 counted with 32-bit integers; no file in use still has it
# struct formats of the fixed-size value types (little-endian).
SCALAR_FORMATS = {
    V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
    V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d",
}  # fmt: skip


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]  # torch order (slowest dimension first); GGUF stores it reversed
    tensor_type: GGMLQuantizationType
    offset: int  # from the start of the file
    num_bytes: int


class GGUFQuantizedTensor(torch.Tensor):
    """A quantized GGUF tensor kept packed: ``uint8 [rows, row_bytes]``, each row whole blocks
    of ``ggml_type`` holding the ``logical_shape[-1]`` values of one row.

    What the gguf loader yields for a block-quantized tensor when the checkpoint runs with
    the ``gguf`` quantization method (``quantization_config.quant_method``), so that the
    usual ``(name, tensor)`` pairs carry it to the method's weight loaders unchanged. Make
    one with :meth:`wrap`; ``as_subclass(torch.Tensor)`` gives the plain bytes back.
    """

    ggml_type: GGMLQuantizationType
    logical_shape: tuple[int, ...]

    @staticmethod
    def wrap(rows: torch.Tensor, ggml_type: GGMLQuantizationType, logical_shape: tuple[int, ...]) -> GGUFQuantizedTensor:
        tensor = rows.as_subclass(GGUFQuantizedTensor)
        tensor.ggml_type, tensor.logical_shape = ggml_type, tuple(logical_shape)
        return tensor


class GGUFFile:
    """A parsed GGUF header; ``tensor_bytes`` gives a tensor's stored bytes without copying them.

    ``metadata`` maps each key to a Python value: numbers, strings, lists of numbers,
    and for an array of strings (the vocabulary, the merges) its length.
    """

    def __init__(self, path: Path, buffer: mmap.mmap, metadata: dict[str, Any], tensors: list[GGUFTensorInfo]):
        self.path = path
        self.metadata = metadata
        self.tensors = tensors
        # Copy-on-write, so that arrays viewing it are writable (torch.from_numpy warns about
        # read-only ones); fw never writes to it, so no page is copied and the file never changes.
        self._buffer = buffer

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def tensor_bytes(self, tensor: GGUFTensorInfo) -> np.ndarray:
        """The tensor's stored bytes as a flat uint8 array viewing the file (no copy)."""
        return np.frombuffer(self._buffer, dtype=np.uint8, count=tensor.num_bytes, offset=tensor.offset)


def read_gguf_file(path: Path) -> GGUFFile:
    """Parse ``path``'s header. Raises ValueError saying what is wrong with a corrupt or truncated file."""
    with open(path, "rb") as f:
        try:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except ValueError:  # mmap refuses an empty file
            raise ValueError("the file is empty") from None
    try:
        metadata, tensors = _HeaderParser(buffer).parse()
    except struct.error:  # a read past the end of the mapping
        raise ValueError("the header ends early") from None
    except UnicodeDecodeError:
        raise ValueError("the header holds a string that is not UTF-8") from None
    return GGUFFile(path, buffer, metadata, tensors)


class _HeaderParser:
    def __init__(self, buffer: mmap.mmap):
        self.buffer = buffer
        self.pos = 0

    def parse(self) -> tuple[dict[str, Any], list[GGUFTensorInfo]]:
        if self.buffer[:4] != b"GGUF":
            raise ValueError("it does not start with the GGUF magic bytes")
        self.pos = 4
        version, num_tensors, num_keys = self._unpack("<IQQ")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0:  # the version reads as 0 in the low half: written big-endian
                raise ValueError("it is a big-endian GGUF file, which fw does not read")
            raise ValueError(f"it is GGUF version {version}; fw reads versions 2 and 3")
        metadata: dict[str, Any] = {}
        for _ in range(num_keys):
            key = self._string()
            if key in metadata:
                raise ValueError(f"the metadata key {key} appears twice")
            (value_type,) = self._unpack("<I")
            metadata[key] = self._value(value_type)
        table = [self._tensor_entry() for _ in range(num_tensors)]
        alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment is {alignment!r}, not a power of two")
        data_start = -(-self.pos // alignment) * alignment  # the tensor data begins aligned
        return metadata, self._tensors(table, data_start)

    def _tensors(self, table: list[tuple[str, tuple[int, ...], int, int]], data_start: int) -> list[GGUFTensorInfo]:
        tensors, seen = [], set()
        for name, shape, raw_type, offset in table:
            if name in seen:
                raise ValueError(f"the tensor {name} appears twice")
            seen.add(name)
            try:
                tensor_type = GGMLQuantizationType(raw_type)
            except ValueError:
                raise ValueError(f"the tensor {name} has the unknown ggml type {raw_type}") from None
            block_size, type_size = GGML_QUANT_SIZES[tensor_type]
            num_elements = prod(shape)
            if shape and shape[-1] % block_size:
                raise ValueError(f"the tensor {name} has rows of {shape[-1]}, not whole {tensor_type.name} blocks")
            info = GGUFTensorInfo(name, shape, tensor_type, data_start + offset, num_elements // block_size * type_size)
            if info.offset + info.num_bytes > len(self.buffer):
                raise ValueError(f"the tensor {name} extends past the end of the file")
            tensors.append(info)
        return tensors

    def _tensor_entry(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        (num_dims,) = self._unpack("<I")
        dims = self._unpack(f"<{num_dims}Q")
        raw_type, offset = self._unpack("<IQ")
        return name, tuple(reversed(dims)), raw_type, offset

    def _value(self, value_type: int) -> Any:
        if value_type in SCALAR_FORMATS:
            return self._unpack("<" + SCALAR_FORMATS[value_type])[0]
        if value_type == V.STRING:
            return self._string()
        if value_type != V.ARRAY:
            raise ValueError(f"the metadata holds a value of unknown type {value_type}")
        element_type, count = self._unpack("<IQ")
        if element_type in SCALAR_FORMATS:
            return list(self._unpack(f"<{count}{SCALAR_FORMATS[element_type]}"))
        if element_type == V.STRING:
            for _ in range(count):  # strings vary in length: walk them without decoding
                (length,) = self._unpack("<Q")
                self.pos += length
            return count
        return [self._value(element_type) for _ in range(count)]

    def _string(self) -> str:
        (length,) = self._unpack("<Q")
        end = self.pos + length
        if end > len(self.buffer):
            raise struct.error("string past the end")
        text = self.buffer[self.pos : end].decode("utf-8")
        self.pos = end
        return text

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return values
