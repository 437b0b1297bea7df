"""The config dataclasses: defaults as vLLM's, coercion, and validation messages."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from fw.core.config import (
    SERVER_CONFIG_CLASSES,
    CacheConfig,
    ConfigError,
    EngineConfig,
    FrontendConfig,
    LoRAConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    build_configs,
    option_names,
)


def test_defaults_follow_vllm() -> None:
    engine = EngineConfig()
    assert engine.cache.block_size == 16
    assert engine.cache.gpu_memory_utilization == 0.9
    assert engine.cache.enable_prefix_caching is True
    assert engine.cache.cpu_kv_cache_bytes == 4 * 2**30
    assert engine.scheduler.enable_chunked_prefill is True
    assert engine.scheduler.scheduling_policy == "fcfs"
    assert engine.model.dtype == "auto"
    assert engine.model.generation_config == "auto"
    assert engine.load.load_format == "auto"
    assert engine.device.device == "auto"
    frontend = FrontendConfig()
    assert (frontend.host, frontend.port) == (None, 8000)
    assert frontend.allowed_origins == ("*",)


def test_configs_are_frozen_and_hashable() -> None:
    config = ModelConfig(served_model_name=["a", "b"])
    assert config.served_model_name == ("a", "b")  # lists become tuples
    hash(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]


def test_field_names_are_unique_across_configs() -> None:
    # The CLI and fw.LLM(**kwargs) use one flat namespace.
    names = option_names(SERVER_CONFIG_CLASSES)
    assert "max_model_len" in names and "port" in names


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CacheConfig(gpu_memory_utilization=1.5), r"gpu_memory_utilization must be in \(0, 1\], got 1.5"),
        (lambda: CacheConfig(gpu_memory_utilization=0), r"gpu_memory_utilization must be in \(0, 1\], got 0"),
        (lambda: CacheConfig(block_size=24), "block_size must be a power of two"),
        (lambda: CacheConfig(num_gpu_blocks_override=0), "num_gpu_blocks_override must be at least 1"),
        (lambda: CacheConfig(kv_cache_dtype="int3"), "kv_cache_dtype must be one of auto, fp8"),
        (lambda: SchedulerConfig(max_num_seqs=0), "max_num_seqs must be at least 1, got 0"),
        (lambda: SchedulerConfig(scheduling_policy="lifo"), "scheduling_policy must be one of fcfs, priority"),
        (lambda: SchedulerConfig(max_num_queued_reqs=0), "max_num_queued_reqs must be at least 1, got 0"),
        (lambda: SchedulerConfig(max_num_queued_reqs=100),
         r"max_num_queued_reqs \(100\) must be at least max_num_seqs \(256\)"),
        (lambda: SchedulerConfig(max_num_queued_tokens=0), "max_num_queued_tokens must be at least 1, got 0"),
        (lambda: ParallelConfig(tensor_parallel_size=0), "tensor_parallel_size must be at least 1"),
        (lambda: ModelConfig(max_model_len=0), "max_model_len must be at least 1"),
        (lambda: ModelConfig(max_model_len="lots"), "max_model_len: 'lots' is not an integer"),
        (lambda: ModelConfig(dtype="int8"), "dtype must be one of auto, half"),
        (lambda: ModelConfig(trust_remote_code="yes"), "trust_remote_code must be true or false"),
        (lambda: ModelConfig(seed=-1), "seed must be 0 or more"),
        (lambda: ModelConfig(served_model_name=[""]), "served_model_name must not contain empty names"),
        (lambda: FrontendConfig(port=70000), "port must be between 0 and 65535"),
        (lambda: FrontendConfig(ssl_keyfile="k.pem"), "ssl_keyfile and ssl_certfile must be given together"),
        (lambda: FrontendConfig(enable_auto_tool_choice=True), "enable_auto_tool_choice needs a tool_call_parser"),
        (lambda: LoRAConfig(lora_modules=["a=/x"]), "lora_modules needs enable_lora"),
        (lambda: LoRAConfig(enable_lora=True, lora_modules=["no-path"]), "must look like name=path"),
    ],
)
def test_validation_messages(make, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert isinstance(info.value, ConfigError)


def test_cross_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens \(8\) must be at least max_num_seqs \(256\)"):
        EngineConfig.from_values({"max_num_batched_tokens": 8})
    with pytest.raises(ConfigError, match="smaller than max_model_len"):
        EngineConfig.from_values(
            {"max_num_batched_tokens": 1024, "max_model_len": 4096, "enable_chunked_prefill": False}
        )
    # With chunked prefill, long prompts are split, so the same numbers are fine.
    EngineConfig.from_values({"max_num_batched_tokens": 1024, "max_model_len": 4096})


def test_from_values_coerces_like_the_cli() -> None:
    engine = EngineConfig.from_values(
        {"max-model-len": "32K", "kv_cache_memory_bytes": "8G", "gpu_memory_utilization": "0.5", "seed": 7}
    )
    assert engine.model.max_model_len == 32768
    assert engine.cache.kv_cache_memory_bytes == 8 * 2**30
    assert engine.cache.gpu_memory_utilization == 0.5
    assert engine.model.seed == 7


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown option 'max_model_length' \\(did you mean 'max_model_len'\\?\\)"):
        EngineConfig.from_values({"max_model_length": 4})
    with pytest.raises(ConfigError, match="unknown option 'port'"):
        EngineConfig.from_values({"port": 1})  # a server option, not an engine one


def test_build_configs_splits_one_flat_mapping() -> None:
    configs = build_configs({"port": 9000, "block_size": 32, "model": "m"}, SERVER_CONFIG_CLASSES)
    assert configs[FrontendConfig].port == 9000
    assert configs[CacheConfig].block_size == 32
    assert configs[ModelConfig].model == "m"


def test_lora_adapters_parse() -> None:
    lora = LoRAConfig(enable_lora=True, lora_modules=["sql=/a", '{"name": "chat", "path": "/b"}'])
    assert lora.adapters() == {"sql": "/a", "chat": "/b"}


def test_importing_configs_does_not_import_torch() -> None:
    code = "import sys, fw.core.config, fw.core.config.args; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_queue_limits_are_bounded_by_default_and_settable() -> None:
    default = EngineConfig.from_values({}).scheduler
    assert (default.max_num_queued_reqs, default.queued_seqs_limit, default.max_num_queued_tokens) == (None, 1024, None)
    scheduler = EngineConfig.from_values(
        {"max-num-seqs": 8, "max-num-queued-reqs": "2k", "max_num_queued_tokens": "1m"}).scheduler
    assert (scheduler.queued_seqs_limit, scheduler.max_num_queued_tokens) == (2000, 1_000_000)
    assert EngineConfig.from_values({"max_num_seqs": 8}).scheduler.queued_seqs_limit == 32
