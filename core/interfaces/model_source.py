"""The model-source interface: turns what the user typed as MODEL into files on disk."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved to local files."""

    #: A directory in Hugging Face layout, or a single weights file (``.gguf``).
    path: Path
    #: The default ``--served-model-name`` (e.g. ``org/name`` for a hub snapshot).
    served_name: str
    #: The name of the source that resolved it.
    source: str


class ModelSource(ABC):
    """Where models come from (a directory, a hub cache, a registry package...).

    Registered through ``fw_register_model_sources``. To resolve a model, fw asks the
    sources in descending ``priority`` whether they ``matches`` the reference; the first
    that does must resolve it or raise an error saying why it could not.
    """

    #: The source's name, shown in ``fw plugins list`` and in logs.
    name: ClassVar[str]
    #: Sources with a higher priority are asked first.
    priority: ClassVar[int] = 0

    @abstractmethod
    def matches(self, model: str | None) -> bool:
        """Whether this source is responsible for ``model`` (``None`` means no model was given)."""

    @abstractmethod
    def resolve(self, model: str | None, *, revision: str | None, download_dir: str | None) -> ResolvedModel:
        """Return local files for ``model``, downloading them if the source can.

        Raise :class:`fw.core.errors.ModelNotFoundError` with a sentence naming the
        problem (offline vs. not found, missing directory...) when it cannot.
        """
