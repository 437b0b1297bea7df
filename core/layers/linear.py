"""Linear layers in nano-vllm's shape, each computed through a LinearMethod.

Tensor parallelism splits a layer's weight over the ranks: a column-parallel layer holds a
slice of the outputs (q/k/v heads, gate/up rows), a row-parallel one a slice of the inputs
(o_proj, down_proj, which then sum their partial outputs over the ranks). fw runs one rank
today (``fw.core.distributed``), but every parameter's ``weight_loader`` already copies
only this rank's slice, so tensor parallelism changes the sizes, not the loading.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import nn

from fw.core.distributed import divide, tensor_parallel_rank, tensor_parallel_size
from fw.core.layers.build import current_build_context
from fw.core.layers.weights import copy_shard, packed_size, part_slice, set_weight_attrs

#: A LoRA adapter's hook on one layer: ``(x, base_output) -> base_output + delta``.
LoRAHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LinearBase(nn.Module, ABC):
    """``x: [T, input_size] -> [T, sum(output_sizes)]`` through the layer's LinearMethod.

    The method (chosen at construction for ``prefix``) creates the weight parameters and
    computes; the layer owns the bias and the ``weight_loader`` that puts each checkpoint
    tensor, or part of one, into this rank's slice.

    LoRA plugs in at ``lora``: a LoRA wrapper sets it to a hook that adds the adapters'
    delta (``x @ A.T @ B.T * scale`` for each request's adapter) to the base output.
    fw has no LoRA yet, so it stays None; the check is one attribute read per layer.
    """

    #: Whether another module reads ``weight`` too (a tied LM head's embedding): a method
    #: may repack the weight for itself but must leave it in place.
    weight_shared: bool = False

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool, prefix: str) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tensor_parallel_rank(), tensor_parallel_size()
        self.input_size = input_size  # this rank's
        self.output_sizes = output_sizes  # this rank's, one per fused part
        params_dtype = torch.get_default_dtype()
        self.linear_method = current_build_context().linear_method(prefix)
        self.linear_method.create_weights(self, input_size, output_sizes, params_dtype, self.weight_loader)
        if bias:
            self.bias = nn.Parameter(torch.empty(sum(output_sizes), dtype=params_dtype))
            set_weight_attrs(self.bias, weight_loader=self.weight_loader, output_dim=0, input_dim=None)
        else:
            self.register_parameter("bias", None)
        self.lora: LoRAHook | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear_method.apply(self, x, self.bias)
        if self.lora is not None:
            out = self.lora(x, out)
        return out

    @abstractmethod
    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: str | int | None = None) -> None:
        """Copy the checkpoint tensor ``loaded_weight`` into this rank's slice of ``param``.

        Fused layers take the part's ``shard_id`` (checkpoints store the parts separately).
        Raises WeightShapeError when the tensor's shape is not the one expected.
        """


class ColumnParallelLinear(LinearBase):
    """The outputs split over the ranks (each computes ``output_size / tp_size`` of them)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, prefix: str = "") -> None:
        super().__init__(input_size, [divide(output_size, tensor_parallel_size())], bias, prefix)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: str | int | None = None) -> None:
        dest, loaded_weight = part_slice(param, loaded_weight, 0)
        copy_shard(dest, loaded_weight, param.output_dim, self.tp_rank, self.tp_size)


class MergedColumnParallelLinear(LinearBase):
    """Projections of the same input fused into one matmul, outputs concatenated (gate/up).

    One large matmul instead of several small ones, which matters most on CPU. Checkpoints
    store the parts separately: part ``shard_id`` (its index) goes to its rows of the
    fused weight, each rank taking its slice of every part.
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, prefix: str = "") -> None:
        tp_size = tensor_parallel_size()
        super().__init__(input_size, [divide(size, tp_size) for size in output_sizes], bias, prefix)

    def part_index(self, shard_id: str | int) -> int:
        """Which of ``output_sizes`` the checkpoint part ``shard_id`` is."""
        return int(shard_id)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | int) -> None:
        index, dim = self.part_index(shard_id), param.output_dim
        if getattr(param, "per_part", False):  # the part's own entry (a per-tensor scale, a g_idx)
            dest, loaded_weight = part_slice(param, loaded_weight, index)
            copy_shard(dest, loaded_weight, dim, self.tp_rank, self.tp_size)
            return
        # Along a packed dimension (int4 codes in an int32, block scales) parts start at
        # their packed offsets: sizes divided by the pack factor.
        sizes = [packed_size(param, dim, size) for size in self.output_sizes]
        dest = param.data.narrow(dim, sum(sizes[:index]), sizes[index])
        copy_shard(dest, loaded_weight, dim, self.tp_rank, self.tp_size)


class QKVParallelLinear(MergedColumnParallelLinear):
    """q, k and v projections fused (parts ``"q"``, ``"k"``, ``"v"``), heads split over the ranks."""

    PARTS = ("q", "k", "v")

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int, total_num_kv_heads: int,
                 bias: bool = False, prefix: str = "") -> None:
        q_size, kv_size = total_num_heads * head_size, total_num_kv_heads * head_size
        super().__init__(hidden_size, [q_size, kv_size, kv_size], bias, prefix)

    def part_index(self, shard_id: str | int) -> int:
        return self.PARTS.index(shard_id)


class RowParallelLinear(LinearBase):
    """The inputs split over the ranks: each computes a partial ``[T, output_size]`` from its
    slice. With more than one rank the partials are summed over the ranks (all-reduce) and
    only rank 0 adds the bias; that communication comes with tensor parallelism."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, prefix: str = "") -> None:
        super().__init__(divide(input_size, tensor_parallel_size()), [output_size], bias, prefix)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: str | int | None = None) -> None:
        # A packed or grouped input dimension (GPTQ's qweight [in / 8, out], scales [in / group,
        # out]) is cut the same way: the parameter already holds this rank's share of it.
        dest, loaded_weight = part_slice(param, loaded_weight, 0)
        copy_shard(dest, loaded_weight, param.input_dim, self.tp_rank, self.tp_size)


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every linear layer's method repack its loaded weights (once per layer)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LinearBase):
                module.linear_method.process_weights_after_loading(module)
