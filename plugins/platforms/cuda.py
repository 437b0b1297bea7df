"""The CUDA platform: NVIDIA GPUs; attention in Triton kernels, the small ops in torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from fw.core.hookspecs import hookimpl
from fw.core.interfaces import MemoryInfo, Platform

if TYPE_CHECKING:
    from fw.core.config.cache import CacheConfig
    from fw.core.interfaces import AttentionBackend


class CudaPlatform(Platform):
    name = "cuda"
    device_type = "cuda"
    priority = 10

    @classmethod
    def is_available(cls) -> bool:
        # Asks the driver for a device count; creates no CUDA context.
        return torch.cuda.is_available()

    def _has_bf16(self) -> bool:
        major, _ = torch.cuda.get_device_capability()
        return major >= 8

    def supported_dtypes(self) -> list[torch.dtype]:
        if self._has_bf16():
            return [torch.bfloat16, torch.float16, torch.float32]
        return [torch.float16, torch.float32]

    def default_dtype(self, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
        # bf16 checkpoints stay bf16 (fp16 where the GPU lacks it); float32 and
        # quantized checkpoints compute in half precision, as vLLM does.
        if checkpoint_dtype == torch.float16:
            return torch.float16
        return torch.bfloat16 if self._has_bf16() else torch.float16

    def memory_info(self) -> MemoryInfo:
        free, total = torch.cuda.mem_get_info()
        return MemoryInfo(free_bytes=free, total_bytes=total)

    def attention_backend(self) -> type[AttentionBackend]:
        from fw.plugins.platforms.cuda_attention import TritonAttentionBackend

        return TritonAttentionBackend

    def kv_cache_dtypes(self) -> list[torch.dtype]:
        # The Triton kernels encode and decode fp8 with integer operations, not the hardware's
        # conversions (e4m3 has them from sm_89 only), so any GPU Triton runs on reads both formats.
        from fw.core.attention.kv_quant import fp8_dtypes

        return list(fp8_dtypes())

    def profile_peak_memory(self, run_forward: Callable[[], None]) -> int | None:
        torch.cuda.reset_peak_memory_stats()
        run_forward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        torch.cuda.empty_cache()  # give back what the forward's activations took
        return peak

    def kv_cache_budget(self, cache: CacheConfig, profile_peak_bytes: int | None) -> int:
        if cache.kv_cache_memory_bytes is not None:
            return cache.kv_cache_memory_bytes
        memory = self.memory_info()
        # Everything fw may use, minus what the weights and a full-batch forward took, minus
        # what others hold on the device (used memory that torch did not reserve).
        others = memory.total_bytes - memory.free_bytes - torch.cuda.memory_reserved()
        return int(memory.total_bytes * cache.gpu_memory_utilization) - (profile_peak_bytes or 0) - others

    def describe(self) -> dict[str, str]:
        if not self.is_available():
            return {}
        props = torch.cuda.get_device_properties(0)
        return {
            "gpu": f"{torch.cuda.device_count()} x {props.name}",
            "compute capability": f"{props.major}.{props.minor}",
            "gpu memory": f"{props.total_memory / 2**30:.1f} GiB",
            "cuda (torch)": str(torch.version.cuda),
        }


@hookimpl
def fw_register_platforms(registry) -> None:
    registry.register(CudaPlatform.name, CudaPlatform)
