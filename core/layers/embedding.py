"""The token embedding and the LM head, their vocabulary rows split over the tensor-parallel ranks.

A quantization method may keep the embedding table quantized: it then offers
``get_embedding_method(prefix)`` (optional: methods without it leave the embedding in the
model's dtype), and the :class:`EmbeddingMethod` it returns holds the table and looks rows
up. A tied LM head shares that table's ``weight`` parameter, so the method's linear
method for ``lm_head`` must keep its weight the same way (packed GGUF does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from fw.core.distributed import divide, tensor_parallel_rank, tensor_parallel_size
from fw.core.layers.build import current_build_context
from fw.core.layers.linear import ColumnParallelLinear
from fw.core.layers.weights import copy_shard, set_weight_attrs


class EmbeddingMethod(ABC):
    """How a quantized token embedding stores its table and looks rows up."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, num_embeddings: int, embedding_dim: int,
                       params_dtype: torch.dtype) -> None:
        """Register ``layer.weight`` (this rank's ``num_embeddings`` rows), with a ``weight_loader``
        that takes the checkpoint's tensor and leaves the table ready to use (there is no
        processing step after loading for embeddings)."""

    @abstractmethod
    def embedding(self, layer: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids: [T]`` -> ``[T, embedding_dim]`` in the model's dtype."""


def quantized_embedding_method(prefix: str) -> EmbeddingMethod | None:
    """The build context's quantization's method for the embedding at ``prefix``, if it has one."""
    get_method = getattr(current_build_context().quantization, "get_embedding_method", None)
    return get_method(prefix) if get_method is not None else None


class VocabParallelEmbedding(nn.Module):
    """``input_ids: [T]`` -> ``[T, embedding_dim]``; each rank holds ``num_embeddings / tp_size`` rows.

    With more than one rank, ids outside this rank's rows are masked to zero and the
    ranks' outputs summed (all-reduce); that communication comes with tensor parallelism.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, prefix: str = "model.embed_tokens") -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tensor_parallel_rank(), tensor_parallel_size()
        self.num_embeddings_per_partition = divide(num_embeddings, self.tp_size)
        self.embedding_method = quantized_embedding_method(prefix)
        if self.embedding_method is not None:
            self.embedding_method.create_weights(self, self.num_embeddings_per_partition, embedding_dim,
                                                 torch.get_default_dtype())
            return
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim))
        set_weight_attrs(self.weight, weight_loader=self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: str | int | None = None) -> None:
        copy_shard(param.data, loaded_weight, 0, self.tp_rank, self.tp_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.embedding_method is not None:
            return self.embedding_method.embedding(self, input_ids)
        return F.embedding(input_ids, self.weight)


class ParallelLMHead(ColumnParallelLinear):
    """``hidden: [N, embedding_dim]`` -> logits ``[N, num_embeddings]``, through its LinearMethod.

    Its rows split over the ranks as the embedding's do, so a tied head shares the
    embedding's shard; with more than one rank the ranks' logits are gathered.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, prefix: str = "lm_head") -> None:
        super().__init__(embedding_dim, num_embeddings, bias=False, prefix=prefix)

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        """Compute with the embedding's own weight (``tie_word_embeddings``): one shared parameter."""
        weight = getattr(self, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.shape != embedding.weight.shape:
            raise ValueError(
                f"a tied LM head computes with the embedding's weight, but its method "
                f"{type(self.linear_method).__name__} does not keep one of that shape; leave lm_head unquantized"
            )
        self.weight = embedding.weight
        self.weight_shared = True
