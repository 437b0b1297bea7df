"""From a model reference to a config, a tokenizer and weights, through the registries.

The concrete sources and loaders are plugins; this module only asks the registries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fw.core.errors import ModelLoadError, ModelNotFoundError, PluginError
from fw.core.interfaces import CausalLM, Platform, ResolvedModel, WeightLoader

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from fw.core.plugins import Plugins


def resolve_model(
    plugins: Plugins, model: str | None, *, revision: str | None = None, download_dir: str | None = None
) -> ResolvedModel:
    """Ask the model sources, highest priority first; the first that matches resolves."""
    sources = sorted(plugins.model_sources.registrations(), key=lambda r: -r.obj.priority)
    for registration in sources:
        source = registration.obj()
        if source.matches(model):
            return source.resolve(model, revision=revision, download_dir=download_dir)
    names = ", ".join(r.name for r in sources) or "none"
    raise ModelNotFoundError(f"no model source can resolve {model!r} (sources: {names})")


def select_weight_loader(plugins: Plugins, load_format: str, model_path: Path) -> WeightLoader:
    """The loader named by ``load_format``, or for ``auto`` the first that can load the files."""
    if load_format != "auto":
        try:
            return plugins.weight_loaders.get(load_format)()
        except PluginError as exc:
            raise PluginError(f"{exc} (given as --load-format)") from None
    auto = [r for r in plugins.weight_loaders.registrations() if r.obj.auto_priority is not None]
    for registration in sorted(auto, key=lambda r: -r.obj.auto_priority):
        loader = registration.obj()
        if loader.can_load(model_path):
            return loader
    raise ModelLoadError(
        f"no weight files found in {model_path} (looked for the formats: {', '.join(r.name for r in auto)})"
    )


def select_platform(plugins: Plugins, device: str) -> Platform:
    """The platform named by ``device``, or for ``auto`` the available one with the highest priority."""
    if device != "auto":
        platform_cls = plugins.platforms.get(device)
        if not platform_cls.is_available():
            raise PluginError(f"--device {device} was asked for, but no {device} device is available on this machine")
        return platform_cls()
    available = [r.obj for r in plugins.platforms.registrations() if r.obj.is_available()]
    if not available:
        raise PluginError("no platform is available (is the built-in 'cpu' plugin blocked?)")
    return max(available, key=lambda cls: cls.priority)()


def select_architecture(plugins: Plugins, hf_config: PretrainedConfig) -> type[CausalLM]:
    """The registered model class for the config's ``architectures``."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    for name in architectures:
        if name in plugins.model_architectures:
            return plugins.model_architectures.get(name)
    supported = ", ".join(sorted(plugins.model_architectures.names())) or "none registered"
    raise ModelLoadError(
        f"unsupported model architecture {', '.join(architectures) or '(config.json names none)'}; "
        f"supported: {supported}"
    )


def load_hf_config(model_path: Path, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """Read ``config.json`` from a model directory with transformers."""
    from transformers import AutoConfig

    config_file = model_path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_path} has no config.json")
    try:
        json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from None
    try:
        return AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        # transformers raises ValueError for unknown model types and for remote code
        # that was not trusted; its message says which.
        raise ModelLoadError(f"cannot read {config_file}: {exc}".splitlines()[0]) from None


def load_tokenizer(model_path: Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer from a model directory with transformers."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {model_path}: {exc}".splitlines()[0]) from None
