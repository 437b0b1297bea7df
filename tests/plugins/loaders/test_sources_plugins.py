"""The three sources through the real plugin path: entry points -> registries -> resolve_model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fw.core.errors import ModelNotFoundError
from fw.core.model_files import resolve_model
from fw.core.plugins import LOADED, Plugins, load_plugins

COMMIT = "c" * 40


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE",
        "MODELSCOPE_CACHE", "FW_USE_MODELSCOPE", "FW_PLUGINS", "FW_BLOCKED_PLUGINS", "FW_DISABLE_PLUGIN_AUTOLOAD",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    # Offline: a wrong routing decision fails with a message instead of reaching the Hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setitem(sys.modules, "modelscope", None)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins()


def hf_snapshot(tmp_path: Path) -> Path:
    storage = tmp_path / "hf" / "models--org--name"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


def test_sources_are_registered_by_their_builtin_plugins(plugins: Plugins) -> None:
    records = {record.name: record for record in plugins.records}
    for name in ("local", "huggingface", "modelscope"):
        assert records[name].status == LOADED, records[name].error
        assert records[name].provides == [f"model source: {name}"]
        assert records[name].distribution == "fw"
    assert {"local", "huggingface", "modelscope"} <= set(plugins.model_sources.names())


def test_repo_id_goes_to_the_hf_cache(plugins: Plugins, tmp_path: Path) -> None:
    snapshot = hf_snapshot(tmp_path)
    resolved = resolve_model(plugins, "org/name")
    assert (resolved.source, resolved.path, resolved.served_name) == ("huggingface", snapshot, "org/name")


def test_repo_id_goes_to_modelscope_when_switched_on(
    plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_snapshot(tmp_path)
    model_dir = tmp_path / "ms" / "models" / "org" / "name"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    monkeypatch.setenv("FW_USE_MODELSCOPE", "true")
    resolved = resolve_model(plugins, "org/name")
    assert (resolved.source, resolved.path, resolved.served_name) == ("modelscope", model_dir, "org/name")


def test_existing_directory_wins_over_a_cached_repo_of_the_same_name(plugins: Plugins, tmp_path: Path) -> None:
    hf_snapshot(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    resolved = resolve_model(plugins, "org/name")
    assert (resolved.source, resolved.path) == ("local", tmp_path / "org" / "name")


def test_snapshot_path_is_served_as_the_repo_id(plugins: Plugins, tmp_path: Path) -> None:
    resolved = resolve_model(plugins, str(hf_snapshot(tmp_path)))
    assert (resolved.source, resolved.served_name) == ("local", "org/name")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("./missing-model", "model directory .* does not exist"),
        ("org/uncached", "org/uncached is not in the Hugging Face cache at .* downloads are off"),
    ],
)
def test_unresolvable_models_get_the_responsible_sources_message(plugins: Plugins, model: str, message: str) -> None:
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model(plugins, model)


def test_no_model_is_left_to_the_default_source(plugins: Plugins) -> None:
    for name in ("local", "huggingface", "modelscope"):
        assert not plugins.model_sources.get(name)().matches(None)
