"""The ``awq`` quantization method: AutoAWQ's GEMM checkpoints (vLLM's ``awq``; ``awq_marlin``
names the same checkpoints with another GPU kernel).

A layer ``in -> out`` stores (group size ``g`` from ``group_size``/``q_group_size``):

- ``qweight`` int32 ``[in, out / 8]``: eight 4-bit codes of consecutive outputs per int32, in
  AWQ's interleaved order: the code of output ``8c + j`` sits in bits ``[4 s, 4 s + 4)`` of
  column ``c`` with ``s = (0, 4, 1, 5, 2, 6, 3, 7)[j]`` (AutoAWQ packs outputs
  ``0, 2, 4, 6, 1, 3, 5, 7`` into slots 0..7);
- ``qzeros`` int32 ``[in / g, out / 8]``, the zero points packed the same way;
- ``scales`` ``[in / g, out]`` (float16).

``W[o, i] = (code[i, o] - zero[i // g, o]) * scale[i // g, o]``. Refused in one line: bits
other than 4, ``zero_point: false``, GEMV/other ``version`` packings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fw.core.errors import ModelLoadError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces.linear import LinearMethod, WeightLoaderFn
from fw.core.interfaces.platform import Platform
from fw.core.interfaces.quantization import QuantizationMethod
from fw.plugins.quantization.int_kernels import ScratchBuffers, cpu_act_dtype
from fw.plugins.quantization.int_method import (
    IntLinearMethod,
    add_param,
    compact_scales,
    left_unquantized,
    resolve_group_size,
)
from fw.plugins.quantization.int_weights import IntWeights, from_codes, unpack_int32

#: Where output ``8c + j`` of a packed column sits: slot ``AWQ_SLOTS[j]`` (4 bits each).
AWQ_SLOTS = (0, 4, 1, 5, 2, 6, 3, 7)
PACK = 8


def config_value(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` the config has (AutoAWQ and transformers spell fields differently)."""
    return next((config[key] for key in keys if key in config), default)


class AWQLinearMethod(IntLinearMethod):
    def __init__(self, method: AWQMethod, prefix: str) -> None:
        super().__init__(prefix, method.scratch)
        self.group_size = method.group_size

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader: WeightLoaderFn) -> None:
        group_size = resolve_group_size(self.group_size, input_size, self.prefix, "group_size")
        if any(size % PACK for size in output_sizes):
            raise ModelLoadError(f"{self.prefix}: AWQ packs 8 outputs per int32, but its parts have {output_sizes}")
        num_outputs, num_groups = sum(output_sizes), input_size // group_size
        packed = dict(output_dim=1, input_dim=0, packed_dim=1, pack_factor=PACK)
        add_param(layer, "qweight", (input_size, num_outputs // PACK), torch.int32, weight_loader, **packed)
        add_param(layer, "qzeros", (num_groups, num_outputs // PACK), torch.int32, weight_loader, **packed)
        add_param(layer, "scales", (num_groups, num_outputs), torch.float32, weight_loader, output_dim=1, input_dim=0)
        layer.awq_group_size = group_size

    def canonical(self, layer: nn.Module) -> IntWeights:
        codes = unpack_int32(layer.qweight.data, 4, dim=1, order=AWQ_SLOTS)  # [in, out]
        zeros = unpack_int32(layer.qzeros.data, 4, dim=1, order=AWQ_SLOTS)  # [in / g, out]
        return from_codes(codes, compact_scales(layer.scales.data), zeros, 4, layer.awq_group_size)


class AWQMethod(QuantizationMethod):
    """AutoAWQ GEMM checkpoints: 4-bit codes with group scales and zero points."""

    name = "awq"
    aliases = ("awq_marlin",)

    def __init__(self, group_size: int, modules_to_not_convert: list[str]) -> None:
        self.group_size = group_size
        self.modules_to_not_convert = modules_to_not_convert
        self.scratch = ScratchBuffers()

    @classmethod
    def from_config(cls, quant_config: dict[str, Any]) -> AWQMethod:
        if not quant_config:
            raise ValueError("awq reads AWQ-quantized checkpoints; this one has no quantization_config")
        bits = config_value(quant_config, "bits", "w_bit", default=4)
        if bits != 4:
            raise ValueError(f"quantization_config.bits is {bits}; AWQ checkpoints fw reads are 4-bit")
        if config_value(quant_config, "zero_point", default=True) is not True:
            raise ValueError("quantization_config.zero_point is false; fw reads AWQ checkpoints with zero points")
        version = str(config_value(quant_config, "version", default="gemm")).lower()
        if version != "gemm":
            raise ValueError(f"quantization_config.version is {version!r}; fw reads AWQ's GEMM packing only")
        group_size = config_value(quant_config, "group_size", "q_group_size", default=128)
        if not isinstance(group_size, int) or (group_size <= 0 and group_size != -1):
            raise ValueError(f"quantization_config.group_size {group_size!r} is not a positive integer or -1")
        return cls(group_size, list(quant_config.get("modules_to_not_convert") or []))

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def act_dtype(cls, dtype: torch.dtype, platform: Platform) -> torch.dtype:
        return cpu_act_dtype(dtype, platform.name)

    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        if prefix == "lm_head" or left_unquantized(prefix, self.modules_to_not_convert):
            return None
        return AWQLinearMethod(self, prefix)


@hookimpl
def fw_register_quantization_methods(registry) -> None:
    for name in (AWQMethod.name, *AWQMethod.aliases):
        registry.register(name, AWQMethod)
