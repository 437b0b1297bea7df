"""RMSNorm, computed by the platform's ops (chosen when the model is built)."""

from __future__ import annotations

import torch
from torch import nn

from fw.core.layers.build import current_build_context
from fw.core.layers.weights import default_weight_loader, set_weight_attrs


class RMSNorm(nn.Module):
    """RMSNorm; given the residual stream too, it first adds ``x`` to it (vLLM's fused form):
    ``norm(x, residual)`` -> ``(rms_norm(x + residual), x + residual)``, the residual
    possibly updated in place."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        set_weight_attrs(self.weight, weight_loader=default_weight_loader)
        self.eps = eps
        self.ops = current_build_context().ops

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
