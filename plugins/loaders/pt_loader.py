"""The ``pt`` load format: PyTorch pickles (``*.bin``, ``*.pt``), single or sharded.

Handles a model directory with ``pytorch_model.bin`` (or any ``*.bin`` / ``*.pt``
files) or shards listed in ``pytorch_model.bin.index.json``. Files that training
frameworks leave next to the weights (optimizer and scheduler states, training args)
are skipped.

Every file is read with ``torch.load(weights_only=True)``: a pickle may only contain
tensors and plain containers, so a checkpoint can never run code while it loads.
Anything else is refused with a ModelLoadError. Files in the zip format (PyTorch >= 1.6)
are memory-mapped; the legacy format cannot be and is read into memory.
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from tqdm import tqdm

from fw.core.errors import ModelLoadError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import WeightLoader
from fw.plugins.loaders.safetensors_loader import find_weight_files, has_weight_files

if TYPE_CHECKING:
    from transformers import PretrainedConfig

PT_INDEX = "pytorch_model.bin.index.json"
PT_PATTERNS = ("*.bin", "*.pt")
# Saved by training loops next to the weights; not weights (vLLM skips the same files).
NOT_WEIGHT_FILES = frozenset({"training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"})


def _refusal_detail(exc: pickle.UnpicklingError) -> str:
    """The short reason out of torch's long weights_only message (e.g. the refused global)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), re.DOTALL)
    detail = match.group(1) if match else str(exc)
    return " ".join(detail.split())[:300]


def load_pt_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Read one PyTorch weights file safely into ``{name: tensor}`` on the CPU.

    Raises :class:`ModelLoadError` naming the file when it is corrupt or truncated,
    holds anything but tensors, or is not a mapping of names to tensors.
    """
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Legacy (non-zip) files cannot be memory-mapped; read them normally.
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"refused to load {file}: it holds objects other than plain tensors, and fw never unpickles "
            f"arbitrary objects (torch.load with weights_only=True said: {_refusal_detail(exc)})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot read {file}: {first_line} (is the file corrupt or truncated?)") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state.items()
    ):
        raise ModelLoadError(
            f"refused to load {file}: it is not a plain mapping of parameter names to tensors "
            f"(found {type(state).__name__}); fw never unpickles arbitrary objects"
        )
    return dict(state)


class PtLoader(WeightLoader):
    """Reads PyTorch ``.bin`` / ``.pt`` checkpoints, single-file or sharded, with weights_only=True."""

    name = "pt"
    # Below safetensors: a directory that has both is read through safetensors.
    auto_priority = 50

    def can_load(self, model_path: Path) -> bool:
        return has_weight_files(model_path, patterns=PT_PATTERNS, index_name=PT_INDEX, excluded_names=NOT_WEIGHT_FILES)

    def iter_weights(self, model_path: Path, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        files = find_weight_files(
            model_path,
            format_name=self.name,
            patterns=PT_PATTERNS,
            index_name=PT_INDEX,
            excluded_names=NOT_WEIGHT_FILES,
        )
        for file in tqdm(files, desc="Loading PyTorch weights", unit="file", file=sys.stderr):
            state = load_pt_state_dict(file)
            yield from state.items()
            # Drop the file's tensors (and its mmap) before the next one is opened.
            del state


@hookimpl
def fw_register_weight_loaders(registry) -> None:
    registry.register(PtLoader.name, PtLoader)
