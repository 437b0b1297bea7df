"""The ``modelscope`` model source: the FW_USE_MODELSCOPE switch, the cache layouts, the SDK."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from fw.core.errors import ModelNotFoundError
from fw.plugins.loaders.hf_source import HuggingFaceSource
from fw.plugins.loaders.modelscope_source import ModelScopeSource

REPO_ID = "Qwen/Qwen2.5-0.5B-Instruct"
MASKED_NAME = "Qwen2___5-0___5B-Instruct"  # how the SDK stores a name with dots


@pytest.fixture(autouse=True)
def modelscope_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ModelScope on, its cache in a temp dir, downloads allowed, and no SDK importable."""
    for name in ("MODELSCOPE_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FW_USE_MODELSCOPE", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    # None in sys.modules makes `import modelscope` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "modelscope", None)


def make_model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    # The SDK's own bookkeeping, which a real cache folder also holds.
    (path / ".mdl").write_bytes(b"meta")
    return path


def resolve(model: str = REPO_ID, *, revision: str | None = None, download_dir: str | None = None):
    source = ModelScopeSource()
    assert source.matches(model)
    return source.resolve(model, revision=revision, download_dir=download_dir)


@pytest.mark.parametrize(
    "layout",
    [
        ("models", "Qwen", MASKED_NAME),  # current SDK: <cache>/models/<org>/<name with ___>
        ("Qwen", MASKED_NAME),  # older SDK: <cache>/<org>/<name with ___>
        ("Qwen", "Qwen2.5-0.5B-Instruct"),  # oldest SDK: the name as is
    ],
)
def test_cache_layouts_under_modelscope_cache(
    layout: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    model_dir = make_model_dir(tmp_path.joinpath("ms", *layout))
    resolved = resolve()
    assert resolved.path == model_dir
    assert resolved.served_name == REPO_ID
    assert resolved.source == "modelscope"


def test_newer_layout_wins_over_older(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    make_model_dir(tmp_path / "ms" / "Qwen" / MASKED_NAME)
    newer = make_model_dir(tmp_path / "ms" / "models" / "Qwen" / MASKED_NAME)
    assert resolve().path == newer


def test_default_cache_under_home(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "home" / ".cache" / "modelscope" / "hub" / "models" / "org" / "name")
    assert resolve("org/name").path == model_dir


def test_download_dir_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty"))
    # With an explicit cache_dir the SDK stores <cache_dir>/<org>/<name>, without models/.
    model_dir = make_model_dir(tmp_path / "downloads" / "Qwen" / MASKED_NAME)
    assert resolve(download_dir=str(tmp_path / "downloads")).path == model_dir


def test_not_cached_and_sdk_missing_gives_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    # Only the SDK's metadata: an interrupted download, not a cached model.
    (tmp_path / "ms" / "models" / "Qwen" / MASKED_NAME).mkdir(parents=True)
    (tmp_path / "ms" / "models" / "Qwen" / MASKED_NAME / ".msc").write_bytes(b"")
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve()
    assert str(excinfo.value) == (
        f"{REPO_ID} is not in the ModelScope cache at {tmp_path / 'ms'} and the modelscope package "
        "is not installed (pip install modelscope)"
    )


def test_not_cached_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the ModelScope cache at .* downloads are off"):
        resolve()


def fake_sdk(monkeypatch: pytest.MonkeyPatch, snapshot_download) -> list[tuple[str, dict]]:
    """Install a stand-in ``modelscope`` module; returns the calls made to it."""
    calls: list[tuple[str, dict]] = []

    def recording_snapshot_download(model_id: str, **kwargs):
        calls.append((model_id, kwargs))
        return snapshot_download(model_id, **kwargs)

    module = types.ModuleType("modelscope")
    module.snapshot_download = recording_snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", module)
    return calls


def test_not_cached_downloads_with_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloaded = tmp_path / "downloads" / "Qwen" / MASKED_NAME
    calls = fake_sdk(monkeypatch, lambda model_id, **kwargs: str(make_model_dir(downloaded)))
    resolved = resolve(revision="v1.0", download_dir=str(tmp_path / "downloads"))
    assert calls == [(REPO_ID, {"cache_dir": str(tmp_path / "downloads"), "revision": "v1.0"})]
    assert resolved.path == downloaded
    assert resolved.served_name == REPO_ID


def test_sdk_failure_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))

    def failing(model_id: str, **kwargs):
        raise ValueError("The model: Qwen/Qwen2.5-0.5B-Instruct not exist\nmore detail")

    calls = fake_sdk(monkeypatch, failing)
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve()
    assert calls == [(REPO_ID, {})]  # the SDK picks its own cache when no --download-dir is given
    message = str(excinfo.value)
    assert message.startswith(f"could not download {REPO_ID} from ModelScope")
    assert "not exist" in message and "\n" not in message


@pytest.mark.parametrize(("value", "on"), [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False)])
def test_switch_is_read_at_call_time(value: str, on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ModelScopeSource()
    monkeypatch.setenv("FW_USE_MODELSCOPE", value)
    assert source.matches(REPO_ID) is on


def test_off_by_default_and_asked_before_huggingface_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_USE_MODELSCOPE")
    assert not ModelScopeSource().matches(REPO_ID)
    assert ModelScopeSource.priority > HuggingFaceSource.priority
    monkeypatch.setenv("FW_USE_MODELSCOPE", "1")
    assert not ModelScopeSource().matches(None)
    assert not ModelScopeSource().matches("./local/dir")
