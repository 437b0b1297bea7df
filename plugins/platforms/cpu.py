"""The CPU platform: always available; fw's C kernels and oneDNN pre-packed bf16 weights
where the CPU can run them, plain torch elsewhere."""

from __future__ import annotations

import functools
import os
import platform as _platform
from typing import TYPE_CHECKING

import psutil
import torch

from fw.core.hookspecs import hookimpl
from fw.core.interfaces import MemoryInfo, Platform

if TYPE_CHECKING:
    from torch import nn

    from fw.core.config.cache import CacheConfig
    from fw.core.interfaces import AttentionBackend, LinearMethod, PlatformOps
    from fw.core.interfaces.platform import FusedDecoder

#: What oneDNN's bfloat16 weight packing needs, any one of these sets of instructions: torch
#: refuses without ("mkldnn_reorder_linear_weight: bf16 path needs the cpu support
#: avx_ne_convert or avx512bw, avx512vl and avx512dq"), e.g. on AVX2-only AMD Zen 3.
ONEDNN_BF16_FLAGS = (frozenset({"avx_ne_convert"}), frozenset({"avx512bw", "avx512vl", "avx512dq"}))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (/proc/cpuinfo), read once; empty where there are none to read."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_has_fast_bf16() -> bool:
    """Whether the CPU has native bf16 dot products (AVX512-BF16 or AMX).

    Measured on the 2-core AMD EPYC dev machine (avx512_bf16, torch 2.13 CPU): a
    [256, 576] x [576, 1536] matmul takes 1.09 ms in bf16 against 2.36 ms in float32,
    and [8, 576] x [576, 1536] 85 us against 178 us. Without those instructions bf16
    is emulated and slower than float32, so float32 is the default there.
    """
    return not cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def can_pack_bf16_weights() -> bool:
    """Whether bf16 linear layers may compute on oneDNN pre-packed weights: torch has the
    oneDNN ops, the CPU the instructions, and ``FW_CPU_PACKED_WEIGHTS=0`` did not turn it off."""
    if os.environ.get("FW_CPU_PACKED_WEIGHTS", "1") == "0" or not torch.backends.mkldnn.is_available() \
            or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    return any(needed <= cpu_flags() for needed in ONEDNN_BF16_FLAGS)


class CpuPlatform(Platform):
    name = "cpu"
    device_type = "cpu"
    priority = 0

    @classmethod
    def is_available(cls) -> bool:
        return True

    def supported_dtypes(self) -> list[torch.dtype]:
        if cpu_has_fast_bf16():
            return [torch.bfloat16, torch.float32, torch.float16]
        return [torch.float32, torch.bfloat16, torch.float16]

    def default_dtype(self, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
        # A float32 checkpoint stays float32; half-precision (or quantized, dtype
        # unknown) checkpoints run in bf16 only where the CPU computes it natively.
        if checkpoint_dtype == torch.float32:
            return torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32

    def memory_info(self) -> MemoryInfo:
        memory = psutil.virtual_memory()
        return MemoryInfo(free_bytes=memory.available, total_bytes=memory.total)

    def attention_backend(self) -> type[AttentionBackend]:
        from fw.plugins.platforms.cpu_attention import CpuAttentionBackend

        return CpuAttentionBackend

    def kv_cache_dtypes(self) -> list[torch.dtype]:
        # The torch backend converts fp8 with torch; the C decode kernel reads it in place.
        from fw.core.attention.kv_quant import fp8_dtypes

        return list(fp8_dtypes())

    def kv_cache_budget(self, cache: CacheConfig, profile_peak_bytes: int | None) -> int:
        # Host memory is not profiled: the cache takes a fixed size (vLLM's 4 GiB by default).
        return cache.cpu_kv_cache_bytes

    def ops(self, dtype: torch.dtype) -> PlatformOps:
        """fw's C ops for float32 and bf16 once built. They are compiled for this CPU
        (-march=native) with portable fallbacks, so they need no particular instruction."""
        from fw.kernels import cpu_ops

        if dtype in cpu_ops.DTYPES and cpu_ops.load() is not None:
            from fw.plugins.platforms.cpu_layers import CpuOps

            return CpuOps()
        return super().ops(dtype)

    def fused_decoder(self, model: nn.Module) -> FusedDecoder | None:
        """Steps of single-token decodes in one C call, for the Llama family on native matmuls."""
        from fw.plugins.platforms.cpu_decode import fused_decoder

        return fused_decoder(model)

    def unquantized_linear_method(self, dtype: torch.dtype) -> LinearMethod:
        """oneDNN pre-packed weights for bf16 where the CPU can run them (``can_pack_bf16_weights``)."""
        if dtype == torch.bfloat16 and can_pack_bf16_weights():
            from fw.plugins.platforms.cpu_layers import CpuUnquantizedLinearMethod

            return CpuUnquantizedLinearMethod()
        return super().unquantized_linear_method(dtype)

    def describe(self) -> dict[str, str]:
        return {
            "processor": _platform.processor() or _platform.machine(),
            "cores": str(psutil.cpu_count(logical=True)),
            "torch threads": str(torch.get_num_threads()),
            "fast bf16": str(cpu_has_fast_bf16()),
        }


@hookimpl
def fw_register_platforms(registry) -> None:
    registry.register(CpuPlatform.name, CpuPlatform)
