"""The canonical layout of FP8 linear weights, shared by fp8 and compressed-tensors'
float-quantized format, and its plain-torch reference.

After loading, each FP8 layer's tensors become one :class:`Fp8Weights` (``y = x @ W.T``,
``x: [M, K]``, ``W: [N, K]``):

- ``weight``: float8_e4m3fn ``[N, K]``, row-major (the checkpoint's layout).
- ``strategy`` and ``scale`` (float32; the value multiplies the stored weight, whatever the
  checkpoint called it: HF's ``weight_scale_inv`` is such a multiplier too):
  ``"tensor"``: ``scale`` ``[1]``; ``"channel"``: ``[N, 1]``, one per output row (a fused
  layer's per-tensor scales become this: each part's scale over its rows);
  ``"block"``: ``[ceil(N / bn), ceil(K / bk)]`` with ``block_size = (bn, bk)``, block
  ``(i, j)`` covering rows ``[i bn, (i + 1) bn)`` and inputs ``[j bk, (j + 1) bk)`` (the last
  ones partial). A fused layer's parts are multiples of ``bn`` rows.
- ``input_scheme``: how the checkpoint quantizes activations to FP8: ``"dynamic"`` (per token,
  or per token and ``bk``-input group for block weights: ``scale = max|x| / 448``),
  ``"static"`` (``input_scale``, float32 ``[1]``, the largest of a fused layer's parts), or
  ``None`` (weight-only).

Dequantized weight (float32): ``W = weight.float() * scale`` broadcast over its rows, blocks or
the whole tensor. The CPU computes weight-only (see fp8.py); a kernel that quantizes
activations compares with ``reference_matmul(..., quantize_input_too=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
STRATEGIES = ("tensor", "channel", "block")


@dataclass
class Fp8Weights:
    """One linear layer's FP8 weights in the canonical layout (see the module docstring)."""

    weight: torch.Tensor  # float8_e4m3fn [N, K]
    scale: torch.Tensor  # float32 [1], [N, 1] or [ceil(N / bn), ceil(K / bk)]
    strategy: str
    block_size: tuple[int, int] | None = None
    input_scheme: str | None = "dynamic"
    input_scale: torch.Tensor | None = None  # float32 [1] for "static"


def expanded_scale(w: Fp8Weights) -> torch.Tensor:
    """The scale of every weight, float32 ``[N, K]`` (or broadcastable to it)."""
    if w.strategy == "block":
        rows, cols = w.weight.shape
        block_rows, block_cols = w.block_size
        scale = w.scale.repeat_interleave(block_rows, dim=0)[:rows]
        return scale.repeat_interleave(block_cols, dim=1)[:, :cols]
    return w.scale.to(torch.float32)


def dequantize(w: Fp8Weights, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight ``[N, K]`` in ``dtype`` (computed in float32)."""
    return (w.weight.to(torch.float32) * expanded_scale(w)).to(dtype)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` saturated to FP8's range and rounded to float8_e4m3fn."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_input(x: torch.Tensor, w: Fp8Weights) -> torch.Tensor:
    """``x: [M, K]`` float32 rounded as an FP8 kernel quantizes it, dequantized."""
    if w.input_scheme == "static":
        scale = w.input_scale.to(torch.float32)
        return quantize_fp8(x, scale).to(torch.float32) * scale
    group = w.block_size[1] if w.strategy == "block" else x.shape[1]
    pad = -x.shape[1] % group
    grouped = torch.nn.functional.pad(x, (0, pad)).view(x.shape[0], -1, group)  # [M, K / group, group]
    scale = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    rounded = quantize_fp8(grouped, scale).to(torch.float32) * scale
    return rounded.view(x.shape[0], -1)[:, :x.shape[1]]


def reference_matmul(x: torch.Tensor, w: Fp8Weights, bias: torch.Tensor | None = None,
                     quantize_input_too: bool = False) -> torch.Tensor:
    """``x: [M, K]`` -> float32 ``[M, N]``: dequantize, then matmul in float32 (optionally with
    ``x`` rounded as the checkpoint's activation scheme says)."""
    x = x.to(torch.float32)
    if quantize_input_too and w.input_scheme is not None:
        x = quantize_input(x, w)
    out = x @ dequantize(w).T
    return out if bias is None else out + bias.to(torch.float32)


def quantize_per_channel(weight: torch.Tensor) -> Fp8Weights:
    """An unquantized ``weight: [N, K]`` rounded to FP8 with one scale per output row (online
    ``--quantization fp8``), activations dynamic."""
    weight = weight.to(torch.float32)
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [N, 1]
    return Fp8Weights(quantize_fp8(weight, scale), scale, "channel")


def per_part_to_channel(part_scales: torch.Tensor, output_sizes: list[int]) -> torch.Tensor:
    """A fused layer's per-tensor scales ``[num_parts]`` as per-channel ``[N, 1]`` (lossless)."""
    sizes = torch.tensor(output_sizes)
    return part_scales.to(torch.float32).repeat_interleave(sizes).unsqueeze(1)
