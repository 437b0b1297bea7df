"""The ``huggingface`` model source: a Hub repo id, from the local cache or downloaded.

huggingface_hub reads its environment (``HF_HUB_CACHE``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``...) once, at import. fw reads those variables again each time a
model is resolved, so what the user set before ``fw serve`` (or a test set with
monkeypatch) is what counts.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from fw.core.errors import ModelNotFoundError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import ModelSource, ResolvedModel
from fw.plugins.loaders.local_source import looks_like_path

# Files a model needs besides its weights: configs, tokenizers, chat templates, and the
# Python files that --trust-remote-code models import.
SUPPORT_FILE_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
# Weights in order of preference: only the first format a repo has is downloaded, so a
# repo with both safetensors and .bin files costs one copy of the weights, not two.
WEIGHT_FILE_PATTERNS = [["*.safetensors"], ["*.bin"], ["*.pt", "*.pth"]]

_TRUE = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value (read now)."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``)."""
    from huggingface_hub import constants

    # huggingface_hub refuses network calls when its import-time flag is set, so that
    # flag counts too, even if the variable was unset later.
    return env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def is_repo_id(model: str) -> bool:
    """Whether ``model`` is a valid hub repo id (``org/name`` or ``name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def matches_repo_id(model: str | None) -> bool:
    """A repo id that is not, and does not look like, a local path."""
    if model is None or looks_like_path(model) or Path(model).expanduser().exists():
        return False
    return is_repo_id(model)


def hf_cache_dir(download_dir: str | None) -> Path:
    """The hub cache: ``--download-dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the default.

    Follows huggingface_hub's own precedence (including its legacy
    ``HUGGINGFACE_HUB_CACHE`` and ``XDG_CACHE_HOME``), evaluated now.
    """
    if download_dir:
        return _expand(download_dir)
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if value := os.environ.get(variable):
            return _expand(value)
    if hf_home := os.environ.get("HF_HOME"):
        return _expand(hf_home) / "hub"
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return _expand(xdg_cache) / "huggingface" / "hub"


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(path)).expanduser()


def cached_snapshot(cache_dir: Path, repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` in ``cache_dir``, if it is there.

    ``revision`` is a branch or tag (looked up in ``refs/``) or a commit hash (a
    ``snapshots/`` folder name); None means ``main``.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    revision = revision or constants.DEFAULT_REVISION
    storage = cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = storage / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    else:
        commit = revision
    snapshot = storage / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def download_patterns(repo_files: list[str]) -> list[str]:
    """What to download from a repo: the support files and one format of weights."""
    for weight_patterns in WEIGHT_FILE_PATTERNS:
        if any(fnmatch.fnmatch(f, p) for f in repo_files for p in weight_patterns):
            return SUPPORT_FILE_PATTERNS + weight_patterns
    return SUPPORT_FILE_PATTERNS


class HuggingFaceSource(ModelSource):
    """A Hugging Face Hub repo id: the local cache first, else a download into it."""

    name = "huggingface"
    priority = 10

    def matches(self, model: str | None) -> bool:
        return matches_repo_id(model)

    def resolve(self, model: str | None, *, revision: str | None, download_dir: str | None) -> ResolvedModel:
        if model is None:
            raise ModelNotFoundError("the huggingface model source needs a repo id, but no model was given")
        cache_dir = hf_cache_dir(download_dir)
        snapshot = cached_snapshot(cache_dir, model, revision)
        if snapshot is None:
            snapshot = self._download(model, revision, cache_dir)
        return ResolvedModel(path=snapshot, served_name=model, source=self.name)

    def _download(self, repo_id: str, revision: str | None, cache_dir: Path) -> Path:
        """Download the files the model needs into the cache, or say clearly why not."""
        from huggingface_hub import HfApi, snapshot_download

        if hub_offline():
            raise ModelNotFoundError(
                f"{_describe(repo_id, revision)} is not in the Hugging Face cache at {cache_dir} "
                "and downloads are off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
            )
        endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
        try:
            # model_info is one request that lists the files; list_repo_files would page
            # through the tree with retries, making an unreachable Hub cost ~20 s.
            info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
            repo_files = [sibling.rfilename for sibling in info.siblings or []]
            path = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=download_patterns(repo_files),
                endpoint=endpoint,
                etag_timeout=_etag_timeout(),
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes one sentence for the user
            raise ModelNotFoundError(download_error_message(exc, repo_id, revision, cache_dir)) from None
        return Path(path)


def download_error_message(exc: Exception, repo_id: str, revision: str | None, cache_dir: Path) -> str:
    """One sentence saying why ``repo_id`` could not be downloaded: not found, gated, offline..."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = _describe(repo_id, revision)
    not_cached = f"it is not in the local cache at {cache_dir}"
    # Subclasses first: GatedRepoError is a RepositoryNotFoundError, and both of those
    # and RevisionNotFoundError are HfHubHTTPErrors.
    if isinstance(exc, GatedRepoError):
        return (
            f"{repo_id} is a gated repository on the Hugging Face Hub: accept its license on the Hub "
            "and set HF_TOKEN to a token with access"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{repo_id} was not found on the Hugging Face Hub (or it is gated/private: set HF_TOKEN) and {not_cached}"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision!r} of {repo_id} was not found on the Hugging Face Hub and {not_cached}"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "error"
        return f"the Hugging Face Hub answered HTTP {status} for {what} and {not_cached}"
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, LocalEntryNotFoundError):
        # A file-system failure (permissions, disk full), not the network.
        return f"could not download {what} into {cache_dir}: {exc}"
    # What is left are connection failures and timeouts. They come from huggingface_hub's
    # HTTP client (requests, httpx or httpx2 depending on its version), sometimes wrapped
    # in a LocalEntryNotFoundError; the innermost cause is the one line worth showing.
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = (str(cause).splitlines() or [""])[0]
    return (
        f"could not reach the Hugging Face Hub (offline?) and {what} is not in the local cache at {cache_dir} "
        f"({type(cause).__name__}: {reason})"
    )


def _describe(repo_id: str, revision: str | None) -> str:
    return repo_id if revision is None else f"{repo_id} (revision {revision})"


def _etag_timeout() -> float:
    """``HF_HUB_ETAG_TIMEOUT`` read now (huggingface_hub reads it only at import)."""
    from huggingface_hub import constants

    try:
        return float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    except (KeyError, ValueError):
        return float(constants.DEFAULT_ETAG_TIMEOUT)


@hookimpl
def fw_register_model_sources(registry) -> None:
    registry.register(HuggingFaceSource.name, HuggingFaceSource)
