"""Configs: one frozen dataclass per concern, and the CLI generated from them.

Importing this package loads no plugins and does not import torch.
"""

from fw.core.config.base import ConfigBase, ConfigError, option
from fw.core.config.cache import CacheConfig
from fw.core.config.device import DeviceConfig
from fw.core.config.engine import (
    ENGINE_CONFIG_CLASSES,
    SERVER_CONFIG_CLASSES,
    EngineConfig,
    build_configs,
    option_names,
)
from fw.core.config.frontend import FrontendConfig
from fw.core.config.human import format_bytes, parse_bytes, parse_human_int
from fw.core.config.load import LoadConfig
from fw.core.config.lora import LoRAConfig
from fw.core.config.model import ModelConfig
from fw.core.config.observability import ObservabilityConfig
from fw.core.config.parallel import ParallelConfig
from fw.core.config.scheduler import SchedulerConfig

__all__ = [
    "CacheConfig",
    "ConfigBase",
    "ConfigError",
    "DeviceConfig",
    "ENGINE_CONFIG_CLASSES",
    "EngineConfig",
    "FrontendConfig",
    "LoRAConfig",
    "LoadConfig",
    "ModelConfig",
    "ObservabilityConfig",
    "ParallelConfig",
    "SERVER_CONFIG_CLASSES",
    "SchedulerConfig",
    "build_configs",
    "format_bytes",
    "option",
    "option_names",
    "parse_bytes",
    "parse_human_int",
]
