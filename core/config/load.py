"""LoadConfig: how the weights are read."""

from __future__ import annotations

from dataclasses import dataclass

from fw.core.config.base import ConfigBase, ConfigError, option


@dataclass(frozen=True)
class LoadConfig(ConfigBase):
    """How to find and read the checkpoint's weight files."""

    load_format: str = option(
        "auto",
        plugin_kind="weight_loaders",
        extra_choices=("auto",),
        help="Format of the weights. 'auto' picks the first format whose files are present "
        "(safetensors before PyTorch .bin; a .gguf file is GGUF); 'dummy' makes random "
        "weights of the right shapes, for benchmarks.",
    )
    download_dir: str | None = option(
        None, help="Directory to download models into and look for them in. Defaults to the Hugging Face cache."
    )

    def validate(self) -> None:
        if not self.load_format.strip():
            raise ConfigError("load_format must not be empty")
