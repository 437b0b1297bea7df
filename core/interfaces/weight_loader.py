"""The weight-loader interface: reads a checkpoint's config, tokenizer and tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


class WeightLoader(ABC):
    """A checkpoint format. Registered through ``fw_register_weight_loaders``.

    ``name`` is the ``--load-format`` value. With ``--load-format auto`` fw tries the
    loaders that set ``auto_priority`` in descending order and uses the first whose
    ``can_load`` is true.
    """

    #: The ``--load-format`` value.
    name: ClassVar[str]
    #: Order for ``--load-format auto``; ``None`` means never picked automatically.
    auto_priority: ClassVar[int | None] = None

    def can_load(self, model_path: Path) -> bool:
        """Whether ``model_path`` (a directory or a file) holds weights in this format."""
        return False

    def load_hf_config(self, model_path: Path, *, trust_remote_code: bool = False) -> PretrainedConfig:
        """The model's transformers config. By default read from ``config.json``."""
        from fw.core.model_files import load_hf_config

        return load_hf_config(model_path, trust_remote_code=trust_remote_code)

    def load_tokenizer(self, model_path: Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
        """The model's tokenizer. By default read with transformers from the directory."""
        from fw.core.model_files import load_tokenizer

        return load_tokenizer(model_path, trust_remote_code=trust_remote_code)

    @abstractmethod
    def iter_weights(self, model_path: Path, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every weight, with Hugging Face parameter names.

        Tensors come in the checkpoint's dtype on the CPU; the model casts and places
        them. Raise :class:`fw.core.errors.ModelLoadError` when a file is missing,
        corrupt or truncated, naming the file.
        """
