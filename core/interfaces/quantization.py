"""The quantization-method interface (AWQ, GPTQ, FP8, ... ship as plugins)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch


class QuantizationMethod(ABC):
    """How quantized linear layers store their weights and compute.

    Registered through ``fw_register_quantization_methods``; ``name`` is what
    ``--quantization`` accepts and what ``quantization_config.quant_method`` in a
    checkpoint's config names. The model asks the method to create a linear layer's
    parameters, the weight loader fills them, and ``apply`` computes the layer.
    """

    #: The ``--quantization`` value.
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, quant_config: dict[str, Any]) -> QuantizationMethod:
        """Build the method from the checkpoint's ``quantization_config`` dict."""

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        """Activation dtypes ``apply`` accepts."""
        return [torch.float16, torch.bfloat16]

    @abstractmethod
    def create_weights(
        self, layer: torch.nn.Module, input_size: int, output_size: int, params_dtype: torch.dtype
    ) -> None:
        """Register the (quantized) parameters of a linear layer ``input_size -> output_size`` on ``layer``."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Repack loaded weights into the layout ``apply`` wants. Called once per layer."""

    @abstractmethod
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Compute ``x @ W.T + bias`` for ``x: [num_tokens, input_size]``."""
