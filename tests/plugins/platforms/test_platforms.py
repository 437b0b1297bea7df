"""The cpu and cuda platforms, and how --device picks one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fw.core.errors import PluginError
from fw.core.interfaces import AttentionBackend
from fw.core.model_files import select_platform
from fw.core.plugins import load_plugins
from fw.plugins.platforms import cpu
from fw.plugins.platforms.cpu import CpuPlatform
from fw.plugins.platforms.cuda import CudaPlatform


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(env={})


def test_cpu_is_always_available_and_describes_itself():
    platform = CpuPlatform()
    assert CpuPlatform.is_available()
    assert platform.torch_device() == torch.device("cpu", 0)
    memory = platform.memory_info()
    assert 0 < memory.free_bytes <= memory.total_bytes
    assert issubclass(platform.attention_backend(), AttentionBackend)
    assert set(platform.supported_dtypes()) == {torch.float32, torch.bfloat16, torch.float16}


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_cpu_auto_dtype_uses_bf16_only_where_it_is_fast(monkeypatch, fast_bf16):
    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda: fast_bf16)
    platform = CpuPlatform()
    assert platform.default_dtype(torch.float32) == torch.float32
    expected = torch.bfloat16 if fast_bf16 else torch.float32
    assert platform.default_dtype(torch.bfloat16) == expected
    assert platform.default_dtype(None) == expected
    assert platform.supported_dtypes()[0] == expected


def test_auto_device_picks_the_best_available_platform(plugins):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_platform(plugins, "auto").name == expected
    assert select_platform(plugins, "cpu").name == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_says_so(plugins):
    with pytest.raises(PluginError, match="no cuda device is available"):
        select_platform(plugins, "cuda")


def test_unknown_device_lists_the_platforms(plugins):
    with pytest.raises(PluginError, match=r"unknown platform 'tpu'; available: cpu, cuda"):
        select_platform(plugins, "tpu")


@pytest.mark.cuda
def test_cuda_platform_on_a_gpu():
    platform = CudaPlatform()
    assert platform.default_dtype(torch.bfloat16) == torch.bfloat16
    assert platform.default_dtype(torch.float16) == torch.float16
    memory = platform.memory_info()
    assert 0 < memory.free_bytes <= memory.total_bytes
    assert "gpu" in platform.describe()



def test_the_engine_profiles_and_budgets_through_its_platform(tiny_checkpoint, monkeypatch):
    """What a GPU platform does at start-up, on the CPU: the engine runs the platform's profile
    (a forward over a cache just big enough), then sizes the cache from the platform's budget."""
    from fw import LLM
    from fw.core.runner.model_runner import ModelRunner

    seen = {}
    real_dummy_run = ModelRunner.dummy_run

    def dummy_run(self, num_tokens, block_manager):
        seen["profiled_tokens"], seen["profile_blocks"] = num_tokens, self.kv_caches[0].shape[1]
        real_dummy_run(self, num_tokens, block_manager)

    def profile(self, run_forward):
        run_forward()
        return 12345

    def budget(self, cache, profile_peak_bytes):
        seen["peak"] = profile_peak_bytes
        return 100 * 8192  # 100 blocks of this checkpoint's 8 KiB

    monkeypatch.setattr(ModelRunner, "dummy_run", dummy_run)
    monkeypatch.setattr(CpuPlatform, "profile_peak_memory", profile)
    monkeypatch.setattr(CpuPlatform, "kv_cache_budget", budget)
    llm = LLM(str(tiny_checkpoint("llama")), max_num_batched_tokens=64, max_num_seqs=4)
    assert seen == {"profiled_tokens": 64, "profile_blocks": 4, "peak": 12345}
    assert llm.engine.block_manager.num_blocks == 100 and llm.engine.runner.kv_caches[0].shape[1] == 100


def test_listing_the_platforms_imports_no_kernel():
    # Platforms import their kernels inside the methods that return them.
    code = ("import sys; from fw.core.plugins import load_plugins; plugins = load_plugins(env={}); "
            "[r.obj.is_available() for r in plugins.platforms.registrations()]; "
            "print(sorted(m for m in sys.modules if m.startswith(('fw.kernels', 'triton'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
