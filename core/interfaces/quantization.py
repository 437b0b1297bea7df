"""The quantization-method interface (AWQ, GPTQ, FP8, ... ship as plugins)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fw.core.interfaces.linear import LinearMethod

if TYPE_CHECKING:
    from fw.core.interfaces.platform import Platform


class QuantizationMethod(ABC):
    """A checkpoint's quantization scheme: which :class:`LinearMethod` computes each layer.

    Registered through ``fw_register_quantization_methods``; ``name`` is what
    ``--quantization`` accepts and what ``quantization_config.quant_method`` in a
    checkpoint's config names. The engine builds one from the checkpoint's config
    (``from_config``) before it builds the model; each linear layer asks it for its
    method while the layer is constructed. The linear method does the rest: it creates
    the layer's parameters, loads checkpoint shards into them, repacks them after
    loading and computes the layer.
    """

    #: The ``--quantization`` value.
    name: ClassVar[str]
    #: Other names of the same checkpoint format, which ``--quantization`` and
    #: ``quant_method`` also accept (with a log line): vLLM's names for a kernel choice on
    #: the same checkpoints (``awq_marlin``). The plugin registers the class under each.
    aliases: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def from_config(cls, quant_config: dict[str, Any]) -> QuantizationMethod:
        """Build the method from the checkpoint's ``quantization_config`` dict.

        The dict is empty when the checkpoint has none and ``--quantization`` named the
        method. Raise ``ValueError`` with a sentence naming what is not supported.
        """

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        """Activation dtypes the linear methods compute in; the engine refuses other ``--dtype`` values."""
        return [torch.float16, torch.bfloat16]

    @classmethod
    def act_dtype(cls, dtype: torch.dtype, platform: Platform) -> torch.dtype:
        """The dtype the model computes in on ``platform`` when ``dtype`` was chosen (by
        ``--dtype`` or the platform).

        ``dtype`` itself by default. A method whose kernels on that platform cannot compute
        in ``dtype`` at a useful speed returns the one they use instead (fw's int methods on
        a CPU compute float16 models in bfloat16 or float32); the engine logs the change.
        """
        return dtype

    @abstractmethod
    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        """The method for the linear layer at ``prefix`` (``"model.layers.0.self_attn.qkv_proj"``).

        Called once per layer while the model is built. ``None`` leaves the layer
        unquantized (the platform's method computes it): ``"lm_head"`` usually, and the
        layers the checkpoint's config lists as not quantized.
        """
