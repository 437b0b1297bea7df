"""The platform interface: a kind of device fw runs on (cpu, cuda, or a plugin's)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from torch import nn

    from fw.core.config.cache import CacheConfig
    from fw.core.forward_context import AttentionMetadata
    from fw.core.interfaces.attention import AttentionBackend
    from fw.core.interfaces.linear import LinearMethod
    from fw.core.interfaces.ops import PlatformOps


@dataclass(frozen=True)
class MemoryInfo:
    free_bytes: int
    total_bytes: int


class FusedDecoder(Protocol):
    """A step through a whole model in native code (``Platform.fused_decoder``)."""

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata,
                 kv_caches: list[torch.Tensor]) -> torch.Tensor | None:
        """The model's final hidden states ``[T, hidden]`` for the step, exactly as its forward
        computes them (the KV cache written likewise), or None for a step it does not run."""


class Platform(ABC):
    """A device kind. Registered through ``fw_register_platforms``.

    Constructing a platform must be cheap and must not initialise the device; only the
    engine calls the methods that touch it (``memory_info``, ``profile_peak_memory``,
    ``kv_cache_budget``), and only after it chose the platform. The platform is where
    device-specific code plugs into the platform-neutral core: its kernels (``ops``,
    ``unquantized_linear_method``, ``attention_backend``) and its memory accounting.
    Methods that return kernels import them inside the method, so that listing platforms
    never imports a kernel.
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
    def attention_backend(self) -> type[AttentionBackend]:
        """The attention backend class the model runner builds (imported inside this method)."""

    @abstractmethod
    def kv_cache_budget(self, cache: CacheConfig, profile_peak_bytes: int | None) -> int:
        """Bytes the KV cache may take on one device.

        ``profile_peak_bytes`` is what ``profile_peak_memory`` measured (``None`` where it
        measures nothing). Called once, after the model is loaded.
        """

    def kv_cache_dtypes(self) -> list[torch.dtype]:
        """The 8-bit KV-cache dtypes (``torch.float8_e4m3fn``, ``torch.float8_e5m2``) the platform's
        attention backend writes and reads, for ``--kv-cache-dtype fp8``. The default is none: the
        cache is stored in the model's dtype, and an fp8 request is refused at start-up."""
        return []

    def profile_peak_memory(self, run_forward: Callable[[], None]) -> int | None:
        """Call ``run_forward`` (a forward at the largest batch) and return the device's peak
        memory meanwhile, in bytes; weights included.

        Called once at start-up, before the KV cache is allocated. The default measures
        nothing and does not run the forward: for platforms whose KV budget is a fixed size.
        """
        return None

    def ops(self, dtype: torch.dtype) -> PlatformOps:
        """The small hot ops (RMSNorm, SiLU-and-mul, rotary, sampling) for tensors of ``dtype``.

        Called once when a model (with its dtype) or a sampler (float32) is built. The
        default is plain torch.
        """
        from fw.core.layers.ops import TorchOps

        return TorchOps()

    def unquantized_linear_method(self, dtype: torch.dtype) -> LinearMethod:
        """The method that computes the linear layers no quantization method claims.

        Called once when a model computing in ``dtype`` is built. The default is ``F.linear``.
        """
        from fw.core.layers.ops import UnquantizedLinearMethod

        return UnquantizedLinearMethod()

    def fused_decoder(self, model: nn.Module) -> FusedDecoder | None:
        """A native path for steps of single-token decodes through ``model`` (loaded), or None.

        Called once by the model runner. The default is None: every step runs the model's
        forward.
        """
        return None

    def torch_device(self, index: int = 0) -> torch.device:
        """The torch device for the ``index``-th device of this platform."""
        return torch.device(self.device_type, index)

    def describe(self) -> dict[str, str]:
        """Facts for ``fw collect-env`` and start-up logs (device name, driver, ...)."""
        return {}
