"""Copying checkpoint tensors into parameters: the shared part of every layer's weight_loader.

A linear method describes each parameter it creates with attributes (``set_weight_attrs``)
that the layer's ``weight_loader`` reads to place checkpoint tensors:

- ``output_dim`` / ``input_dim``: which dimension runs along the outputs / inputs (None for
  neither). Fused parts (q/k/v, gate/up) are placed along ``output_dim``; tensor-parallel
  shards are cut along ``output_dim`` (column-parallel) or ``input_dim`` (row-parallel).
- ``packed_dim`` and ``pack_factor`` (as vLLM names them): along ``packed_dim`` one element
  holds ``pack_factor`` values, e.g. AWQ's ``qweight [in, out / 8]`` packs eight 4-bit codes
  of consecutive outputs in an int32, and a 128x128-block FP8 scale holds one row per 128
  outputs. A fused part's offset and extent along that dimension are divided by the factor
  (rounded up: each part starts on a new element).
- Grouped parameters (scales and zero points with one row per ``group_size`` inputs) need
  nothing more: the method sizes them in groups, and a rank's shard along ``input_dim`` is
  its share of the groups.
- ``per_part``: dimension 0 holds one entry per fused part (a per-tensor FP8 scale, GPTQ's
  ``g_idx``, compressed-tensors' ``weight_shape``); each checkpoint part fills its own entry,
  and ``output_dim``/``input_dim`` then describe one entry.
- ``optional``: the checkpoint may leave the tensor out (GPTQ's ``g_idx`` without act-order);
  the value ``create_weights`` gave it stays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WeightShapeError(ValueError):
    """A checkpoint tensor's shape is not the one the parameter expects (the model turns it
    into a ModelLoadError naming the tensor)."""

    def __init__(self, expected: tuple[int, ...]) -> None:
        super().__init__(f"expected shape {expected}")
        self.expected = expected


def set_weight_attrs(param: nn.Parameter, **attrs: Any) -> None:
    """Attach loading metadata to a parameter (``weight_loader``, ``output_dim``, ``input_dim``)."""
    for key, value in attrs.items():
        setattr(param, key, value)


def copy_shard(dest: torch.Tensor, loaded: torch.Tensor, dim: int | None, tp_rank: int, tp_size: int) -> None:
    """Copy rank ``tp_rank``'s share of ``loaded`` into ``dest`` (cast to its dtype).

    Along ``dim`` ``dest`` holds ``1 / tp_size`` of the checkpoint tensor; with ``dim``
    None it holds all of it. Raises WeightShapeError, with the full shape expected, when
    ``loaded`` does not have it.
    """
    expected = list(dest.shape)
    if dim is not None:
        expected[dim] *= tp_size
    if list(loaded.shape) != expected:
        raise WeightShapeError(tuple(expected))
    if dim is not None:
        loaded = loaded.narrow(dim, tp_rank * dest.shape[dim], dest.shape[dim])
    dest.copy_(loaded)


def packed_size(param: nn.Parameter, dim: int, size: int) -> int:
    """How many elements of ``param`` along ``dim`` hold ``size`` values (``size / pack_factor``,
    rounded up, along the packed dimension)."""
    if getattr(param, "packed_dim", None) == dim:
        return -(-size // param.pack_factor)
    return size


def part_slice(param: nn.Parameter, loaded: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(destination, tensor)``: for a ``per_part`` parameter, entry ``index`` and the checkpoint
    tensor (a one-element one reshaped to the entry's shape: checkpoints store scalars as [] or
    [1]); for any other, the whole parameter and the tensor as it is."""
    if not getattr(param, "per_part", False):
        return param.data, loaded
    dest = param.data[index]
    if loaded.numel() == 1 and dest.numel() == 1:
        loaded = loaded.reshape(dest.shape)
    return dest, loaded


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | int | None = None) -> None:
    """The loader of a parameter every rank holds whole (norm weights)."""
    copy_shard(param.data, loaded_weight, None, 0, 1)
