"""DeviceConfig: which platform runs the model."""

from __future__ import annotations

from dataclasses import dataclass

from fw.core.config.base import ConfigBase, ConfigError, option


@dataclass(frozen=True)
class DeviceConfig(ConfigBase):
    """The device kind (platform) fw runs on."""

    device: str = option(
        "auto",
        plugin_kind="platforms",
        extra_choices=("auto",),
        help="The platform to run on. 'auto' picks the best available one (a GPU when there is one).",
    )

    def validate(self) -> None:
        if not self.device.strip():
            raise ConfigError("device must not be empty")
