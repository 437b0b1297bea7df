"""The ``local`` model source: directories, single files, cache snapshot paths, missing paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from fw.core.errors import ModelNotFoundError
from fw.plugins.loaders.local_source import LocalSource, looks_like_path, repo_id_of_hf_snapshot

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "my-model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    return directory


def test_directory_resolves_to_itself_served_as_given(model_dir: Path) -> None:
    source = LocalSource()
    assert source.matches(str(model_dir))
    resolved = source.resolve(str(model_dir), revision=None, download_dir=None)
    assert resolved.path == model_dir
    assert resolved.served_name == str(model_dir)
    assert resolved.source == "local"


def test_relative_directory_is_made_absolute_but_served_as_typed(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(model_dir.parent)
    resolved = LocalSource().resolve("my-model", revision=None, download_dir=None)
    assert resolved.path == model_dir
    assert resolved.path.is_absolute()
    assert resolved.served_name == "my-model"


def test_single_gguf_file(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = LocalSource().resolve(str(gguf), revision=None, download_dir=None)
    assert resolved.path == gguf
    assert resolved.path.is_file()
    assert resolved.served_name == str(gguf)


def test_tilde_is_expanded(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(model_dir.parent))
    source = LocalSource()
    assert source.matches("~/my-model")
    resolved = source.resolve("~/my-model", revision=None, download_dir=None)
    assert resolved.path == model_dir
    assert resolved.served_name == "~/my-model"


@pytest.mark.parametrize(
    ("repo_folder", "repo_id"),
    [
        ("models--org--name", "org/name"),
        ("models--gpt2", "gpt2"),
        ("models--my-org--Qwen2.5-0.5B", "my-org/Qwen2.5-0.5B"),
    ],
)
def test_hf_cache_snapshot_is_served_as_its_repo_id(tmp_path: Path, repo_folder: str, repo_id: str) -> None:
    snapshot = tmp_path / "hub" / repo_folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    resolved = LocalSource().resolve(str(snapshot) + "/", revision=None, download_dir=None)
    assert resolved.path == snapshot
    assert resolved.served_name == repo_id


def test_directory_that_only_resembles_a_cache_is_served_as_given(tmp_path: Path) -> None:
    not_a_snapshot = tmp_path / "models--org--name" / "checkpoints" / COMMIT
    not_a_snapshot.mkdir(parents=True)
    assert repo_id_of_hf_snapshot(not_a_snapshot) is None
    resolved = LocalSource().resolve(str(not_a_snapshot), revision=None, download_dir=None)
    assert resolved.served_name == str(not_a_snapshot)


@pytest.mark.parametrize("model", ["/no/such/model", "./missing", "../missing", "~/missing", "missing.gguf", "a/b/c"])
def test_missing_path_is_claimed_and_reported(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    source = LocalSource()
    # Claimed by the local source, so a typo'd path is never sent to a model hub.
    assert source.matches(model)
    with pytest.raises(ModelNotFoundError, match="does not exist") as excinfo:
        source.resolve(model, revision=None, download_dir=None)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "model file" in message if model.endswith(".gguf") else "model directory" in message


@pytest.mark.parametrize("model", [None, "org/name", "gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "example://org/tiny"])
def test_repo_ids_and_no_model_are_left_to_other_sources(
    model: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not LocalSource().matches(model)


def test_looks_like_path() -> None:
    assert looks_like_path("/abs/dir")
    assert looks_like_path("./rel")
    assert looks_like_path("model.GGUF")
    assert not looks_like_path("org/name")
    assert not looks_like_path("name")
