"""The ``compressed-tensors`` quantization method: what llm-compressor writes (vLLM's most used
format). The config's ``config_groups`` give schemes (``weights``, ``input_activations``,
``targets``; a group's ``format`` overrides the top-level one), ``ignore`` the layers left
unquantized (names, or ``re:`` regexes, matched against the checkpoint's module names).

Formats and what a layer ``in -> out`` stores:

- ``pack-quantized`` (W4A16 / W8A16): ``weight_packed`` int32 ``[out, in / P]`` (P = 32 / bits
  codes of consecutive inputs, lowest first, stored as the signed value plus ``2**(bits-1)``),
  ``weight_scale`` ``[out, in / g]`` (group) or ``[out, 1]`` (channel), ``weight_zero_point``
  int32 ``[out / P, in / g]`` packed along the outputs (asymmetric only), ``weight_g_idx``
  ``[in]`` (``actorder``), ``weight_shape`` ``[2]``.
- ``int-quantized`` / ``naive-quantized`` int8 (W8A8, or W8A16 without ``input_activations``):
  ``weight`` int8 ``[out, in]``, ``weight_scale`` ``[out, 1]`` or per-tensor, ``input_scale``
  for static activations (dynamic: per token). Computed weight-only on the CPU (int_kernels.py).
- ``float-quantized`` / ``naive-quantized`` FP8: ``weight`` float8_e4m3fn, ``weight_scale``
  per tensor, channel ``[out, 1]`` or block ``[out / bn, in / bk]``, ``input_scale`` (static).

Int weights become the canonical int layout (int_weights.py), FP8 the FP8 one (fp8_weights.py).
Refused in one line, naming the config field: other bit widths or types, asymmetric
activations, int8 zero points, activation quantization on packed weights, other formats
(sparse, nvfp4, mxfp4, marlin-24).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fw.core.errors import ModelLoadError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces.linear import LinearMethod, WeightLoaderFn
from fw.core.interfaces.platform import Platform
from fw.core.interfaces.quantization import QuantizationMethod
from fw.plugins.quantization.fp8_method import Fp8LinearMethod
from fw.plugins.quantization.int_kernels import ScratchBuffers, cpu_act_dtype
from fw.plugins.quantization.int_method import (
    IntLinearMethod,
    add_param,
    checkpoint_names,
    compact_scales,
    left_unquantized,
    resolve_group_size,
)
from fw.plugins.quantization.int_weights import IntWeights, from_codes, unpack_int32

INT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")
FLOAT_FORMATS = ("float-quantized", "naive-quantized")


@dataclass(frozen=True)
class Scheme:
    """One config group's scheme, as fw computes it."""

    format: str
    type: str  # "int" or "float"
    bits: int
    strategy: str  # "group", "channel", "tensor" or "block"
    group_size: int | None
    block_size: tuple[int, int] | None
    symmetric: bool
    actorder: bool
    input_scheme: str | None  # None, "dynamic" or "static"
    targets: tuple[str, ...]


def _input_scheme(field: str, acts: dict[str, Any] | None, weight_type: str) -> str | None:
    if not acts:
        return None
    if acts.get("type", "int") != weight_type or acts.get("num_bits") != 8:
        raise ValueError(f"{field}: {acts.get('num_bits')}-bit {acts.get('type')} activations with {weight_type} "
                         "weights are not supported")
    if not acts.get("symmetric", True):
        raise ValueError(f"{field}.symmetric is false; fw reads symmetric activation quantization only")
    dynamic, strategy = acts.get("dynamic", False), acts.get("strategy")
    if dynamic is True and strategy in ("token", "group", "tensor"):
        return "dynamic"
    if dynamic is False and strategy == "tensor":
        return "static"
    raise ValueError(f"{field}: strategy {strategy!r} with dynamic {dynamic!r} is not supported")


