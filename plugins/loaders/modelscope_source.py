"""The ``modelscope`` model source: a ModelScope repo id, on when ``FW_USE_MODELSCOPE`` is true.

Like vLLM's ``VLLM_USE_MODELSCOPE``: with the variable set, repo ids go to ModelScope
instead of the Hugging Face Hub. Models come from the ModelScope cache, or are
downloaded with the ``modelscope`` SDK when it is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from fw.core.errors import ModelNotFoundError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import ModelSource, ResolvedModel
from fw.plugins.loaders.hf_source import env_flag, hub_offline, matches_repo_id

USE_MODELSCOPE_ENV = "FW_USE_MODELSCOPE"


def modelscope_cache_dir(download_dir: str | None) -> Path:
    """``--download-dir``, else ``MODELSCOPE_CACHE``, else ``~/.cache/modelscope/hub`` (read now)."""
    root = download_dir or os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub"
    return Path(os.path.expandvars(root)).expanduser()


def cache_candidates(cache_dir: Path, repo_id: str) -> list[Path]:
    """Where the ModelScope SDK may have put ``repo_id`` under ``cache_dir``, newest layout first.

    The SDK stores a model in ``<cache>/models/<org>/<name>`` (older releases: directly
    in ``<cache>/<org>/<name>``, and in ``<cache>/hub/<org>/<name>`` when
    ``MODELSCOPE_CACHE`` was set; an explicit ``cache_dir`` also skips ``models/``).
    Dots in the name are stored as ``___`` (``Qwen2.5`` -> ``Qwen2___5``), with the
    dotted name only as a symlink, if at all.
    """
    org, _, name = repo_id.rpartition("/")
    org_parts = [org] if org else []
    names = [name.replace(".", "___"), name] if "." in name else [name]
    return [
        cache_dir.joinpath(*prefix, *org_parts, candidate)
        for prefix in ((("models",), (), ("hub",)))
        for candidate in names
    ]


def cached_model_dir(cache_dir: Path, repo_id: str) -> Path | None:
    """The first candidate folder that holds model files (not just the SDK's metadata)."""
    for candidate in cache_candidates(cache_dir, repo_id):
        # The SDK writes hidden metadata (.mdl, .msc) before downloading anything, so a
        # folder with only those is an interrupted download, not a cached model.
        if candidate.is_dir() and any(not entry.name.startswith(".") for entry in candidate.iterdir()):
            return candidate
    return None


class ModelScopeSource(ModelSource):
    """A ModelScope repo id (``org/name``), only while ``FW_USE_MODELSCOPE`` is true.

    The ModelScope cache keeps one version of a model, so a cached model is used
    whatever ``--revision`` says; ``--revision`` selects what is downloaded.
    """

    name = "modelscope"
    # Above the huggingface source, so FW_USE_MODELSCOPE=true sends repo ids here.
    priority = 20

    def matches(self, model: str | None) -> bool:
        return env_flag(USE_MODELSCOPE_ENV) and matches_repo_id(model)

    def resolve(self, model: str | None, *, revision: str | None, download_dir: str | None) -> ResolvedModel:
        if model is None:
            raise ModelNotFoundError("the modelscope model source needs a repo id, but no model was given")
        cache_dir = modelscope_cache_dir(download_dir)
        path = cached_model_dir(cache_dir, model) or self._download(model, revision, download_dir, cache_dir)
        return ResolvedModel(path=path, served_name=model, source=self.name)

    def _download(self, repo_id: str, revision: str | None, download_dir: str | None, cache_dir: Path) -> Path:
        """Download with the modelscope SDK, or say clearly why that is not possible."""
        what = repo_id if revision is None else f"{repo_id} (revision {revision})"
        if hub_offline():
            raise ModelNotFoundError(
                f"{what} is not in the ModelScope cache at {cache_dir} and downloads are off "
                "(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
            )
        try:
            from modelscope import snapshot_download
        except ImportError:
            raise ModelNotFoundError(
                f"{what} is not in the ModelScope cache at {cache_dir} and the modelscope package "
                "is not installed (pip install modelscope)"
            ) from None
        kwargs = {"cache_dir": download_dir} if download_dir else {}
        if revision is not None:
            kwargs["revision"] = revision
        try:
            path = snapshot_download(repo_id, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the SDK raises many unrelated types
            reason = (str(exc).splitlines() or [""])[0]
            raise ModelNotFoundError(
                f"could not download {what} from ModelScope and it is not in the cache at {cache_dir} "
                f"({type(exc).__name__}: {reason})"
            ) from None
        return Path(path)


@hookimpl
def fw_register_model_sources(registry) -> None:
    registry.register(ModelScopeSource.name, ModelScopeSource)
