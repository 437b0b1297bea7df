"""The gated MLP's activation: ``act(gate) * up`` over the fused gate/up output."""

from __future__ import annotations

import torch
from torch import nn

from fw.core.layers.build import current_build_context


class SiluAndMul(nn.Module):
    """``gate_up: [T, 2I]`` -> ``silu(gate) * up: [T, I]``, by the platform's fused op."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = current_build_context().ops

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_and_mul(gate_up)


class ActAndMul(nn.Module):
    """``gate_up: [T, 2I]`` -> ``act(gate) * up: [T, I]`` for activations without a fused op
    (any of transformers' ``ACT2FN``)."""

    def __init__(self, hidden_act: str) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.act = ACT2FN[hidden_act]

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)  # [T, I] each
        return self.act(gate) * up


def act_and_mul(hidden_act: str) -> nn.Module:
    """The activation layer for a config's ``hidden_act``."""
    return SiluAndMul() if hidden_act == "silu" else ActAndMul(hidden_act)
