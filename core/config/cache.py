"""CacheConfig: the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fw.core.config.base import ConfigBase, ConfigError, option, require_positive
from fw.core.config.human import format_bytes

#: KV-cache size on platforms without --gpu-memory-utilization (the CPU), as vLLM's 4 GiB.
DEFAULT_CPU_KV_CACHE_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class CacheConfig(ConfigBase):
    """The paged KV cache: block size, how much memory it takes, prefix caching."""

    block_size: int = option(16, help="Tokens per KV-cache block (a power of two).")
    gpu_memory_utilization: float = option(
        0.9,
        help="Fraction of the GPU's memory fw may use for the weights, activations and KV "
        "cache together, from 0 to 1 (0.5 is half). Each instance counts only its own usage.",
    )
    kv_cache_memory_bytes: int | None = option(
        None,
        unit="bytes",
        short="--kv-cache-memory",
        help="Size of the KV cache per device in bytes (accepts 4GiB, 8G, 512MB...). When set it "
        "replaces the --gpu-memory-utilization estimate. On the CPU it defaults to "
        f"{format_bytes(DEFAULT_CPU_KV_CACHE_BYTES)}.",
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = option(
        "auto",
        help="Data type of the KV cache. 'auto' uses the model's dtype; 'fp8' (fp8_e4m3) and fp8_e5m2 store "
        "keys and values in 8 bits with a scale per layer (the checkpoint's k_scale/v_scale, else 1.0), which "
        "doubles the tokens the cache holds against bfloat16.",
    )
    calculate_kv_scales: bool = option(
        False,
        help="With an fp8 KV cache, compute each layer's key and value scales from the first batch (largest "
        "magnitude / the fp8 format's largest value) instead of the checkpoint's, then keep them fixed.",
    )
    enable_prefix_caching: bool = option(
        True, help="Reuse the KV cache of prompts that share a prefix with earlier requests."
    )
    num_gpu_blocks_override: int | None = option(
        None, help="Use this many KV-cache blocks instead of the number measured from free memory (for testing)."
    )

    def validate(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two (8, 16, 32...), got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        require_positive("kv_cache_memory_bytes", self.kv_cache_memory_bytes)
        require_positive("num_gpu_blocks_override", self.num_gpu_blocks_override)
        if self.calculate_kv_scales and self.kv_cache_dtype == "auto":
            raise ConfigError("--calculate-kv-scales computes the scales of an fp8 KV cache; "
                              "give --kv-cache-dtype fp8 (or fp8_e5m2) with it")

    @property
    def cpu_kv_cache_bytes(self) -> int:
        """The KV-cache size on the CPU: the one given, else the default."""
        return self.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES
