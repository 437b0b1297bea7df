"""The ``fp8`` quantization method: Hugging Face's fine-grained FP8 checkpoints, vLLM's
per-tensor FP8 checkpoints, and online ``--quantization fp8`` of an unquantized checkpoint.

- Fine-grained (``weight_block_size: [128, 128]``, as DeepSeek-V3 and Qwen3-FP8 ship): a layer
  stores ``weight`` float8_e4m3fn ``[out, in]`` and ``weight_scale_inv`` float32
  ``[ceil(out / 128), ceil(in / 128)]``, the multiplier of each 128 x 128 block;
  ``activation_scheme: dynamic``.
- Per-tensor (no ``weight_block_size``; AutoFP8 / vLLM's own): ``weight`` and a scalar
  ``weight_scale``, with ``input_scale`` when ``activation_scheme`` is ``static``.
- Online (the checkpoint has no ``quantization_config``): the weights are read as usual, then
  rounded to FP8 with one scale per output row in ``process_weights_after_loading``.

Canonical layout and reference: fp8_weights.py; how it computes on a CPU: fp8_method.py.
``modules_to_not_convert`` and ``lm_head`` stay unquantized. vLLM's ``fbgemm_fp8`` is a
different config (per-channel scales, ``modules_to_not_convert`` only) and is not an alias.
"""

from __future__ import annotations

from typing import Any

import torch

from fw.core.hookspecs import hookimpl
from fw.core.interfaces.linear import LinearMethod
from fw.core.interfaces.platform import Platform
from fw.core.interfaces.quantization import QuantizationMethod
from fw.plugins.quantization.fp8_method import Fp8LinearMethod, OnlineFp8LinearMethod
from fw.plugins.quantization.int_kernels import cpu_act_dtype
from fw.plugins.quantization.int_method import left_unquantized

ACTIVATION_SCHEMES = ("dynamic", "static")


class Fp8Method(QuantizationMethod):
    """FP8 weights: from the checkpoint (block or per-tensor scales), or rounded at load."""

    name = "fp8"

    def __init__(self, serialized: bool, block_size: tuple[int, int] | None, activation_scheme: str,
                 modules_to_not_convert: list[str]) -> None:
        self.serialized, self.block_size = serialized, block_size
        self.activation_scheme, self.modules_to_not_convert = activation_scheme, modules_to_not_convert

    @classmethod
    def from_config(cls, quant_config: dict[str, Any]) -> Fp8Method:
        if not hasattr(torch, "float8_e4m3fn"):
            raise ValueError(f"this torch ({torch.__version__}) has no float8_e4m3fn dtype")
        if not quant_config:
            return cls(False, None, "dynamic", [])
        scheme = quant_config.get("activation_scheme", "dynamic")
        if scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"quantization_config.activation_scheme is {scheme!r}; fw reads "
                             f"{' and '.join(ACTIVATION_SCHEMES)}")
        block = quant_config.get("weight_block_size")
        if block is not None:
            if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0
                                                                                 for b in block)):
                raise ValueError(f"quantization_config.weight_block_size is {block!r}; expected two positive integers")
            if scheme != "dynamic":
                raise ValueError("quantization_config.weight_block_size with a static activation_scheme is not "
                                 "supported")
            block = (block[0], block[1])
        return cls(True, block, scheme, list(quant_config.get("modules_to_not_convert") or []))

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def act_dtype(cls, dtype: torch.dtype, platform: Platform) -> torch.dtype:
        return cpu_act_dtype(dtype, platform.name)

    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        if prefix == "lm_head" or left_unquantized(prefix, self.modules_to_not_convert):
            return None
        if not self.serialized:
            return OnlineFp8LinearMethod(prefix)
        if self.block_size is not None:
            return Fp8LinearMethod(prefix, "block", self.block_size, "dynamic", scale_name="weight_scale_inv")
        return Fp8LinearMethod(prefix, "tensor", None, self.activation_scheme, scale_name="weight_scale")


@hookimpl
def fw_register_quantization_methods(registry) -> None:
    registry.register(Fp8Method.name, Fp8Method)
