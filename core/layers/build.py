"""The build context: what the layers of a model under construction read in ``__init__``.

The engine sets it around the model's constructor (``with building_model(...)``), so each
layer chooses its kernels once, when it is built: the platform's ops, and the linear
method for its prefix (the quantization's, or the platform's unquantized one). Nothing on
the token path asks again. A model built outside any context (tests, tools) computes in
plain torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from fw.core.interfaces.linear import LinearMethod
from fw.core.interfaces.ops import PlatformOps
from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod

if TYPE_CHECKING:
    import torch

    from fw.core.interfaces.platform import Platform
    from fw.core.interfaces.quantization import QuantizationMethod


@dataclass(frozen=True)
class ModelBuildContext:
    ops: PlatformOps
    #: Computes the linear layers the quantization leaves alone (all of them without one).
    unquantized_linear_method: LinearMethod
    quantization: QuantizationMethod | None = None

    @classmethod
    def for_platform(
        cls, platform: Platform, dtype: torch.dtype, quantization: QuantizationMethod | None = None
    ) -> ModelBuildContext:
        """The kernels ``platform`` has for a model computing in ``dtype``."""
        return cls(platform.ops(dtype), platform.unquantized_linear_method(dtype), quantization)

    def linear_method(self, prefix: str) -> LinearMethod:
        """The method that computes the linear layer at ``prefix``."""
        method = self.quantization.get_linear_method(prefix) if self.quantization is not None else None
        return method or self.unquantized_linear_method


TORCH_BUILD_CONTEXT = ModelBuildContext(TorchOps(), UnquantizedLinearMethod())

_current = TORCH_BUILD_CONTEXT


@contextlib.contextmanager
def building_model(context: ModelBuildContext) -> Iterator[ModelBuildContext]:
    """Build the layers constructed inside this block with ``context``'s kernels."""
    global _current
    previous, _current = _current, context
    try:
        yield context
    finally:
        _current = previous


def current_build_context() -> ModelBuildContext:
    return _current
