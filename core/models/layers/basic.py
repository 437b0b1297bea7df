"""RMSNorm and the merged linear layer (several projections of one input in one matmul)."""

from __future__ import annotations

import os
import types
from collections.abc import Sequence

import torch
from torch import nn

from fw.kernels import cpu_ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x: [..., D]``, ``weight: [D]`` -> ``[..., D]``, normalised in float32 as HF Llama does."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class RMSNorm(nn.Module):
    """RMSNorm; given the residual stream too, it first adds ``x`` to it (vLLM's fused form):
    ``norm(x, residual)`` -> ``(rms_norm(x + residual), x + residual)``."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.dim() == 2 and cpu_ops.supports(x, self.weight):
            # One C pass; the residual is updated in place.
            out = cpu_ops.rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, residual)
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        residual = x + residual
        return rms_norm(residual, self.weight, self.eps), residual


class MergedLinear(nn.Linear):
    """Projections of the same input fused into one matmul, outputs concatenated.

    q/k/v become one ``qkv_proj`` and gate/up one ``gate_up_proj``: one large matmul
    instead of several small ones, which matters most on CPU. Checkpoints store the
    parts separately; ``shard`` is where part ``index`` lives in a parameter.
    """

    def __init__(self, in_features: int, output_sizes: Sequence[int], bias: bool) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes = list(output_sizes)

    def shard(self, param: torch.Tensor, index: int) -> torch.Tensor:
        """The rows of ``param`` (``weight`` or ``bias``) that belong to part ``index``."""
        offset = sum(self.output_sizes[:index])
        return param.data.narrow(0, offset, self.output_sizes[index])


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")


def pack_linear_weights(model: nn.Module, batch_hint: int = 128) -> int:
    """On the CPU in bfloat16, give every plain ``nn.Linear`` a oneDNN pre-packed weight.

    torch's bfloat16 matmul re-packs the weight into oneDNN's blocked layout at every call;
    packing once makes the model's matmuls 5-40% faster on this kind of CPU (most at the
    decode batch sizes and for the LM head) with bit-identical results. The unpacked weight
    is freed unless another module shares it (a tied LM head's embedding). Returns the
    number of layers packed; ``FW_CPU_PACKED_WEIGHTS=0`` turns it off.
    """
    if os.environ.get("FW_CPU_PACKED_WEIGHTS", "1") == "0" or not torch.backends.mkldnn.is_available() \
            or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return 0
    shared = {id(p) for m in model.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    packed = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
                    and weight is not None and weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
                    and weight.numel() > 0):
                continue
            module.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
            module.forward = types.MethodType(_packed_forward, module)
            if id(weight) not in shared:
                weight.data = torch.empty(0, dtype=weight.dtype)  # the packed copy replaces it
            packed += 1
    return packed
