"""The contract of a weight loader, checked for every load format fw's plugins register.

Each loader reads a tiny checkpoint written in its format (by the writers below, which use the
format's own tools, not the loader) and must give back every weight under its Hugging Face
name, in the checkpoint's dtype, on the CPU; a truncated file is a ModelLoadError naming the
file. A new built-in load format without a writer here fails the suite until it gets one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file

from fw.core.errors import ModelLoadError
from fw.core.plugins import load_plugins

BUILTIN = load_plugins(env={"FW_PLUGINS": ""})


def write_safetensors(ckpt, model, directory: Path) -> tuple[Path, Path | None]:
    model.config.save_pretrained(directory)
    save_file({k: v.contiguous() for k, v in ckpt.expected_state_dict(model).items()}, directory / "model.safetensors")
    return directory, directory / "model.safetensors"


def write_pt(ckpt, model, directory: Path) -> tuple[Path, Path | None]:
    model.config.save_pretrained(directory)
    torch.save(ckpt.expected_state_dict(model), directory / "pytorch_model.bin")
    return directory, directory / "pytorch_model.bin"


def write_gguf(ckpt, model, directory: Path) -> tuple[Path, Path | None]:
    file = ckpt.write_gguf(directory / "model.gguf", model, Q.F32)
    return file, file


def write_dummy(ckpt, model, directory: Path) -> tuple[Path, Path | None]:
    model.config.save_pretrained(directory)  # dummy weights need only the config
    return directory, None


#: load format -> writer of a checkpoint in that format: (what to load, the weights file or None).
WRITERS: dict[str, Callable[..., tuple[Path, Path | None]]] = {
    "safetensors": write_safetensors,
    "pt": write_pt,
    "gguf": write_gguf,
    "dummy": write_dummy,
}
#: Formats whose weights are made up rather than read.
RANDOM_WEIGHTS = {"dummy"}


@pytest.fixture(params=sorted(BUILTIN.weight_loaders.names()))
def written(request, ckpt, tmp_path):
    """``(loader, path to load, weights file, the model written)`` for each registered load format."""
    name = request.param
    if name not in WRITERS:
        pytest.fail(f"load format {name!r} has no checkpoint writer in {__name__}.WRITERS; add one so that its "
                    "loader is held to the contract")
    model = ckpt.make_model("llama", tie=False)
    path, weights_file = WRITERS[name](ckpt, model, tmp_path)
    return BUILTIN.weight_loaders.get(name)(), path, weights_file, model


def test_every_weight_comes_back_under_its_hf_name_dtype_and_shape(written, ckpt):
    loader, path, _, model = written
    config = loader.load_hf_config(path)
    assert (config.hidden_size, config.num_hidden_layers) == (model.config.hidden_size, 2)
    weights = dict(loader.iter_weights(path, config))
    expected = ckpt.expected_state_dict(model)
    assert sorted(weights) == sorted(expected)
    for name, tensor in expected.items():
        assert weights[name].device.type == "cpu", name
        assert weights[name].shape == tensor.shape, name
    if loader.name not in RANDOM_WEIGHTS:
        ckpt.assert_same_tensors(weights, expected)


def test_a_loader_recognises_a_checkpoint_in_its_own_format(written, tmp_path):
    loader, path, _, _ = written
    assert loader.can_load(path)
    assert not loader.can_load(tmp_path / "nothing-here")


def test_a_truncated_weights_file_is_an_error_naming_the_file(written):
    loader, path, weights_file, _ = written
    if weights_file is None:
        pytest.skip(f"{loader.name} reads no weights file")
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelLoadError, match=weights_file.name):
        config = loader.load_hf_config(path)
        for _ in loader.iter_weights(path, config):
            pass
