"""The CUDA platform: NVIDIA GPUs; attention in Triton kernels."""

from __future__ import annotations

import torch

from fw.core.hookspecs import hookimpl
from fw.core.interfaces import MemoryInfo, Platform


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

    def attention_backend(self) -> str:
        return "fw.core.attention.triton_backend:TritonAttentionBackend"

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
