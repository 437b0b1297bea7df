"""The canonical layout of integer-quantized linear weights, shared by awq, gptq and
compressed-tensors, and its plain-torch reference.

Every int method converts its checkpoint's tensors into one :class:`IntWeights` after loading
(``process_weights_after_loading``); kernels (fw's CPU kernel, the Triton kernels) read this
layout and nothing else, and the contract tests compare each method's ``apply`` with
:func:`reference_matmul` on it. The layer computes ``y = x @ W.T`` with ``x: [M, K]``,
``W: [N, K]`` (``K`` inputs, ``N`` outputs: for a fused layer, the parts' outputs concatenated).

Layout (``P = 32 // bits`` codes per int32; ``G = K // group_size`` groups):

- ``qweight``: int32 ``[K // P, N]``. Unsigned codes in ``[0, 2**bits)``, packed along K:
  the code of input row ``k`` and output ``n`` is
  ``(qweight[k // P, n] >> (bits * (k % P))) & (2**bits - 1)``, i.e. the code of the lowest
  input in the lowest bits (GPTQ's order; AWQ's interleaved nibbles are undone at load).
  Rows are in *kernel order*: with act-order (``perm`` set), row ``k`` holds input
  ``perm[k]``; without it, input ``k``.
- ``scales``: ``[G, N]``, float16, bfloat16 or float32 (as the checkpoint stores them).
  Row ``k`` (kernel order) belongs to group ``k // group_size``: groups are contiguous and
  equal in size; channel-wise quantization is ``group_size == K`` (``G == 1``).
- ``zeros``: uint8 ``[G, N]``, the integer zero point in the code's unsigned range, or
  ``None`` for symmetric quantization, where the zero point is ``2**(bits - 1)``.
- ``perm``: int64 ``[K]`` or ``None``. Act-order (GPTQ ``desc_act``, compressed-tensors
  ``actorder``): the kernel reads ``x[:, perm]`` (one index_select per call) against the rows
  above. Checkpoints give a ``g_idx`` (the group of each input); sorting the inputs by group
  gives ``perm``, and every group then holds ``group_size`` consecutive rows (a ``g_idx``
  with unequal groups is refused at load).
- ``bits``: 4 or 8. ``group_size``: divides K.
- ``input_scheme``: how the checkpoint quantizes activations (W8A8 int8): ``None``
  (weight-only), ``"dynamic"`` (per token: ``scale = max|x_row| / 127``) or ``"static"``
  (``input_scale``, float32 scalar). The CPU computes weight-only; a kernel that quantizes
  activations compares with ``reference_matmul(..., quantize_input=True)``.

Dequantized weight (float32): ``W[n, perm[k]] = (code[k, n] - zero[k // group_size, n]) *
scales[k // group_size, n]`` (``perm`` the identity without act-order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (4, 8)


@dataclass
class IntWeights:
    """One linear layer's integer weights in the canonical layout (see the module docstring)."""

    qweight: torch.Tensor  # int32 [K / P, N]
    scales: torch.Tensor  # [G, N]
    zeros: torch.Tensor | None  # uint8 [G, N]; None: 2**(bits - 1)
    perm: torch.Tensor | None  # int64 [K]; None: inputs in order
    bits: int
    group_size: int
    input_scheme: str | None = None  # None, "dynamic" or "static"
    input_scale: torch.Tensor | None = None  # float32 [] for "static"

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * (32 // self.bits)

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes: [K, N]`` unsigned ints -> int32 ``[K / P, N]``, the lowest input in the lowest bits."""
    per_word = 32 // bits
    rows = codes.to(torch.int64).reshape(codes.shape[0] // per_word, per_word, codes.shape[1])
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).view(1, per_word, 1)
    words = (rows << shifts).sum(dim=1)  # [K / P, N], in [0, 2**32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_codes(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[K / P, N]`` -> int32 codes ``[K, N]`` (the inverse of :func:`pack_codes`)."""
    per_word = 32 // bits
    shifts = (torch.arange(per_word, dtype=torch.int32) * bits).view(1, per_word, 1)
    codes = (qweight.unsqueeze(1) >> shifts) & (2**bits - 1)  # [K / P, P, N]
    return codes.reshape(-1, qweight.shape[1])


def unpack_int32(packed: torch.Tensor, bits: int, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Unpack a checkpoint's int32 tensor along ``dim``: each element holds ``32 / bits`` codes
    of consecutive positions, position ``j`` of the element in bits ``[bits * order[j], ...)``
    (``order`` None: position ``j`` in slot ``j``, lowest bits first). Returns int32 codes."""
    per_word = 32 // bits
    slots = torch.tensor(order if order is not None else range(per_word), dtype=torch.int32)
    moved = packed.movedim(dim, -1)  # [..., X]
    codes = (moved.unsqueeze(-1) >> (slots * bits)) & (2**bits - 1)  # [..., X, P]
    return codes.reshape(*moved.shape[:-1], -1).movedim(-1, dim)


def act_order_permutation(g_idx: torch.Tensor, group_size: int, num_groups: int) -> torch.Tensor | None:
    """The kernel-order permutation for a checkpoint's ``g_idx: [K]`` (each input's group), or
    None when the inputs are already in group order. Raises ValueError when the groups are not
    each ``group_size`` inputs."""
    g_idx = g_idx.to(torch.int64)
    expected = torch.arange(g_idx.numel(), dtype=torch.int64) // group_size
    if torch.equal(g_idx, expected):
        return None
    if g_idx.min() < 0 or g_idx.max() >= num_groups:
        raise ValueError(f"g_idx names groups outside 0..{num_groups - 1}")
    perm = torch.sort(g_idx, stable=True).indices
    if not torch.equal(g_idx[perm], expected):
        raise ValueError(f"g_idx groups are not all {group_size} inputs; fw's kernels need equal groups")
    return perm


def from_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
               group_size: int, g_idx: torch.Tensor | None = None) -> IntWeights:
    """The canonical weights from unpacked parts in the checkpoint's input order.

    ``codes: [K, N]`` unsigned, ``scales: [G, N]``, ``zeros: [G, N]`` unsigned or None,
    ``g_idx: [K]`` or None. Raises ValueError naming what does not fit.
    """
    num_inputs, num_outputs = codes.shape
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits {bits} is not supported; fw's int kernels take {', '.join(map(str, SUPPORTED_BITS))}")
    if num_inputs % group_size or num_inputs % (32 // bits):
        raise ValueError(f"group_size {group_size} does not divide the {num_inputs} inputs")
    num_groups = num_inputs // group_size
    if tuple(scales.shape) != (num_groups, num_outputs):
        raise ValueError(f"scales have shape {tuple(scales.shape)}, expected {(num_groups, num_outputs)}")
    if zeros is not None and tuple(zeros.shape) != (num_groups, num_outputs):
        raise ValueError(f"zero points have shape {tuple(zeros.shape)}, expected {(num_groups, num_outputs)}")
    perm = act_order_permutation(g_idx, group_size, num_groups) if g_idx is not None else None
    if perm is not None:
        codes = codes.index_select(0, perm)
    return IntWeights(pack_codes(codes, bits), scales, None if zeros is None else zeros.to(torch.uint8), perm, bits,
                      group_size)


def dequantize(w: IntWeights) -> torch.Tensor:
    """The float32 weight ``[N, K]`` in the checkpoint's input order."""
    codes = unpack_codes(w.qweight, w.bits).to(torch.float32)  # [K, N], kernel order
    scales = w.scales.to(torch.float32).repeat_interleave(w.group_size, dim=0)  # [K, N]
    if w.zeros is None:
        zeros = torch.full_like(scales, 2 ** (w.bits - 1))
    else:
        zeros = w.zeros.to(torch.float32).repeat_interleave(w.group_size, dim=0)
    sorted_weight = ((codes - zeros) * scales).T  # [N, K], kernel order
    if w.perm is None:
        return sorted_weight.contiguous()
    weight = torch.empty_like(sorted_weight)
    weight[:, w.perm] = sorted_weight
    return weight


def quantize_input(x: torch.Tensor, w: IntWeights) -> torch.Tensor:
    """``x: [M, K]`` float32 rounded as a W8A8 kernel quantizes it (int8, symmetric), dequantized."""
    if w.input_scheme == "static":
        scale = w.input_scale.to(torch.float32)
    else:  # dynamic, per token
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def reference_matmul(x: torch.Tensor, w: IntWeights, bias: torch.Tensor | None = None,
                     quantize_input_too: bool = False) -> torch.Tensor:
    """``x: [M, K]`` -> float32 ``[M, N]``: dequantize, then matmul in float32 (the reference every
    kernel is compared with). ``quantize_input_too`` also rounds ``x`` as a W8A8 kernel does."""
    x = x.to(torch.float32)
    if quantize_input_too and w.input_scheme is not None:
        x = quantize_input(x, w)
    out = x @ dequantize(w).T
    return out if bias is None else out + bias.to(torch.float32)
