"""The ``gptq`` quantization method: AutoGPTQ / GPTQModel checkpoints (vLLM's ``gptq``;
``gptq_marlin`` names the same checkpoints with another GPU kernel).

A layer ``in -> out`` with ``bits`` 4 or 8 (``P = 32 / bits`` codes per int32) and group size
``g`` (``-1``: one group) stores:

- ``qweight`` int32 ``[in / P, out]``: codes of consecutive inputs, the lowest in the lowest bits;
- ``qzeros`` int32 ``[in / g, out / P]``: zero points of consecutive outputs, packed the same
  way. ``checkpoint_format: gptq`` (v1, the default) stores each zero point minus one
  (AutoGPTQ's convention; read as ``(stored + 1) mod 2**bits``, as GPTQModel converts v1 to
  v2), ``gptq_v2`` stores it as is;
- ``scales`` ``[in / g, out]`` (float16);
- ``g_idx`` int32 ``[in]``: the group of each input. With ``desc_act`` (act-order) the inputs
  were quantized in another order and groups are scattered; fw sorts the inputs by group once
  at load (int_weights.py). Absent, or in order, it changes nothing.

``W[o, i] = (code[i, o] - zero[g_idx[i], o]) * scale[g_idx[i], o]``; ``sym: true`` checkpoints
store the zero point ``2**(bits - 1)``. Refused in one line: bits other than 4 and 8 (2 and 3
pack across words), per-module ``dynamic`` overrides, the ``marlin`` checkpoint format.
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
    resolve_group_size,
)
from fw.plugins.quantization.int_weights import SUPPORTED_BITS, IntWeights, from_codes, unpack_int32

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


class GPTQLinearMethod(IntLinearMethod):
    def __init__(self, method: GPTQMethod, prefix: str) -> None:
        super().__init__(prefix, method.scratch)
        self.method = method

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader: WeightLoaderFn) -> None:
        bits, per_word = self.method.bits, 32 // self.method.bits
        group_size = resolve_group_size(self.method.group_size, input_size, self.prefix, "group_size")
        if input_size % per_word or any(size % per_word for size in output_sizes):
            raise ModelLoadError(f"{self.prefix}: {bits}-bit GPTQ packs {per_word} values per int32, which does not "
                                 f"divide its {input_size} inputs and {output_sizes} outputs")
        num_outputs, num_groups = sum(output_sizes), input_size // group_size
        add_param(layer, "qweight", (input_size // per_word, num_outputs), torch.int32, weight_loader,
                  output_dim=1, input_dim=0, packed_dim=0, pack_factor=per_word)
        add_param(layer, "qzeros", (num_groups, num_outputs // per_word), torch.int32, weight_loader,
                  output_dim=1, input_dim=0, packed_dim=1, pack_factor=per_word)
        add_param(layer, "scales", (num_groups, num_outputs), torch.float32, weight_loader, output_dim=1, input_dim=0)
        # One g_idx per fused part: parts share their input, so act-order gives them one order
        # (checked after loading). Without act-order the checkpoint may leave it out.
        g_idx = add_param(layer, "g_idx", (len(output_sizes), input_size), torch.int32, weight_loader,
                          input_dim=0, per_part=True, optional=True)
        g_idx.data.copy_(torch.arange(input_size, dtype=torch.int32) // group_size)
        layer.gptq_group_size = group_size

    def canonical(self, layer: nn.Module) -> IntWeights:
        bits = self.method.bits
        codes = unpack_int32(layer.qweight.data, bits, dim=0)  # [in, out]
        zeros = unpack_int32(layer.qzeros.data, bits, dim=1)  # [in / g, out]
        if self.method.checkpoint_format == "gptq":
            zeros = (zeros + 1) & (2**bits - 1)
        if self.method.sym and bool((zeros == 2 ** (bits - 1)).all()):
            zeros = None
        g_idx = layer.g_idx.data
        if not bool((g_idx == g_idx[0]).all()):
            raise ValueError("the fused parts' g_idx differ (act-order gave q/k/v or gate/up different input orders)")
        return from_codes(codes, compact_scales(layer.scales.data), zeros, bits, layer.gptq_group_size, g_idx[0])


class GPTQMethod(QuantizationMethod):
    """GPTQ checkpoints: 4- or 8-bit codes, group scales, zero points, optional act-order."""

    name = "gptq"
    aliases = ("gptq_marlin",)

    def __init__(self, bits: int, group_size: int, sym: bool, checkpoint_format: str, lm_head: bool) -> None:
        self.bits, self.group_size, self.sym = bits, group_size, sym
        self.checkpoint_format, self.lm_head = checkpoint_format, lm_head
        self.scratch = ScratchBuffers()

    @classmethod
    def from_config(cls, quant_config: dict[str, Any]) -> GPTQMethod:
        if not quant_config:
            raise ValueError("gptq reads GPTQ-quantized checkpoints; this one has no quantization_config")
        bits = quant_config.get("bits", 4)
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"quantization_config.bits is {bits}; fw reads 4- and 8-bit GPTQ checkpoints")
        group_size = quant_config.get("group_size", 128)
        if not isinstance(group_size, int) or (group_size <= 0 and group_size != -1):
            raise ValueError(f"quantization_config.group_size {group_size!r} is not a positive integer or -1")
        checkpoint_format = quant_config.get("checkpoint_format") or "gptq"
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"quantization_config.checkpoint_format is {checkpoint_format!r}; fw reads "
                             f"{' and '.join(CHECKPOINT_FORMATS)}")
        if quant_config.get("dynamic"):
            raise ValueError("quantization_config.dynamic (per-module overrides) is not supported")
        return cls(bits, group_size, bool(quant_config.get("sym", True)), checkpoint_format,
                   bool(quant_config.get("lm_head", False)))

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def act_dtype(cls, dtype: torch.dtype, platform: Platform) -> torch.dtype:
        return cpu_act_dtype(dtype, platform.name)

    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        if prefix == "lm_head" and not self.lm_head:
            return None
        return GPTQLinearMethod(self, prefix)


@hookimpl
def fw_register_quantization_methods(registry) -> None:
    for name in (GPTQMethod.name, *GPTQMethod.aliases):
        registry.register(name, GPTQMethod)
