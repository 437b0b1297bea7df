"""Copying checkpoint tensors into parameters: the shared part of every layer's weight_loader."""

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


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | int | None = None) -> None:
    """The loader of a parameter every rank holds whole (norm weights)."""
    copy_shard(param.data, loaded_weight, None, 0, 1)
