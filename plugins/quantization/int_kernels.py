"""How a layer on canonical int weights (int_weights.py) computes, chosen once after loading.

- CPU, the kernels take the shape (``fw.kernels.cpu_quant.supports``): :class:`CpuIntKernel`.
  Up to ``GEMM_MAX_ROWS`` rows, the C kernel multiplies from the packed codes; more rows
  dequantize the weight (C, into a buffer shared by the layers) and multiply in torch
  (oneDNN/MKL). Measured on a 2-core Xeon (AVX-512, AMX), one thread, bfloat16, int4 with
  zero points (benchmarks/quant_matmul.py):

  ==============  ======  ======  ======  ======  =======
  [576 -> 1536]    M=1     M=8     M=16    M=32    M=512
  ==============  ======  ======  ======  ======  =======
  int_gemm        0.051   0.145   0.270   0.523     -
  dequant + mm    0.271   0.289   0.291   0.312   0.892
  ==============  ======  ======  ======  ======  =======

  (ms; at 4096 x 4096: int_gemm 0.74 / 2.50 ms at M = 1 / 8, dequantize + matmul 6.6 ms at
  M = 8 and 24 ms at M = 512). The crossing is near 16 rows on both shapes.
- CUDA, with Triton installed and a group size the kernel takes (``fw.kernels.triton_quant.
  supports_int``: multiples of 16): :class:`TritonIntKernel`, fw's Triton GEMM on the packed
  codes: it unpacks each tile in registers and scales the tile's partial sums, so the weight is
  never dequantized into memory (not yet timed against dequantize + matmul on a GPU).
- Anywhere else (CUDA without Triton or with odd group sizes, CPU shapes the C kernel refuses,
  no C compiler): :class:`TorchIntKernel`, the reference computation in torch: dequantize into
  the activations' dtype, then matmul, every call (memory stays at the packed size).

Act-order: all of them read ``x[:, perm]`` (one index_select) against the rows in kernel order.
W8A8 checkpoints compute weight-only here (activations are not quantized): their weights are
int8 like W8A16's, and the outputs are closer to the unquantized model's.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from fw.plugins.quantization.int_weights import IntWeights, unpack_codes

if TYPE_CHECKING:
    from fw.kernels import cpu_quant

logger = logging.getLogger("fw")

#: Rows up to which the C kernel multiplies from the codes; above, dequantize then matmul.
GEMM_MAX_ROWS = 16


class ScratchBuffers:
    """Reusable buffers for dequantized weights, one per dtype, grown to the largest layer.

    Layers run one after the other, so one buffer serves all of them; a fresh tensor of a
    large layer's size per call costs page faults (11 ms of 16 on a 4096 x 4096 layer).
    """

    def __init__(self) -> None:
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def get(self, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        numel = shape[0] * shape[1]
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)


def _permute_input(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    return x if perm is None else x.index_select(-1, perm)


class TorchIntKernel(nn.Module):
    """The canonical weights as buffers; dequantize, then matmul, in the activations' dtype."""

    def __init__(self, weights: IntWeights) -> None:
        super().__init__()
        self.bits, self.group_size = weights.bits, weights.group_size
        self.register_buffer("qweight", weights.qweight)
        self.register_buffer("scales", weights.scales)
        self.register_buffer("zeros", weights.zeros)
        self.register_buffer("perm", weights.perm)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """``W.T: [K, N]`` in kernel order."""
        codes = unpack_codes(self.qweight, self.bits).to(dtype)  # [K, N]
        zeros = 2 ** (self.bits - 1) if self.zeros is None else self.zeros.to(dtype).repeat_interleave(
            self.group_size, dim=0)
        return (codes - zeros) * self.scales.to(dtype).repeat_interleave(self.group_size, dim=0)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = _permute_input(x, self.perm) @ self.dequantized(x.dtype)
        return out if bias is None else out + bias


class CpuIntKernel(nn.Module):
    """fw's C kernels (fw.kernels.cpu_quant) on the codes repacked into column tiles."""

    def __init__(self, weights: IntWeights, scratch: ScratchBuffers, variant: str = "native") -> None:
        super().__init__()
        from fw.kernels import cpu_quant  # kernels load with the first layer, not with the plugin

        self.cpu_quant = cpu_quant
        tiled = cpu_quant.tile(weights.qweight, weights.scales, weights.zeros, weights.bits, weights.group_size,
                               variant)
        self.bits, self.group_size, self.variant, self.scratch = tiled.bits, tiled.group_size, variant, scratch
        self.register_buffer("tiles", tiled.tiles)
        self.register_buffer("scales", tiled.scales)
        self.register_buffer("zeros", tiled.zeros)
        self.register_buffer("perm", weights.perm)

    def tiled(self) -> cpu_quant.TiledIntWeights:
        return self.cpu_quant.TiledIntWeights(self.tiles, self.scales, self.zeros, self.bits, self.group_size,
                                              self.variant)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = _permute_input(x, self.perm)
        weights = self.tiled()
        if x.shape[0] <= GEMM_MAX_ROWS:
            out = self.cpu_quant.int_gemm(x, weights).to(x.dtype)
        else:
            dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
            buffer = self.scratch.get((weights.num_inputs, weights.num_outputs), dtype)
            out = torch.matmul(x.to(dtype), self.cpu_quant.int_dequant(weights, dtype, out=buffer)).to(x.dtype)
        return out if bias is None else out.add_(bias)


class TritonIntKernel(nn.Module):
    """fw's Triton W4A16 / W8A16 GEMM (fw.kernels.triton_quant) on the canonical weights as they are."""

    def __init__(self, weights: IntWeights) -> None:
        super().__init__()
        from fw.kernels import triton_quant  # Triton loads with the first CUDA layer, not with the plugin

        self.triton_quant = triton_quant
        self.bits, self.group_size = weights.bits, weights.group_size
        self.register_buffer("qweight", weights.qweight)
        self.register_buffer("scales", weights.scales)
        self.register_buffer("zeros", weights.zeros)
        self.register_buffer("perm", weights.perm)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.triton_quant.int_matmul(_permute_input(x, self.perm), self.qweight, self.scales, self.zeros,
                                            self.bits, self.group_size, bias)


def load_triton_quant() -> ModuleType | None:
    """fw.kernels.triton_quant, or None where Triton is not installed. Called for CUDA devices
    only: fw imports, and computes on a CPU, without Triton."""
    try:
        return importlib.import_module("fw.kernels.triton_quant")
    except ImportError:
        return None


def int_kernel_for(weights: IntWeights, device: torch.device, scratch: ScratchBuffers) -> nn.Module:
    """The kernel for weights on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        triton_quant = load_triton_quant()
        if triton_quant is not None and triton_quant.supports_int(weights.bits, weights.group_size):
            return TritonIntKernel(weights)
    elif device.type == "cpu":
        from fw.kernels import cpu_quant

        if cpu_quant.supports(weights.out_features, weights.bits, weights.group_size):
            return CpuIntKernel(weights, scratch)
    return TorchIntKernel(weights)


def cpu_act_dtype(dtype: torch.dtype, platform_name: str) -> torch.dtype:
    """The dtype a model on fw's int or fp8 CPU paths computes in: float16 becomes bfloat16 where
    the CPU computes it natively, else float32 (the CPU platform's own rule for half-precision
    checkpoints). torch's float16 matmuls on a CPU have no fast path outside AVX-512-FP16, and
    fw's CPU ops (norms, rotary, attention) take float32 and bfloat16 only."""
    if platform_name != "cpu" or dtype != torch.float16:
        return dtype
    from fw.plugins.platforms.cpu import cpu_has_fast_bf16

    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
