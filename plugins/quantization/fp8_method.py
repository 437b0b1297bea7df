"""What the FP8 methods (fp8, compressed-tensors' float-quantized) share: the checkpoint's
parameters, their canonical form (fp8_weights.py) and how a layer computes.

How FP8 computes on a CPU, measured (2-core Xeon, AVX-512 + AMX, one thread, [576 -> 1536]):
torch converts float8_e4m3fn to bfloat16 element by element (3.3 ms for this layer, at every
call if the weight stayed in FP8), and ``torch._scaled_mm`` on a CPU took 58 ms at M = 1 and
634 ms at M = 8. So the weight is converted **once, at load**, to the model's dtype (its
values are exactly the FP8 ones times their scales) and computes like an unquantized layer:
oneDNN pre-packed bfloat16 where the CPU has it (0.052 ms at M = 1, 0.54 ms at M = 512),
``F.linear`` otherwise. The price is memory: as much as the unquantized model's. Activations
stay in the model's dtype (weight-only); a per-tile C kernel that reads FP8 bytes would
halve the memory and is the next step if it matters.

On CUDA with Triton installed, the weight stays FP8 and fw's Triton kernel
(``fw.kernels.triton_quant.fp8_matmul``, :class:`TritonFp8Kernel`) widens each tile in registers
and applies the tensor, channel or block scales to the partial sums. Elsewhere (CUDA without
Triton, scale blocks whose width is no multiple of 16 inputs, other devices) the weight stays
FP8 and is dequantized into the activations' dtype at each call (:class:`TorchFp8Kernel`). All
of them compute weight-only: the checkpoint's activation scheme is not applied.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from fw.core.errors import ModelLoadError
from fw.core.interfaces.linear import LinearMethod, WeightLoaderFn
from fw.plugins.quantization.fp8_weights import (
    FP8_DTYPE,
    Fp8Weights,
    dequantize,
    per_part_to_channel,
    quantize_per_channel,
)
from fw.plugins.quantization.int_kernels import load_triton_quant
from fw.plugins.quantization.int_method import add_param


class DenseFp8Kernel(nn.Module):
    """The FP8 values converted to ``dtype`` at load; oneDNN pre-packed in bfloat16 where possible."""

    def __init__(self, weights: Fp8Weights, dtype: torch.dtype) -> None:
        super().__init__()
        from fw.plugins.platforms.cpu import can_pack_bf16_weights

        weight = dequantize(weights, dtype)
        self.packed = dtype == torch.bfloat16 and can_pack_bf16_weights()
        if self.packed:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, 128)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, bias, "none", [], "")
        return F.linear(x, self.weight, bias)


class TorchFp8Kernel(nn.Module):
    """The FP8 weight and its scales as buffers; dequantized into the activations' dtype per call."""

    def __init__(self, weights: Fp8Weights) -> None:
        super().__init__()
        self.strategy, self.block_size = weights.strategy, weights.block_size
        self.register_buffer("weight", weights.weight)
        self.register_buffer("scale", weights.scale)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        weights = Fp8Weights(self.weight, self.scale, self.strategy, self.block_size)
        return F.linear(x, dequantize(weights, x.dtype), bias)


class TritonFp8Kernel(nn.Module):
    """fw's Triton FP8 matmul (fw.kernels.triton_quant) on the FP8 weight and its scales as they are."""

    def __init__(self, weights: Fp8Weights) -> None:
        super().__init__()
        from fw.kernels import triton_quant  # Triton loads with the first CUDA layer, not with the plugin

        self.triton_quant = triton_quant
        self.strategy, self.block_size = weights.strategy, weights.block_size
        self.register_buffer("weight", weights.weight)
        self.register_buffer("scale", weights.scale)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.triton_quant.fp8_matmul(x, self.weight, self.scale, self.strategy, self.block_size, bias)


