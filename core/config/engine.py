"""EngineConfig: every config the engine needs, built from one flat mapping of option values.

The CLI (``fw serve --max-model-len 4k``) and the Python API (``fw.LLM(model,
max_model_len="4k")``) both hand a flat ``{field name: value}`` mapping to
:func:`build_configs` / :meth:`EngineConfig.from_values`, so both paths build, coerce and
validate the configs the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

from fw.core.config.base import ConfigBase, ConfigError, field_specs
from fw.core.config.cache import CacheConfig
from fw.core.config.device import DeviceConfig
from fw.core.config.frontend import FrontendConfig
from fw.core.config.load import LoadConfig
from fw.core.config.lora import LoRAConfig
from fw.core.config.model import ModelConfig
from fw.core.config.observability import ObservabilityConfig
from fw.core.config.parallel import ParallelConfig
from fw.core.config.scheduler import SchedulerConfig

C = TypeVar("C", bound=ConfigBase)


@dataclass(frozen=True)
class EngineConfig:
    """The engine's configs, one per concern, checked against each other."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    device: DeviceConfig = dataclasses.field(default_factory=DeviceConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    observability: ObservabilityConfig = dataclasses.field(default_factory=ObservabilityConfig)

    def __post_init__(self) -> None:
        self._refuse_unavailable()
        model, scheduler = self.model, self.scheduler
        batched = scheduler.max_num_batched_tokens
        if batched is not None and batched < scheduler.max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens ({batched}) must be at least max_num_seqs ({scheduler.max_num_seqs})"
            )
        if (
            batched is not None
            and model.max_model_len is not None
            and not scheduler.enable_chunked_prefill
            and batched < model.max_model_len
        ):
            raise ConfigError(
                f"max_num_batched_tokens ({batched}) is smaller than max_model_len ({model.max_model_len}), "
                "so long prompts could never run; raise it, lower max_model_len, or enable chunked prefill"
            )

    def _refuse_unavailable(self) -> None:
        """Options a vLLM command line may carry that fw cannot honour yet: refused, never ignored.

        Each feature's issue removes its line here when it lands.
        """
        parallel, lora = self.parallel, self.lora
        for flag, size, what in (("--tensor-parallel-size", parallel.tensor_parallel_size, "tensor parallelism"),
                                 ("--pipeline-parallel-size", parallel.pipeline_parallel_size, "pipeline parallelism"),
                                 ("--data-parallel-size", parallel.data_parallel_size, "data parallelism")):
            if size > 1:
                raise ConfigError(f"{what} is not available yet in fw ({flag} {size}); fw runs a model on one device")
        defaults = LoRAConfig()
        lora_flags = [flag for flag, is_set in (
            ("--enable-lora", lora.enable_lora), ("--lora-modules", lora.lora_modules is not None),
            ("--max-loras", lora.max_loras != defaults.max_loras),
            ("--max-lora-rank", lora.max_lora_rank != defaults.max_lora_rank)) if is_set]
        if lora_flags:
            raise ConfigError(f"LoRA adapters are not available yet in fw ({', '.join(lora_flags)})")
        if self.model.tokenizer_mode != "auto":
            raise ConfigError(f"--tokenizer-mode {self.model.tokenizer_mode} is not available yet in fw; "
                              "it uses the model's fast tokenizer (auto)")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> EngineConfig:
        """Build from a flat ``{field name: value}`` mapping; unset fields keep their defaults."""
        configs = build_configs(values, ENGINE_CONFIG_CLASSES)
        return cls(**{name: configs[config_cls] for name, config_cls in _ENGINE_FIELDS.items()})


#: EngineConfig attribute -> config class.
_ENGINE_FIELDS: dict[str, type[ConfigBase]] = {
    f.name: f.default_factory for f in dataclasses.fields(EngineConfig)  # type: ignore[misc]
}
ENGINE_CONFIG_CLASSES: tuple[type[ConfigBase], ...] = tuple(_ENGINE_FIELDS.values())
#: What ``fw serve`` takes: the engine's options and the HTTP server's.
SERVER_CONFIG_CLASSES: tuple[type[ConfigBase], ...] = ENGINE_CONFIG_CLASSES + (FrontendConfig,)


def option_names(classes: Sequence[type[ConfigBase]]) -> dict[str, type[ConfigBase]]:
    """Field name -> the class that declares it. Names are unique across all configs."""
    owners: dict[str, type[ConfigBase]] = {}
    for config_cls in classes:
        for spec in field_specs(config_cls):
            if spec.name in owners:
                raise TypeError(f"{spec.name} is declared by both {owners[spec.name].__name__} and {config_cls.__name__}")
            owners[spec.name] = config_cls
    return owners


def build_configs(values: Mapping[str, Any], classes: Sequence[type[C]]) -> dict[type[C], C]:
    """Split a flat mapping of option values among ``classes`` and build each config.

    Keys may use ``-`` or ``_``. An unknown key is an error that names it.
    """
    owners = option_names(classes)
    per_class: dict[type[C], dict[str, Any]] = {config_cls: {} for config_cls in classes}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in owners:
            raise ConfigError(f"unknown option '{key}'{_suggestion(name, owners)}")
        per_class[owners[name]][name] = value  # type: ignore[index]
    return {config_cls: config_cls(**kwargs) for config_cls, kwargs in per_class.items()}


def _suggestion(name: str, known: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
