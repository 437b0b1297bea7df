"""The platform-ops interface: the small hot ops a platform may have faster kernels for."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


class PlatformOps(ABC):
    """The small ops of a forward pass and of sampling, as one platform computes them.

    ``Platform.ops(dtype)`` returns one; layers capture it when the model is built and the
    sampler when the model runner is built, so the kernel is chosen once, never per call.
    ``fw.core.layers.ops.TorchOps`` is the plain-torch implementation; a platform's
    subclass of it overrides the ops it has kernels for. Each op must equal TorchOps's up
    to float rounding (tests/plugins/platforms/test_platform_ops.py checks every available
    platform). Inputs are not tracked by autograd: the engine runs in inference mode.
    """

    #: Logit dtypes ``sample_rows`` reads as they are; float32 is always one. The sampler
    #: casts logits of other dtypes to float32 before sampling.
    sample_rows_dtypes: ClassVar[frozenset[torch.dtype]]

    @abstractmethod
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``x: [..., D]``, ``weight: [D]`` -> ``[..., D]``, normalised in float32 as HF Llama does."""

    @abstractmethod
    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, residual: [T, D]`` -> ``(rms_norm(x + residual), x + residual)``.

        The sum may be written into ``residual`` and returned as it: the caller owns the
        residual stream and passes it only here.
        """

    @abstractmethod
    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``gate_up: [T, 2I]`` -> ``silu(gate_up[:, :I]) * gate_up[:, I:]``, ``[T, I]``."""

    @abstractmethod
    def rotary_neox(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate the halves of each head (neox style): ``q: [T, Hq, D]``, ``k: [T, Hk, D]``,
        ``cos, sin: [T, D/2]``. Returns the rotated ``(q, k)``, which may be ``q`` and ``k``
        themselves, rotated in place."""

    @abstractmethod
    def sample_rows(self, logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """One token id per row of ``logits: [N, V]``: the argmax where ``temperature <= 0``,
        else the token at which ``uniform`` (``[N]``, in [0, 1)) falls in the cumulative
        ``softmax(logits / temperature)`` (inverse-CDF sampling). Returns ``[N]`` int64."""
