"""The safetensors loader yields exactly what transformers saved, and fails clearly on bad files."""

from __future__ import annotations

import json

import pytest
import torch

from fw.core.errors import ModelLoadError
from fw.plugins.loaders.safetensors_loader import SafetensorsLoader


def load(directory) -> dict[str, torch.Tensor]:
    loader = SafetensorsLoader()
    return dict(loader.iter_weights(directory, loader.load_hf_config(directory)))


def test_single_file_yields_the_state_dict_without_the_tied_lm_head(ckpt, tied_llama, save_model):
    directory = save_model(tied_llama)
    assert [p.name for p in directory.glob("*.safetensors")] == ["model.safetensors"]

    weights = load(directory)

    assert "lm_head.weight" not in weights
    ckpt.assert_same_tensors(weights, ckpt.expected_state_dict(tied_llama))


def test_untied_model_keeps_lm_head_and_biases(ckpt, untied_qwen2, save_model):
    weights = load(save_model(untied_qwen2))

    assert "lm_head.weight" in weights and "model.layers.0.self_attn.q_proj.bias" in weights
    ckpt.assert_same_tensors(weights, ckpt.expected_state_dict(untied_qwen2))


def test_sharded_checkpoint_reads_every_shard_of_the_index(ckpt, tied_llama, save_model):
    directory = save_model(tied_llama, max_shard_size="300KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1

    ckpt.assert_same_tensors(load(directory), ckpt.expected_state_dict(tied_llama))


def test_bfloat16_checkpoint_keeps_its_dtype(ckpt, save_model):
    model = ckpt.make_model("llama", tie=True).to(torch.bfloat16)
    weights = load(save_model(model))

    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    ckpt.assert_same_tensors(weights, ckpt.expected_state_dict(model))


def test_shows_a_progress_bar_on_stderr(tied_llama, save_model, capsys):
    load(save_model(tied_llama))
    assert "Loading safetensors" in capsys.readouterr().err


def test_truncated_file_is_a_load_error_naming_the_file(tied_llama, save_model):
    directory = save_model(tied_llama)
    file = directory / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    loader = SafetensorsLoader()
    weights = loader.iter_weights(directory, loader.load_hf_config(directory))
    with pytest.raises(ModelLoadError, match="model.safetensors") as info:
        next(weights)  # fails before the first tensor is handed out
    assert str(file) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_shard_is_reported_before_any_tensor(tied_llama, save_model):
    directory = save_model(tied_llama, max_shard_size="300KB")
    last_shard = sorted(directory.glob("model-*.safetensors"))[-1]
    last_shard.write_bytes(b"not a safetensors file at all")

    with pytest.raises(ModelLoadError, match=last_shard.name):
        next(iter(SafetensorsLoader().iter_weights(directory, None)))


def test_index_naming_a_missing_shard_is_an_error(tied_llama, save_model):
    directory = save_model(tied_llama, max_shard_size="300KB")
    missing = sorted(directory.glob("model-*.safetensors"))[0]
    missing.unlink()

    with pytest.raises(ModelLoadError, match=f"missing.*{missing.name}"):
        load(directory)


def test_unreadable_index_is_an_error(tied_llama, save_model):
    directory = save_model(tied_llama, max_shard_size="300KB")
    (directory / "model.safetensors.index.json").write_text("{not json")

    with pytest.raises(ModelLoadError, match="model.safetensors.index.json"):
        load(directory)


def test_explicit_loader_on_a_directory_without_weights_names_it_and_what_it_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")

    assert not SafetensorsLoader().can_load(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        list(SafetensorsLoader().iter_weights(tmp_path, None))
    message = str(info.value)
    assert str(tmp_path) in message and "*.safetensors" in message and "model.safetensors.index.json" in message


def test_a_file_instead_of_a_directory_is_an_error(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")

    assert not SafetensorsLoader().can_load(file)
    with pytest.raises(ModelLoadError, match="not one"):
        list(SafetensorsLoader().iter_weights(file, None))