def fp8_kernel_for(weights: Fp8Weights, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The kernel for weights on ``device`` (see the module docstring)."""
    if device.type == "cpu":
        return DenseFp8Kernel(weights, dtype)
    if device.type == "cuda":
        triton_quant = load_triton_quant()
        if triton_quant is not None and triton_quant.supports_fp8(weights.strategy, weights.block_size):
            return TritonFp8Kernel(weights)
    return TorchFp8Kernel(weights)


class Fp8LinearMethodBase(LinearMethod):
    """Converts the loaded parameters (``canonical``) and computes with the kernel for the device."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @abstractmethod
    def canonical(self, layer: nn.Module) -> Fp8Weights:
        """The layer's loaded tensors as :class:`Fp8Weights`; a ValueError naming what does not fit."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        try:
            weights = self.canonical(layer)
        except ValueError as exc:
            raise ModelLoadError(f"{self.prefix}: {exc}") from None
        device = layer.weight.device
        for name in [name for name, _ in layer.named_parameters(recurse=False) if name != "bias"]:
            delattr(layer, name)
        layer.fp8_kernel = fp8_kernel_for(weights, device, layer.fp8_dtype)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return layer.fp8_kernel(x, bias)


class Fp8LinearMethod(Fp8LinearMethodBase):
    """A serialized FP8 checkpoint's layer: ``weight`` float8_e4m3fn ``[N, K]`` and its scale
    (``scale_name``: HF's ``weight_scale_inv``, compressed-tensors' ``weight_scale``), and for
    static activations ``input_scale``."""

    def __init__(self, prefix: str, strategy: str, block_size: tuple[int, int] | None, input_scheme: str | None,
                 scale_name: str = "weight_scale") -> None:
        super().__init__(prefix)
        self.strategy, self.block_size, self.input_scheme, self.scale_name = (strategy, block_size, input_scheme,
                                                                              scale_name)

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader: WeightLoaderFn) -> None:
        num_outputs, num_parts = sum(output_sizes), len(output_sizes)
        add_param(layer, "weight", (num_outputs, input_size), FP8_DTYPE, weight_loader, output_dim=0, input_dim=1)
        if self.strategy == "tensor":  # one scale per checkpoint tensor: per fused part
            add_param(layer, self.scale_name, (num_parts,), torch.float32, weight_loader, per_part=True)
        elif self.strategy == "channel":
            add_param(layer, self.scale_name, (num_outputs, 1), torch.float32, weight_loader, output_dim=0)
        else:
            block_rows, block_cols = self.block_size
            if num_parts > 1 and any(size % block_rows for size in output_sizes):
                raise ModelLoadError(f"{self.prefix}: its fused parts {output_sizes} are not multiples of the "
                                     f"{block_rows}-row blocks of weight_block_size; fw fuses them into one layer")
            add_param(layer, self.scale_name, (-(-num_outputs // block_rows), -(-input_size // block_cols)),
                      torch.float32, weight_loader, output_dim=0, input_dim=1, packed_dim=0, pack_factor=block_rows)
        if self.input_scheme == "static":
            add_param(layer, "input_scale", (num_parts,), torch.float32, weight_loader, per_part=True)
        layer.fp8_dtype, layer.fp8_output_sizes = params_dtype, list(output_sizes)

    def canonical(self, layer: nn.Module) -> Fp8Weights:
        scale, strategy = getattr(layer, self.scale_name).data, self.strategy
        if strategy == "tensor" and len(layer.fp8_output_sizes) > 1:
            scale, strategy = per_part_to_channel(scale, layer.fp8_output_sizes), "channel"
        input_scale = layer.input_scale.data.max().reshape(1) if self.input_scheme == "static" else None
        return Fp8Weights(layer.weight.data, scale.reshape(1) if strategy == "tensor" else scale, strategy,
                          self.block_size, self.input_scheme, input_scale)


class OnlineFp8LinearMethod(Fp8LinearMethodBase):
    """An unquantized checkpoint's layer rounded to FP8 at load, one scale per output row."""

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader: WeightLoaderFn) -> None:
        add_param(layer, "weight", (sum(output_sizes), input_size), params_dtype, weight_loader,
                  output_dim=0, input_dim=1)
        layer.fp8_dtype = params_dtype

    def canonical(self, layer: nn.Module) -> Fp8Weights:
        return quantize_per_channel(layer.weight.data)
