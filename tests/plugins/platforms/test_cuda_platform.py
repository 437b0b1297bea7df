"""The CUDA platform's memory accounting, with torch.cuda faked (and for real on a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fw.core.config.cache import CacheConfig
from fw.plugins.platforms import cuda
from fw.plugins.platforms.cuda import CudaPlatform

GiB = 2**30


@pytest.fixture
def fake_cuda(monkeypatch):
    """A 80 GiB device with 60 GiB free, 12 GiB of it reserved by torch; a forward peaking at 10 GiB."""
    calls: list[str] = []
    fake = SimpleNamespace(
        mem_get_info=lambda: (60 * GiB, 80 * GiB),
        memory_reserved=lambda: 12 * GiB,
        reset_peak_memory_stats=lambda: calls.append("reset"),
        synchronize=lambda: calls.append("synchronize"),
        max_memory_allocated=lambda: calls.append("peak") or 10 * GiB,
        empty_cache=lambda: calls.append("empty_cache"),
    )
    monkeypatch.setattr(cuda.torch, "cuda", fake)
    return calls


def test_profile_measures_the_peak_of_the_forward(fake_cuda):
    peak = CudaPlatform().profile_peak_memory(lambda: fake_cuda.append("forward"))
    assert peak == 10 * GiB
    assert fake_cuda == ["reset", "forward", "synchronize", "peak", "empty_cache"]


def test_kv_budget_is_what_the_utilization_leaves_after_the_profile_and_other_processes(fake_cuda):
    platform = CudaPlatform()
    # 0.9 * 80 GiB - the 10 GiB peak - the 8 GiB others hold (80 - 60 used, 12 of it ours).
    assert platform.kv_cache_budget(CacheConfig(gpu_memory_utilization=0.9), 10 * GiB) == int(72 * GiB) - 18 * GiB
    assert platform.kv_cache_budget(CacheConfig(kv_cache_memory_bytes=GiB), 10 * GiB) == GiB


@pytest.mark.cuda
def test_profile_on_a_gpu():
    peak = CudaPlatform().profile_peak_memory(lambda: torch.ones(2**20, device="cuda").sum().item())
    assert peak >= 4 * 2**20
