"""The built-in loaders register through their entry points, and --load-format auto picks the right one."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as Q
from huggingface_hub import save_torch_state_dict

from fw.core.errors import ModelLoadError
from fw.core.model_files import select_weight_loader
from fw.core.plugins import load_plugins
from fw.plugins.loaders.default_model import DefaultModelSource
from fw.plugins.loaders.dummy_loader import DummyLoader
from fw.plugins.loaders.gguf_loader import GGUFLoader
from fw.plugins.loaders.pt_loader import PtLoader
from fw.plugins.loaders.safetensors_loader import SafetensorsLoader


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def test_each_builtin_registers_under_its_name(plugins):
    expected = {"safetensors": SafetensorsLoader, "pt": PtLoader, "dummy": DummyLoader, "gguf": GGUFLoader}
    for name, cls in expected.items():
        assert plugins.weight_loaders.get(name) is cls and cls.name == name
    assert plugins.model_sources.get("default") is DefaultModelSource
    records = {r.name: r for r in plugins.records}
    for entry_point in ("safetensors", "pt", "dummy", "gguf", "default-model"):
        assert records[entry_point].status == "loaded", records[entry_point].error


def test_auto_prefers_safetensors_then_pt_then_gguf(plugins, ckpt, tied_llama, tmp_path):
    state = ckpt.expected_state_dict(tied_llama)
    ckpt.write_gguf(tmp_path / "model.gguf", tied_llama, Q.Q8_0)
    assert isinstance(select_weight_loader(plugins, "auto", tmp_path), GGUFLoader)
    assert isinstance(select_weight_loader(plugins, "auto", tmp_path / "model.gguf"), GGUFLoader)

    save_torch_state_dict(state, tmp_path, safe_serialization=False)
    assert isinstance(select_weight_loader(plugins, "auto", tmp_path), PtLoader)

    save_torch_state_dict(state, tmp_path, safe_serialization=True)
    assert isinstance(select_weight_loader(plugins, "auto", tmp_path), SafetensorsLoader)


def test_auto_never_picks_dummy(plugins, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weight files"):
        select_weight_loader(plugins, "auto", tmp_path)
    assert isinstance(select_weight_loader(plugins, "dummy", tmp_path), DummyLoader)
