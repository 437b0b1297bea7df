"""The CPU platform's fast paths for the model's layers: fw's C ops and oneDNN pre-packed
bfloat16 linear weights. CpuPlatform hands them out only where the CPU can run them."""

from __future__ import annotations

import torch
from torch import nn

from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod
from fw.kernels import cpu_ops


class CpuOps(TorchOps):
    """The hot ops as single C passes (fw.kernels.cpu_ops), for float32 and bfloat16.

    Each replaces a chain of small torch ops, whose dispatch and temporaries dominate a
    decode step on a CPU once the matmuls are done.
    """

    sample_rows_dtypes = frozenset(cpu_ops.DTYPES)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if x.dim() != 2:  # per-head q/k norms ([T, H, D]): the C op normalises rows of a matrix
            return super().rms_norm(x, weight, eps)
        return cpu_ops.rms_norm(x, weight, eps)

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # One C pass; the residual is updated in place.
        return cpu_ops.rms_norm(x, weight, eps, residual), residual

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return cpu_ops.silu_and_mul(gate_up)

    def rotary_neox(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cpu_ops.rotary_neox_(q, k, cos, sin)
        return q, k

    def sample_rows(self, logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return cpu_ops.sample_rows(logits, temperature, uniform)


class CpuUnquantizedLinearMethod(UnquantizedLinearMethod):
    """bfloat16 linear layers on oneDNN pre-packed weights.

    torch's bfloat16 matmul re-packs the weight into oneDNN's blocked layout at every call;
    packing once makes the model's matmuls 5-40% faster on this kind of CPU (most at the
    decode batch sizes and for the LM head) with bit-identical results. The unpacked
    weight is freed once packed, unless another module reads it (a tied LM head's
    embedding). ``batch_hint`` is the number of rows oneDNN tunes the layout for.
    """

    def __init__(self, batch_hint: int = 128) -> None:
        self.batch_hint = batch_hint

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight = layer.weight
        layer.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.batch_hint)
        if not layer.weight_shared:
            weight.data = torch.empty(0, dtype=weight.dtype)  # the packed copy replaces it

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), layer.packed_weight, bias, "none", [], "")
