"""The linear-method interface: how a linear layer holds its weights and computes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

import torch

if TYPE_CHECKING:
    from torch import nn

#: ``weight_loader(param, loaded_weight, shard_id)``: copy a checkpoint tensor (or, for a fused
#: layer, the part ``shard_id`` names: ``"q"``/``"k"``/``"v"`` or a gate/up index) into this
#: rank's slice of ``param``.
WeightLoaderFn = Callable[["nn.Parameter", torch.Tensor, Union[str, int, None]], None]


@dataclass(frozen=True)
class NativeMatmul:
    """Output columns ``[column, column + rows)`` of a linear layer as one C call, for platforms
    that run a whole step natively (``Platform.fused_decoder``).

    ``function`` is the address of ``int f(int kind, int isa, const uint8_t *weight, int64_t
    rows, int64_t in_features, const void *x, int64_t x_stride, int x_dtype, int64_t m, void
    *out, int64_t out_stride, int out_dtype, int threads)``, which writes ``x[m, in_features]
    @ W.T`` into ``out`` (strides in elements, dtypes 0 float32 and 1 bfloat16) and returns 0;
    ``kind``, ``isa`` and ``weight`` (an address) are passed through. ``owner`` keeps the
    weight's memory alive.
    """

    function: int
    kind: int
    isa: int
    weight: int
    rows: int
    column: int
    owner: object


class LinearMethod(ABC):
    """How one linear layer stores its weight and computes ``x @ W.T + bias``.

    Chosen once per layer while the model is built (``fw.core.layers.build``): the
    platform's unquantized method, or the one a :class:`QuantizationMethod` gives for the
    layer's prefix. The layer (``fw.core.layers.linear``) owns the shapes, the bias and
    where each checkpoint part goes; the method owns the weight parameters and the matmul.
    A method keeps no per-layer state itself (what it computes with lives on the layer),
    so one instance may serve every layer.
    """

    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,
        output_sizes: list[int],
        params_dtype: torch.dtype,
        weight_loader: WeightLoaderFn,
    ) -> None:
        """Register on ``layer`` the parameters of a map ``input_size -> sum(output_sizes)``.

        Sizes are this rank's; ``output_sizes`` lists the fused parts (q, k, v or gate, up;
        one entry for a plain layer) in the order their outputs are concatenated. Name the
        parameters as the checkpoint names its tensors under the layer's prefix (``weight``,
        ``qweight``, ``scales``...). Give each one the attributes the layer's loader reads:
        ``weight_loader`` (the ``weight_loader`` passed here, or the method's own),
        ``output_dim`` and ``input_dim`` (which of its dimensions run along the outputs and
        the inputs, ``None`` for neither); the loader places parts and rank shards along them.
        """

    @abstractmethod
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack the loaded parameters into the layout ``apply`` wants (or do nothing).

        Called once per layer, after every weight is loaded and before the first forward.
        """

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [num_tokens, input_size]`` -> ``[num_tokens, sum(output_sizes)]``, ``x @ W.T + bias``.

        Called on the token path, once per layer per step: decide everything that can be
        decided earlier in ``create_weights`` or ``process_weights_after_loading``.
        """

    def native_matmuls(self, layer: nn.Module) -> list[NativeMatmul] | None:
        """The layer's matmul (bias excluded) as C calls covering its outputs in order, or None
        (the default) when it has none; asked once, after loading."""
        return None