def parse_scheme(name: str, group: dict[str, Any], top_format: str | None) -> Scheme:
    """A config group as a Scheme; ValueError naming the field fw cannot read."""
    field = f"config_groups.{name}"
    weights = group.get("weights") or {}
    fmt = group.get("format") or top_format
    kind, bits, strategy = weights.get("type", "int"), weights.get("num_bits"), weights.get("strategy")
    if weights.get("dynamic"):
        raise ValueError(f"{field}.weights.dynamic is true; fw reads weights quantized in the checkpoint")
    if kind == "int":
        if fmt not in INT_FORMATS:
            raise ValueError(f"format {fmt!r} is not supported for int weights; fw reads {', '.join(INT_FORMATS)}")
        allowed = (4, 8) if fmt == "pack-quantized" else (8,)
        strategies = ("group", "channel") if fmt == "pack-quantized" else ("channel", "tensor")
    elif kind == "float":
        if fmt not in FLOAT_FORMATS:
            raise ValueError(f"format {fmt!r} is not supported for float weights; fw reads {', '.join(FLOAT_FORMATS)}")
        allowed, strategies = (8,), ("tensor", "channel", "block")
    else:
        raise ValueError(f"{field}.weights.type {kind!r} is not supported")
    if bits not in allowed:
        raise ValueError(f"{field}.weights.num_bits is {bits}; fw reads {' and '.join(map(str, allowed))}-bit "
                         f"{kind} weights in {fmt}")
    if strategy not in strategies:
        raise ValueError(f"{field}.weights.strategy {strategy!r} is not supported for {fmt}; fw reads "
                         f"{', '.join(strategies)}")
    symmetric = bool(weights.get("symmetric", True))
    if not symmetric and fmt != "pack-quantized":
        raise ValueError(f"{field}.weights.symmetric is false; fw reads zero points in pack-quantized only")
    block = weights.get("block_structure")
    if strategy == "block" and not (isinstance(block, list) and len(block) == 2):
        raise ValueError(f"{field}.weights.block_structure is {block!r}; expected [rows, columns]")
    input_scheme = _input_scheme(f"{field}.input_activations", group.get("input_activations"), kind)
    if input_scheme is not None and fmt == "pack-quantized":
        raise ValueError(f"{field}: activation quantization with pack-quantized weights is not supported")
    return Scheme(fmt, kind, bits, strategy, weights.get("group_size"), tuple(block) if strategy == "block" else None,
                  symmetric, weights.get("actorder") in ("group", "weight"), input_scheme,
                  tuple(group.get("targets") or ()))


def targets_module(targets: tuple[str, ...], name: str) -> bool:
    """Whether a scheme's ``targets`` name the linear layer ``name`` (a class name, ``re:``, or its name)."""
    return any(t == "Linear" or t == name or (t.startswith("re:") and re.match(t[3:], name)) for t in targets)


