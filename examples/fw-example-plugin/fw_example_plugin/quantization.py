"""A toy quantization method: ``example-int8``, online int8 round-to-nearest per output channel.

Select it by name on an unquantized checkpoint (``--quantization example-int8``): each linear
layer loads its weight as usual, then rounds it to int8 with one scale per output row, and
computes ``(x @ q.T) * scale``. The LM head stays unquantized. It shows the whole interface a
third-party method implements: a QuantizationMethod that hands out a LinearMethod per layer,
registered through its own ``fw.plugins`` entry point (``example-int8``, see pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fw.core.hookspecs import hookimpl
from fw.core.interfaces import LinearMethod, QuantizationMethod


class ExampleInt8LinearMethod(LinearMethod):
    """``weight`` as the checkpoint stores it, then int8 codes and per-row scales."""

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader) -> None:
        weight = nn.Parameter(torch.empty(sum(output_sizes), input_size, dtype=params_dtype), requires_grad=False)
        weight.weight_loader, weight.output_dim, weight.input_dim = weight_loader, 0, 1
        layer.register_parameter("weight", weight)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight = layer.weight.data.float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127  # [N]
        layer.register_buffer("qweight", torch.round(weight / scale[:, None]).to(torch.int8))  # [N, K]
        layer.register_buffer("scale", scale.to(layer.weight.dtype))
        del layer.weight  # the int8 codes replace it

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":  # torch's int8 op is fast in bfloat16
            out = torch.ops.aten._weight_int8pack_mm(x.contiguous(), layer.qweight, layer.scale)
        else:
            out = F.linear(x, layer.qweight.to(x.dtype)) * layer.scale
        return out if bias is None else out + bias


class ExampleInt8Method(QuantizationMethod):
    name = "example-int8"

    @classmethod
    def from_config(cls, quant_config: dict[str, Any]) -> ExampleInt8Method:
        if quant_config:
            raise ValueError("example-int8 quantizes unquantized checkpoints at load; this one is already quantized")
        return cls()

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        return None if prefix == "lm_head" else ExampleInt8LinearMethod()


@hookimpl
def fw_register_quantization_methods(registry) -> None:
    registry.register(ExampleInt8Method.name, ExampleInt8Method)
