"""What the int methods (awq, gptq, compressed-tensors) share: parameter creation, the
conversion to the canonical layout after loading, the kernel choice, the error messages.

A format's linear method creates the parameters its checkpoint names (``qweight``,
``scales``...) with the attributes the layers' loaders read (fw.core.layers.weights), and
implements ``canonical(layer)``: its loaded tensors as :class:`IntWeights`. This base then
drops the checkpoint's parameters and keeps only the kernel (int_kernels.py).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from fw.core.errors import ModelLoadError
from fw.core.interfaces.linear import LinearMethod, WeightLoaderFn
from fw.core.layers.weights import set_weight_attrs
from fw.plugins.quantization.int_kernels import ScratchBuffers, int_kernel_for
from fw.plugins.quantization.int_weights import IntWeights


def add_param(layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype, weight_loader: WeightLoaderFn,
              **attrs: Any) -> nn.Parameter:
    """Register an empty checkpoint parameter ``name`` on ``layer`` (see fw.core.layers.weights
    for the attributes: ``output_dim``, ``input_dim``, ``packed_dim``, ``pack_factor``,
    ``per_part``, ``optional``)."""
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    attrs.setdefault("output_dim", None)
    attrs.setdefault("input_dim", None)
    set_weight_attrs(param, weight_loader=weight_loader, **attrs)
    layer.register_parameter(name, param)
    return param


def compact_scales(scales: torch.Tensor) -> torch.Tensor:
    """Scales loaded into float32 back in the narrowest float dtype that holds every value
    exactly (the checkpoint's float16 or bfloat16, usually): kernels read all three."""
    for dtype in (torch.float16, torch.bfloat16):
        narrow = scales.to(dtype)
        if torch.equal(narrow.to(scales.dtype), scales):
            return narrow
    return scales


def resolve_group_size(group_size: int, input_size: int, prefix: str, field: str) -> int:
    """The group size of a layer with ``input_size`` inputs (``-1``/``None``: one group, channel-wise);
    a ModelLoadError naming the config field when it does not divide the inputs."""
    if group_size in (-1, None) or group_size >= input_size:
        return input_size
    if group_size <= 0 or input_size % group_size:
        raise ModelLoadError(f"{prefix}: {field} {group_size} does not divide its {input_size} inputs")
    return group_size


def matches_module(prefix: str, patterns: list[str]) -> bool:
    """Whether ``prefix`` is named by ``patterns``: ``re:<regex>`` entries match with re.match
    (compressed-tensors' ``ignore``), others as a dotted component sequence of the name (AWQ's
    ``modules_to_not_convert``: ``"mlp"`` names ``model.layers.0.mlp.down_proj``)."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], prefix):
                return True
        elif f".{pattern}." in f".{prefix}.":
            return True
    return False


#: Fused modules and the checkpoint modules they hold, for names in ``ignore`` lists.
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def checkpoint_names(prefix: str) -> list[str]:
    """The checkpoint's module names for a layer prefix (a fused layer: each of its parts)."""
    parent, _, name = prefix.rpartition(".")
    parts = FUSED_PARTS.get(name)
    return [f"{parent}.{part}" for part in parts] if parts else [prefix]


def left_unquantized(prefix: str, patterns: list[str]) -> bool:
    """Whether the layer at ``prefix`` is one the checkpoint left unquantized (named by
    ``patterns``); a fused layer must have all its parts named or none."""
    names = checkpoint_names(prefix)
    hits = [matches_module(name, patterns) for name in names]
    if any(hits) and not all(hits):
        raise ModelLoadError(f"the checkpoint quantizes some of {', '.join(names)} but not all; fw computes them "
                             "as one fused layer")
    return all(hits)


class IntLinearMethod(LinearMethod):
    """A linear layer on integer weights: the format converts, this computes."""

    def __init__(self, prefix: str, scratch: ScratchBuffers) -> None:
        self.prefix, self.scratch = prefix, scratch

    @abstractmethod
    def canonical(self, layer: nn.Module) -> IntWeights:
        """The layer's loaded checkpoint tensors in the canonical layout (int_weights.py); a
        ValueError naming the tensor or config field when they do not fit."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        try:
            weights = self.canonical(layer)
        except ValueError as exc:
            raise ModelLoadError(f"{self.prefix}: {exc}") from None
        device = next(p.device for name, p in layer.named_parameters(recurse=False) if name != "bias")
        for name in [name for name, _ in layer.named_parameters(recurse=False) if name != "bias"]:
            delattr(layer, name)  # the kernel holds what it needs
        layer.int_kernel = int_kernel_for(weights, device, self.scratch)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return layer.int_kernel(x, bias)
