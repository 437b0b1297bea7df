"""The model-architecture interface: a native causal LM for some HF ``architectures``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class CausalLM(nn.Module, ABC):
    """A causal language model over a flat batch of tokens (no padding).

    Registered through ``fw_register_model_architectures`` under the Hugging Face
    architecture name it implements (``"LlamaForCausalLM"``). The engine builds it
    from the checkpoint's config, feeds it weights, then calls ``forward`` with the
    attention metadata of the step set in the forward context.
    """

    @abstractmethod
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``input_ids, positions: [num_tokens]`` -> hidden states ``[num_tokens, hidden_size]``."""

    @abstractmethod
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states: [num_sampled, hidden_size]`` -> logits ``[num_sampled, vocab_size]``."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy Hugging Face-named weights into the parameters; return the names loaded."""
