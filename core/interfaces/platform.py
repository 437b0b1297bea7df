"""The platform interface: a kind of device fw runs on (cpu, cuda, or a plugin's)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class MemoryInfo:
    free_bytes: int
    total_bytes: int


class Platform(ABC):
    """A device kind. Registered through ``fw_register_platforms``.

    Constructing a platform must be cheap and must not initialise the device; only the
    engine calls the methods that touch it (``memory_info``), and only after it chose
    the platform.
    """

    #: The name ``--device`` accepts, e.g. ``"cuda"``.
    name: ClassVar[str]
    #: The torch device type tensors live on, e.g. ``"cuda"``.
    device_type: ClassVar[str]
    #: ``--device auto`` picks the available platform with the highest priority.
    priority: ClassVar[int] = 0

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this machine can run on the platform (drivers present, a device visible)."""

    @abstractmethod
    def supported_dtypes(self) -> list[torch.dtype]:
        """Model dtypes the platform computes in, best first."""

    @abstractmethod
    def default_dtype(self, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
        """The dtype ``--dtype auto`` picks for a checkpoint stored in ``checkpoint_dtype``."""

    @abstractmethod
    def memory_info(self) -> MemoryInfo:
        """Free and total memory of the device, in bytes, measured now."""

    @abstractmethod
    def attention_backend(self) -> str:
        """The attention backend, as ``"module:Class"``.

        A string, so that listing platforms never imports kernels; the engine imports it
        when it starts.
        """

    def torch_device(self, index: int = 0) -> torch.device:
        """The torch device for the ``index``-th device of this platform."""
        return torch.device(self.device_type, index)

    def describe(self) -> dict[str, str]:
        """Facts for ``fw collect-env`` and start-up logs (device name, driver, ...)."""
        return {}

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Adapt a loaded model to this platform's fastest kernels (e.g. pre-packed weights).

        Called once, after the weights are loaded; must not change what the model computes.
        """
