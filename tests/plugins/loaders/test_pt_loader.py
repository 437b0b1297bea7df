"""The pt loader reads .bin/.pt checkpoints and never unpickles anything but tensors."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from huggingface_hub import save_torch_state_dict

from fw.core.errors import ModelLoadError
from fw.plugins.loaders.pt_loader import PtLoader


def save_bin(directory, state_dict, **kwargs):
    save_torch_state_dict(state_dict, directory, safe_serialization=False, **kwargs)
    return directory


def load(directory) -> dict[str, torch.Tensor]:
    return dict(PtLoader().iter_weights(directory, None))


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it calls ``Path.touch`` on the marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_single_bin_yields_the_saved_state_dict(ckpt, untied_qwen2, tmp_path):
    state = ckpt.expected_state_dict(untied_qwen2)
    save_bin(tmp_path, state)
    assert [p.name for p in tmp_path.glob("*.bin")] == ["pytorch_model.bin"]

    assert PtLoader().can_load(tmp_path)
    ckpt.assert_same_tensors(load(tmp_path), state)


def test_sharded_bin_reads_every_shard_of_the_index(ckpt, tied_llama, tmp_path):
    state = ckpt.expected_state_dict(tied_llama)
    save_bin(tmp_path, state, max_shard_size="300KB")
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1

    ckpt.assert_same_tensors(load(tmp_path), state)


def test_pt_file_in_the_legacy_format_loads_without_mmap(ckpt, tied_llama, tmp_path):
    state = ckpt.expected_state_dict(tied_llama)
    torch.save(state, tmp_path / "weights.pt", _use_new_zipfile_serialization=False)

    ckpt.assert_same_tensors(load(tmp_path), state)


def test_training_leftovers_are_not_weights(ckpt, tied_llama, tmp_path):
    torch.save({"lr": torch.tensor(0.1)}, tmp_path / "optimizer.pt")
    torch.save({"step": torch.tensor(3)}, tmp_path / "training_args.bin")
    assert not PtLoader().can_load(tmp_path)

    state = ckpt.expected_state_dict(tied_llama)
    save_bin(tmp_path, state)
    assert PtLoader().can_load(tmp_path)
    ckpt.assert_same_tensors(load(tmp_path), state)


def test_a_pickle_with_code_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"w": torch.ones(2), "x": RunsCodeWhenUnpickled(marker)}, tmp_path / "pytorch_model.bin")
    # The payload is live: a plain unpickle would run it (checked on a copy).
    torch.save(RunsCodeWhenUnpickled(tmp_path / "control"), tmp_path / "control.pkl")
    torch.load(tmp_path / "control.pkl", weights_only=False)
    assert (tmp_path / "control").exists()
    (tmp_path / "control.pkl").unlink()

    with pytest.raises(ModelLoadError, match="refused to load .*pytorch_model.bin.*arbitrary objects"):
        load(tmp_path)
    assert not marker.exists()


def test_a_pickle_of_something_other_than_a_tensor_mapping_is_refused(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "pytorch_model.bin")

    with pytest.raises(ModelLoadError, match="not a plain mapping of parameter names to tensors"):
        load(tmp_path)


def test_truncated_bin_is_a_load_error_naming_the_file(ckpt, tied_llama, tmp_path):
    save_bin(tmp_path, ckpt.expected_state_dict(tied_llama))
    file = tmp_path / "pytorch_model.bin"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    with pytest.raises(ModelLoadError, match="pytorch_model.bin") as info:
        load(tmp_path)
    assert "\n" not in str(info.value)


def test_index_naming_a_missing_shard_is_an_error(ckpt, tied_llama, tmp_path):
    save_bin(tmp_path, ckpt.expected_state_dict(tied_llama), max_shard_size="300KB")
    missing = sorted(tmp_path.glob("pytorch_model-*.bin"))[-1]
    missing.unlink()

    with pytest.raises(ModelLoadError, match=f"missing.*{missing.name}"):
        load(tmp_path)


def test_explicit_loader_on_a_directory_without_weights_names_it_and_what_it_looked_for(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value) and "*.bin" in str(info.value)
