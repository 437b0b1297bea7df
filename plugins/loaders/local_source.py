"""The ``local`` model source: a model directory or a single weights file on disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fw.core.errors import ModelNotFoundError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import ModelSource, ResolvedModel

# Hugging Face cache layout: <cache>/models--<org>--<name>/snapshots/<commit>.
_HF_REPO_FOLDER_PREFIX = "models--"
_HF_REPO_ID_SEPARATOR = "--"
# "scheme://..." is a reference for some other source (a plugin's), never a local path.
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def looks_like_path(model: str) -> bool:
    """Whether ``model`` is clearly meant as a filesystem path rather than a hub repo id.

    Such a reference belongs to the local source even when nothing exists there, so the
    user is told the directory is missing instead of being sent to a hub.
    """
    if _URL_SCHEME.match(model):
        return False
    return (
        os.path.isabs(model)
        or model in (".", "..", "~")
        or model.startswith(("./", "../", "~/", ".\\", "..\\"))
        or model.lower().endswith(".gguf")
        # A repo id has at most one '/', so 'a/b/c' can only be a relative path.
        or model.count("/") >= 2
    )


def repo_id_of_hf_snapshot(path: Path) -> str | None:
    """``org/name`` when ``path`` is ``.../models--org--name/snapshots/<commit>``, else None."""
    repo_folder = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo_folder.startswith(_HF_REPO_FOLDER_PREFIX):
        return None
    # Repo ids never contain '--', so the folder name maps back unambiguously.
    parts = repo_folder[len(_HF_REPO_FOLDER_PREFIX) :].split(_HF_REPO_ID_SEPARATOR)
    return "/".join(parts) if all(parts) else None


class LocalSource(ModelSource):
    """A directory in Hugging Face layout, a snapshot in a hub cache, or one file (``.gguf``).

    The served model name is the reference as given, except for a Hugging Face cache
    snapshot, which is served as its repo id (``org/name``) rather than the long path.
    """

    name = "local"
    # Above the hub sources: an existing path always wins over a repo id of the same name.
    # The built-in sources stay low so third-party sources can go above them.
    priority = 30

    def matches(self, model: str | None) -> bool:
        if model is None:
            return False
        return looks_like_path(model) or Path(model).expanduser().exists()

    def resolve(self, model: str | None, *, revision: str | None, download_dir: str | None) -> ResolvedModel:
        if model is None:
            raise ModelNotFoundError("the local model source needs a path, but no model was given")
        path = Path(model).expanduser().absolute()
        if not path.exists():
            kind = "model file" if path.suffix.lower() == ".gguf" else "model directory"
            raise ModelNotFoundError(f"{kind} {path} does not exist")
        if not (path.is_dir() or path.is_file()):
            raise ModelNotFoundError(f"{path} is neither a model directory nor a model file")
        served_name = (repo_id_of_hf_snapshot(path) if path.is_dir() else None) or model
        return ResolvedModel(path=path, served_name=served_name, source=self.name)


@hookimpl
def fw_register_model_sources(registry) -> None:
    registry.register(LocalSource.name, LocalSource)