class CompressedTensorsIntLinearMethod(IntLinearMethod):
    """pack-quantized codes, or int8 weights, into the canonical int layout."""

    def __init__(self, method: CompressedTensorsMethod, prefix: str, scheme: Scheme) -> None:
        super().__init__(prefix, method.scratch)
        self.scheme = scheme

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader: WeightLoaderFn) -> None:
        scheme, num_outputs, num_parts = self.scheme, sum(output_sizes), len(output_sizes)
        group_size = input_size if scheme.strategy != "group" else resolve_group_size(
            scheme.group_size, input_size, self.prefix, "weights.group_size")
        num_groups, grouped = input_size // group_size, scheme.strategy == "group"
        if scheme.format == "pack-quantized":
            per_word = 32 // scheme.bits
            if input_size % per_word or (not scheme.symmetric and any(s % per_word for s in output_sizes)):
                raise ModelLoadError(f"{self.prefix}: {scheme.bits}-bit codes pack {per_word} per int32, which does "
                                     f"not divide its {input_size} inputs and {output_sizes} outputs")
            add_param(layer, "weight_packed", (num_outputs, input_size // per_word), torch.int32, weight_loader,
                      output_dim=0, input_dim=1, packed_dim=1, pack_factor=per_word)
            if not scheme.symmetric:
                add_param(layer, "weight_zero_point", (num_outputs // per_word, num_groups), torch.int32,
                          weight_loader, output_dim=0, input_dim=1 if grouped else None, packed_dim=0,
                          pack_factor=per_word)
            if scheme.actorder:
                g_idx = add_param(layer, "weight_g_idx", (num_parts, input_size), torch.int32, weight_loader,
                                  input_dim=0, per_part=True, optional=True)
                g_idx.data.copy_(torch.arange(input_size, dtype=torch.int32) // group_size)
            add_param(layer, "weight_shape", (num_parts, 2), torch.int64, weight_loader, per_part=True)
        else:
            add_param(layer, "weight", (num_outputs, input_size), torch.int8, weight_loader, output_dim=0, input_dim=1)
            if scheme.input_scheme == "static":
                add_param(layer, "input_scale", (num_parts,), torch.float32, weight_loader, per_part=True)
        if scheme.strategy == "tensor":
            add_param(layer, "weight_scale", (num_parts,), torch.float32, weight_loader, per_part=True)
        else:
            add_param(layer, "weight_scale", (num_outputs, num_groups), torch.float32, weight_loader,
                      output_dim=0, input_dim=1 if grouped else None)
        layer.ct_group_size, layer.ct_output_sizes = group_size, list(output_sizes)

    def canonical(self, layer: nn.Module) -> IntWeights:
        scheme, sizes, offset = self.scheme, layer.ct_output_sizes, 2 ** (self.scheme.bits - 1)
        num_inputs = layer.weight_packed.shape[1] * 32 // scheme.bits if hasattr(layer, "weight_packed") \
            else layer.weight.shape[1]
        scales = layer.weight_scale.data
        if scheme.strategy == "tensor":  # each part's scale over its rows
            scales = scales.repeat_interleave(torch.tensor(sizes)).unsqueeze(1)
        if scheme.format != "pack-quantized":
            codes = layer.weight.data.to(torch.int32).T + offset  # [in, out]
            weights = from_codes(codes, compact_scales(scales.T.contiguous()), None, 8, num_inputs)
            weights.input_scheme = scheme.input_scheme
            if scheme.input_scheme == "static":
                weights.input_scale = layer.input_scale.data.max().reshape(1)
            return weights
        for index, (shape, size) in enumerate(zip(layer.weight_shape.data.tolist(), sizes)):
            if shape != [size, num_inputs]:
                raise ValueError(f"weight_shape of part {index} is {shape}, expected {[size, num_inputs]}")
        codes = unpack_int32(layer.weight_packed.data, scheme.bits, dim=1).T  # [in, out]
        zeros = None
        if not scheme.symmetric:
            zeros = unpack_int32(layer.weight_zero_point.data, scheme.bits, dim=0).T  # [groups, out]
        g_idx = None
        if scheme.actorder:
            g_idx = layer.weight_g_idx.data
            if not bool((g_idx == g_idx[0]).all()):
                raise ValueError("the fused parts' weight_g_idx differ; fw computes them as one layer")
            g_idx = g_idx[0]
        return from_codes(codes, compact_scales(scales.T.contiguous()), zeros, scheme.bits, layer.ct_group_size,
                          g_idx)


class CompressedTensorsMethod(QuantizationMethod):
    """llm-compressor checkpoints: int (packed or int8) and FP8 schemes per config group."""

    name = "compressed-tensors"

    def __init__(self, schemes: list[Scheme], ignore: list[str]) -> None:
        self.schemes, self.ignore = schemes, ignore
        self.scratch = ScratchBuffers()

    @classmethod
    def from_config(cls, quant_config: dict[str, Any]) -> CompressedTensorsMethod:
        groups = quant_config.get("config_groups")
        if not groups:
            raise ValueError("compressed-tensors reads checkpoints whose quantization_config has config_groups")
        top_format = quant_config.get("format")
        schemes = [parse_scheme(name, group, top_format) for name, group in groups.items()]
        return cls(schemes, list(quant_config.get("ignore") or []))

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def act_dtype(cls, dtype: torch.dtype, platform: Platform) -> torch.dtype:
        return cpu_act_dtype(dtype, platform.name)

    def scheme_for(self, prefix: str) -> Scheme | None:
        """The scheme whose targets name every checkpoint module of the layer (None: unquantized)."""
        names = checkpoint_names(prefix)
        for scheme in self.schemes:
            hits = [targets_module(scheme.targets, name) for name in names]
            if all(hits):
                return scheme
            if any(hits):
                raise ModelLoadError(f"{prefix}: config_groups target some of {', '.join(names)} but not all; fw "
                                     "computes them as one fused layer")
        return None

    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        if left_unquantized(prefix, self.ignore):
            return None
        scheme = self.scheme_for(prefix)
        if scheme is None:
            return None
        if scheme.type == "float":
            return Fp8LinearMethod(prefix, scheme.strategy, scheme.block_size, scheme.input_scheme)
        return CompressedTensorsIntLinearMethod(self, prefix, scheme)


@hookimpl
def fw_register_quantization_methods(registry) -> None:
    registry.register(CompressedTensorsMethod.name, CompressedTensorsMethod)
