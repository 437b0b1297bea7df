"""LoRAConfig: serving LoRA adapters."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fw.core.config.base import ConfigBase, ConfigError, option, require_positive


@dataclass(frozen=True)
class LoRAConfig(ConfigBase):
    """LoRA adapters: whether they are enabled, how many and how large."""

    enable_lora: bool = option(False, help="Allow requests to use LoRA adapters.")
    max_loras: int = option(1, help="The most LoRA adapters one engine step may use.")
    max_lora_rank: int = option(16, help="The largest LoRA rank an adapter may have.")
    lora_modules: tuple[str, ...] | None = option(
        None,
        help="Adapters to serve, each as name=path or as JSON "
        '{"name": ..., "path": ..., "base_model_name": ...}; requests select one by name.',
    )

    def validate(self) -> None:
        require_positive("max_loras", self.max_loras)
        require_positive("max_lora_rank", self.max_lora_rank)
        if self.lora_modules and not self.enable_lora:
            raise ConfigError("lora_modules needs enable_lora (--enable-lora) to be on")
        for module in self.lora_modules or ():
            parse_lora_module(module)

    def adapters(self) -> dict[str, str]:
        """``{name: path}`` for every adapter of ``lora_modules``."""
        return dict(parse_lora_module(module) for module in self.lora_modules or ())


def parse_lora_module(text: str) -> tuple[str, str]:
    """``"name=path"`` or a JSON object with ``name`` and ``path`` -> ``(name, path)``."""
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"lora_modules entry {text!r} is not valid JSON: {exc}") from None
        if not isinstance(spec, dict) or not spec.get("name") or not spec.get("path"):
            raise ConfigError(f"lora_modules entry {text!r} needs a 'name' and a 'path'")
        return str(spec["name"]), str(spec["path"])
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"lora_modules entry {text!r} must look like name=path")
    return name.strip(), path.strip()
