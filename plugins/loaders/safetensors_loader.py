"""The ``safetensors`` load format (the default for Hugging Face checkpoints).

Handles a model directory holding either one ``*.safetensors`` file or shards listed in
``model.safetensors.index.json`` (every shard the index names must exist). Without an
index, every ``*.safetensors`` file in the directory is read. Files are memory-mapped
through ``safetensors.safe_open``: a tensor is read from disk when it is yielded, not
before. A progress bar on stderr counts the tensors.

Also home of :func:`find_weight_files`, the shard discovery the ``pt`` loader shares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from fw.core.errors import ModelLoadError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import WeightLoader

if TYPE_CHECKING:
    from transformers import PretrainedConfig

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_PATTERNS = ("*.safetensors",)


def has_weight_files(
    model_path: Path, *, patterns: Sequence[str], index_name: str, excluded_names: frozenset[str] = frozenset()
) -> bool:
    """Whether the directory has ``index_name`` or a file matching ``patterns`` (except ``excluded_names``)."""
    if not model_path.is_dir():
        return False
    if (model_path / index_name).is_file():
        return True
    return any(p.is_file() and p.name not in excluded_names for pattern in patterns for p in model_path.glob(pattern))


def find_weight_files(
    model_path: Path,
    *,
    format_name: str,
    patterns: Sequence[str],
    index_name: str,
    excluded_names: frozenset[str] = frozenset(),
) -> list[Path]:
    """The weight files of one format in ``model_path``, in a stable order.

    With ``index_name`` present, exactly the shards its ``weight_map`` names (each must
    exist); otherwise every file matching ``patterns`` except ``excluded_names``. Raises
    :class:`ModelLoadError` naming the directory and what was looked for when there are
    none, and naming the index when it is unreadable or names a missing shard.
    """
    if not model_path.is_dir():
        raise ModelLoadError(f"the {format_name} loader needs a model directory, but {model_path} is not one")
    index = model_path / index_name
    if index.is_file():
        return _shards_from_index(index)
    files = sorted(
        {p for pattern in patterns for p in model_path.glob(pattern) if p.is_file() and p.name not in excluded_names}
    )
    if not files:
        raise ModelLoadError(
            f"no {format_name} weight files in {model_path} (looked for {index_name} and {', '.join(patterns)})"
        )
    return files


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        message = f"{index} is not a valid index (expected JSON with a 'weight_map' object): {exc}"
        raise ModelLoadError(message) from None
    if not shard_names:
        raise ModelLoadError(f"{index} lists no weight files")
    missing = [name for name in shard_names if not (index.parent / name).is_file()]
    if missing:
        raise ModelLoadError(f"{index} names shard files that are missing from {index.parent}: {', '.join(missing)}")
    return [index.parent / name for name in shard_names]


def _open(file: Path):
    """``safe_open`` with corrupt or truncated files reported as a ModelLoadError naming the file."""
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc} (is the file corrupt or truncated?)") from None


class SafetensorsLoader(WeightLoader):
    """Reads ``*.safetensors`` checkpoints, single-file or sharded, memory-mapped."""

    name = "safetensors"
    # Preferred over every other format when a directory holds several (HF repos
    # often ship both .safetensors and .bin; safetensors is safe and mmap-able).
    auto_priority = 100

    def can_load(self, model_path: Path) -> bool:
        return has_weight_files(model_path, patterns=SAFETENSORS_PATTERNS, index_name=SAFETENSORS_INDEX)

    def iter_weights(self, model_path: Path, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        files = find_weight_files(
            model_path, format_name=self.name, patterns=SAFETENSORS_PATTERNS, index_name=SAFETENSORS_INDEX
        )
        # Opening every header first (cheap: a few KB each) finds a corrupt or
        # truncated shard before a single tensor is handed out, and sizes the bar.
        num_tensors = 0
        for file in files:
            with _open(file) as f:
                num_tensors += len(f.keys())
        with tqdm(total=num_tensors, desc="Loading safetensors", unit="tensor", file=sys.stderr) as bar:
            for file in files:
                with _open(file) as f:
                    for name in f.keys():
                        try:
                            tensor = f.get_tensor(name)
                        except (SafetensorError, OSError) as exc:
                            raise ModelLoadError(f"cannot read tensor {name} from {file}: {exc}") from None
                        yield name, tensor
                        bar.update()


@hookimpl
def fw_register_weight_loaders(registry) -> None:
    registry.register(SafetensorsLoader.name, SafetensorsLoader)
