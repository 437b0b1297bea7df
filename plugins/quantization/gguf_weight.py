"""One layer's GGUF weight: the parts as the loader hands them over, then the segments the
kernels compute with.

A fused layer (q/k/v, gate/up) gets its parts one by one, and they need not share a type
(llama.cpp's Q4_K_M files store some ``attn_v``/``ffn_down`` rows as Q6_K). Once every part
is in, consecutive parts of one kind become one *segment*: a block of output rows computed
by one kernel call (same GGML type: the GGUF rows are concatenated and repacked once), or
by ``F.linear`` (parts stored as F32/F16/BF16, or of a type the kernels do not take, which
are dequantized). Each segment writes its columns of the layer's output in place, so mixed
types cost one call per segment and no concatenation. The segments' bytes live in one flat
uint8 tensor, the parameter's data, so that the parameter's size is the weight's resident
memory.

Without fw's C kernels (no compiler, or a device other than the CPU) every part is
dequantized into a dense segment: the plain-torch reference path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fw.core.layers.weights import WeightShapeError
from fw.kernels import gguf_ops
from fw.plugins.loaders.gguf_dequant import dequantize
from fw.plugins.loaders.gguf_file import GGUFQuantizedTensor

#: Segment offsets inside the flat buffer are rounded up to this, so that dense views are aligned.
ALIGNMENT = 64
#: From this many rows on, bfloat16 activations on a CPU with fast bf16 matmuls (AMX,
#: AVX512-BF16) are multiplied by the weight dequantized for the call (transposed, C) with
#: torch's matmul instead of the int8 kernels. Measured on the 2-core Xeon (AMX), Q4_1 and
#: Q8_0, benchmarks/gguf_matmul.py: [576, 576] at 64 rows 76 us (kernel) against 118 us, at 128
#: rows 148 against 122, at 512 rows 568 against 227; [3072, 576] at 128 rows 678 against 632,
#: at 512 rows 2680 against 1032. In float32 the kernels win at every size (at 512 rows 554
#: against 1015 us), and without fast bf16 torch has nothing faster: the kernels always run.
DENSE_MATMUL_ROWS = 128
#: The weight is dequantized this many values at a time (whole groups of 16 rows: a slice of
#: the packed bytes is itself a packed weight), so the scratch stays small (2 MiB of bf16, about
#: one core's L2) even for an LM head.
DENSE_CHUNK_VALUES = 1 << 20
_scratch = threading.local()


def _dense_scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A per-thread buffer for a dequantized weight, kept between calls (no page faults per call)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
        buffer = _scratch.buffer = torch.empty(numel, dtype=dtype)
    return buffer


@dataclass(frozen=True)
class Segment:
    """Output rows ``[start, start + rows)`` of the layer, from one packed weight or one dense one."""

    start: int
    rows: int
    ggml_type: int | None  # None: ``data`` is a dense [rows, K] weight for F.linear
    data: torch.Tensor  # the kernels' repacked bytes (flat uint8), or the dense weight
    kernel: gguf_ops.PackedMatrix | None = None  # ``data`` checked once for the token path
    dense_matmul_rows: int | None = None  # from this many rows on: dequantize, then torch's matmul

    def compute(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [T, K]`` -> ``[T, rows]``, written into ``out`` when given."""
        if self.kernel is None:
            y = F.linear(x, self.data)
        elif self.dense_matmul_rows is not None and x.shape[0] >= self.dense_matmul_rows:
            return self._dense_matmul(x, out)
        elif x.dtype in gguf_ops.DTYPES:
            return self.kernel(x, out)
        else:  # float16: the kernels read float32 or bfloat16
            y = self.kernel(x.float()).to(x.dtype)
        if out is None:
            return y
        out.copy_(y)
        return out

    def _dense_matmul(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """Chunks of rows dequantized (transposed) into a scratch buffer, each times ``x`` with torch."""
        k = x.shape[1]
        if out is None:
            out = torch.empty(x.shape[0], self.rows, dtype=x.dtype)
        chunk_rows = max(DENSE_CHUNK_VALUES // k // 16, 1) * 16
        bytes_per_row = self.data.numel() // (-(-self.rows // 16) * 16)  # per row of the padded groups
        scratch = _dense_scratch(k * min(chunk_rows, -(-self.rows // 16) * 16), x.dtype)
        for first in range(0, self.rows, chunk_rows):
            rows = min(chunk_rows, self.rows - first)
            packed = self.data[first * bytes_per_row: (first + -(-rows // 16) * 16) * bytes_per_row]
            transposed = gguf_ops.dequantize_transposed(packed, self.ggml_type, rows, k, x.dtype, out=scratch)
            out[:, first: first + rows] = x @ transposed[:, :rows]
        return out


class GGUFWeight:
    """The state of one GGUF weight parameter (``param.gguf``): parts, then segments.

    The parameter is shared when an LM head is tied to the token embedding; so is this,
    and the embedding's lookup and the head's matmul read the same segments.
    """

    def __init__(self, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                 device: torch.device) -> None:
        self.input_size = input_size
        self.output_sizes = list(output_sizes)
        self.params_dtype = params_dtype
        self.device = device
        self.parts: list[torch.Tensor | None] = [None] * len(output_sizes)
        self.segments: list[Segment] | None = None

    @property
    def num_rows(self) -> int:
        return sum(self.output_sizes)

    def load_part(self, param: nn.Parameter, index: int, tensor: torch.Tensor) -> None:
        """Keep part ``index`` (raises WeightShapeError when its shape is not the part's); once all
        parts are in, build the segments."""
        expected = (self.output_sizes[index], self.input_size)
        shape = tensor.logical_shape if isinstance(tensor, GGUFQuantizedTensor) else tuple(tensor.shape)
        if tuple(shape) != expected:
            raise WeightShapeError(expected)
        self.parts[index] = tensor
        if all(part is not None for part in self.parts):
            self.finalize(param)

    def finalize(self, param: nn.Parameter) -> None:
        """Repack the parts into segments held by ``param.data`` (once; raises if parts are missing)."""
        if self.segments is not None:
            return
        if any(part is None for part in self.parts):
            missing = [i for i, part in enumerate(self.parts) if part is None]
            raise ValueError(f"GGUF weight parts {missing} were never loaded")
        use_kernels = self.device.type == "cpu" and gguf_ops.available()
        groups: list[tuple[int | None, list[torch.Tensor]]] = []  # (ggml type or None, parts)
        for part in self.parts:
            kind = _packed_type(part, self.input_size) if use_kernels else None
            if groups and groups[-1][0] == kind:
                groups[-1][1].append(part)
            else:
                groups.append((kind, [part]))
        blobs = []
        start = 0
        for kind, parts in groups:
            rows = sum(_num_rows(part) for part in parts)
            if kind is None:
                dense = torch.cat([self._dense(part) for part in parts]).to(self.params_dtype).contiguous()
                blobs.append((start, rows, None, dense.reshape(-1).view(torch.uint8), dense.shape))
            else:
                stored = torch.cat([part.as_subclass(torch.Tensor) for part in parts])
                blobs.append((start, rows, kind, gguf_ops.repack(stored, kind, self.input_size), None))
            start += rows
        offsets, total = [], 0
        for blob in blobs:
            offsets.append(total)
            total += -(-blob[3].numel() // ALIGNMENT) * ALIGNMENT
        flat = torch.empty(total, dtype=torch.uint8)
        segments = []
        for offset, (start, rows, kind, data, dense_shape) in zip(offsets, blobs):
            view = flat[offset: offset + data.numel()]
            view.copy_(data)
            if dense_shape is not None:
                segments.append(Segment(start, rows, None, view.view(self.params_dtype).view(dense_shape)))
            else:
                kernel = gguf_ops.PackedMatrix(view, kind, rows, self.input_size)
                dense_rows = DENSE_MATMUL_ROWS if self._dense_matmul_pays() else None
                segments.append(Segment(start, rows, kind, view, kernel, dense_rows))
        self.parts = [None] * len(self.parts)  # the file's bytes are no longer needed
        param.data = flat.to(self.device)
        if self.device.type != "cpu":  # dense only: views of the moved buffer
            segments = [_moved(segment, flat, param.data) for segment in segments]
        self.segments = segments

    def _dense_matmul_pays(self) -> bool:
        """Whether large batches go through dequantize-then-matmul (see DENSE_MATMUL_ROWS)."""
        from fw.plugins.platforms.cpu import cpu_has_fast_bf16

        return self.params_dtype == torch.bfloat16 and cpu_has_fast_bf16()

    def _dense(self, part: torch.Tensor) -> torch.Tensor:
        """A part's values: dequantized when stored packed."""
        if not isinstance(part, GGUFQuantizedTensor):
            return part
        data = part.as_subclass(torch.Tensor).numpy()
        return dequantize(np.ascontiguousarray(data).reshape(-1), part.ggml_type, part.logical_shape)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [T, input_size]`` -> ``[T, num_rows]``, one kernel call (or F.linear) per segment."""
        segments = self.segments
        if len(segments) == 1:
            return segments[0].compute(x)
        out = torch.empty(x.shape[0], self.num_rows, dtype=x.dtype, device=x.device)
        for segment in segments:
            segment.compute(x, out[:, segment.start: segment.start + segment.rows])
        return out

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the weight (a token embedding's lookup), in the model's dtype."""
        (segment,) = self.segments  # an embedding is one part
        if segment.ggml_type is None:
            return F.embedding(ids, segment.data)
        dtype = self.params_dtype if self.params_dtype in gguf_ops.DTYPES else torch.float32
        rows = gguf_ops.dequantize_rows(segment.data, segment.ggml_type, segment.rows, self.input_size, ids, dtype)
        return rows.to(self.params_dtype)


def _packed_type(part: torch.Tensor, input_size: int) -> int | None:
    """The part's GGML type when the kernels take it packed, else None (computed dense)."""
    if isinstance(part, GGUFQuantizedTensor) and gguf_ops.supports(int(part.ggml_type), input_size):
        return int(part.ggml_type)
    return None


def _num_rows(part: torch.Tensor) -> int:
    return part.logical_shape[0] if isinstance(part, GGUFQuantizedTensor) else part.shape[0]


def _moved(segment: Segment, before: torch.Tensor, after: torch.Tensor) -> Segment:
    offset = segment.data.data_ptr() - before.data_ptr()
    nbytes = segment.data.numel() * segment.data.element_size()
    view = after[offset: offset + nbytes].view(segment.data.dtype).view(segment.data.shape)
    return Segment(segment.start, segment.rows, None, view)  # dense: the kernels run on the CPU only
