"""The CPU platform chooses each fast path once, and only where the CPU can run it."""

from __future__ import annotations

import pytest
import torch

from fw import LLM, SamplingParams
from fw.core.config.cache import DEFAULT_CPU_KV_CACHE_BYTES, CacheConfig
from fw.core.layers.linear import LinearBase
from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod
from fw.kernels import cpu_ops
from fw.plugins.platforms import cpu
from fw.plugins.platforms.cpu import CpuPlatform
from fw.plugins.platforms.cpu_layers import CpuOps, CpuUnquantizedLinearMethod

#: An AMD EPYC of the Zen 3 kind: AVX2, no AVX-512 (the flags that mattered, of many).
ZEN3_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "sha_ni", "vaes", "vpclmulqdq"})


def test_the_flags_are_read_from_proc_cpuinfo():
    flags = cpu.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # a Linux x86 machine
        assert "sse2" in flags and all(" " not in flag for flag in flags)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("flags, packs", [
    (ZEN3_FLAGS, False),
    (ZEN3_FLAGS | {"avx512bw", "avx512vl"}, False),
    (ZEN3_FLAGS | {"avx512bw", "avx512vl", "avx512dq"}, True),
    (ZEN3_FLAGS | {"avx_ne_convert"}, True),
])
def test_bf16_weights_are_packed_only_where_the_cpu_has_the_instructions(monkeypatch, flags, packs):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    method = CpuPlatform().unquantized_linear_method(torch.bfloat16)
    assert isinstance(method, CpuUnquantizedLinearMethod) == packs
    assert type(CpuPlatform().unquantized_linear_method(torch.float32)) is UnquantizedLinearMethod
    monkeypatch.setenv("FW_CPU_PACKED_WEIGHTS", "0")
    assert type(CpuPlatform().unquantized_linear_method(torch.bfloat16)) is UnquantizedLinearMethod


def test_bf16_runs_unpacked_on_a_cpu_without_avx512(tiny_checkpoint, monkeypatch):
    """On AVX2-only CPUs oneDNN refuses to pack bf16 weights ("bf16 path needs the cpu support
    avx_ne_convert or avx512bw, avx512vl and avx512dq"); fw must run them unpacked."""
    path = str(tiny_checkpoint("qwen2"))
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    options = dict(dtype="bfloat16", kv_cache_memory_bytes=2**24)
    monkeypatch.setenv("FW_CPU_PACKED_WEIGHTS", "0")
    expected = [o.outputs[0].token_ids for o in LLM(path, **options).generate(["to be or not"], params, use_tqdm=False)]
    monkeypatch.delenv("FW_CPU_PACKED_WEIGHTS")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ZEN3_FLAGS)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse_like_zen3, raising=False)
    llm = LLM(path, **options)
    linears = [m for m in llm.engine.loaded.model.modules() if isinstance(m, LinearBase)]
    assert linears and all(type(m.linear_method) is UnquantizedLinearMethod for m in linears)
    assert not any(hasattr(m, "packed_weight") for m in linears)
    assert all(m.weight.dtype == torch.bfloat16 and m.weight.numel() > 0 for m in linears)
    assert [o.outputs[0].token_ids for o in llm.generate(["to be or not"], params, use_tqdm=False)] == expected


def refuse_like_zen3(*args, **kwargs):
    raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw, "
                       "avx512vl and avx512dq")


@pytest.mark.skipif(cpu_ops.load() is None, reason="no C compiler to build the CPU ops")
def test_the_c_ops_serve_float32_and_bf16_and_torch_the_rest():
    platform = CpuPlatform()
    assert type(platform.ops(torch.float32)) is CpuOps and type(platform.ops(torch.bfloat16)) is CpuOps
    assert type(platform.ops(torch.float16)) is TorchOps


def test_the_kv_cache_takes_the_configured_host_memory_without_profiling():
    platform = CpuPlatform()
    assert platform.kv_cache_budget(CacheConfig(), None) == DEFAULT_CPU_KV_CACHE_BYTES
    assert platform.kv_cache_budget(CacheConfig(kv_cache_memory_bytes=2**20), None) == 2**20

    def forward():
        raise AssertionError("the CPU budget does not depend on a profile run")

    assert platform.profile_peak_memory(forward) is None
