"""``fw serve``: checks the model for serving for real, then says the server is not available yet.

Everything the server will need is resolved and read now: the model's files, the
platform, the weight loader, the config, the tokenizer and every weight (so a bad file
fails with its clear error here rather than later).
"""

from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from fw.core.config import SERVER_CONFIG_CLASSES, ConfigError, EngineConfig, FrontendConfig, option_names
from fw.core.entrypoints.commands import config_values, not_available
from fw.core.errors import FwError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from fw.core.interfaces import Platform
    from fw.core.plugins import Plugins

#: config.json keys that give a model's context length, as vLLM reads them.
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass(frozen=True)
class ModelReport:
    """What ``fw serve`` found out about the model."""

    served_model_names: tuple[str, ...]
    path: Path
    source: str
    platform: str
    load_format: str
    architectures: tuple[str, ...]
    #: The registered class that runs the model.
    implementation: str
    checkpoint_dtype: str | None
    dtype: str
    dtype_chosen_by: str
    num_parameters: int
    num_tensors: int
    max_model_len: int
    quantization: str | None
    tokenizer: str
    load_seconds: float

    def format(self) -> str:
        rows = [
            ("served model name", ", ".join(self.served_model_names)),
            ("model path", str(self.path)),
            ("source", self.source),
            ("platform", self.platform),
            ("load format", self.load_format),
            ("architecture", f"{', '.join(self.architectures)} (implemented by {self.implementation})"),
            ("checkpoint dtype", self.checkpoint_dtype or "unknown"),
            ("dtype", f"{self.dtype} ({self.dtype_chosen_by})"),
            ("parameters", f"{self.num_parameters:,} in {self.num_tensors} tensors (read in {self.load_seconds:.1f} s)"),
            ("max model len", str(self.max_model_len)),
            ("quantization", self.quantization or "none"),
            ("tokenizer", self.tokenizer),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows) + "\n"


def derived_max_model_len(hf_config: PretrainedConfig) -> int | None:
    """The context length the model's config declares, if any."""
    # Multimodal configs keep the language model's settings in text_config.
    text_config = getattr(hf_config, "text_config", None) or hf_config
    for key in CONTEXT_LENGTH_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def choose_max_model_len(requested: int | None, hf_config: PretrainedConfig) -> int:
    derived = derived_max_model_len(hf_config)
    if requested is None:
        if derived is None:
            raise ConfigError("the model's config.json does not state its context length; give --max-model-len")
        return derived
    if derived is not None and requested > derived:
        raise ConfigError(
            f"max_model_len {requested} is larger than the model's context length {derived} "
            "(from its config.json)"
        )
    return requested


def checkpoint_quantization(hf_config: PretrainedConfig) -> str | None:
    quant_config = getattr(hf_config, "quantization_config", None)
    if isinstance(quant_config, dict):
        return quant_config.get("quant_method")
    return getattr(quant_config, "quant_method", None)


def choose_quantization(requested: str | None, hf_config: PretrainedConfig, plugins: Plugins) -> str | None:
    """The quantization method to use; it must be one a plugin provides."""
    in_checkpoint = checkpoint_quantization(hf_config)
    if requested and in_checkpoint and str(in_checkpoint) != requested:
        raise ConfigError(
            f"--quantization {requested} was given, but the checkpoint is quantized with {in_checkpoint}"
        )
    method = requested or (str(in_checkpoint) if in_checkpoint else None)
    if method is not None:
        plugins.quantization_methods.get(method)  # raises, listing the available methods
    return method


def count_weights(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[int, int, torch.dtype | None]:
    """(parameters, tensors, most common floating dtype by parameter count) of a weight iterator."""
    num_parameters = num_tensors = 0
    per_dtype: collections.Counter = collections.Counter()
    for _, tensor in tensors:
        num_parameters += tensor.numel()
        num_tensors += 1
        if tensor.is_floating_point():
            per_dtype[tensor.dtype] += tensor.numel()
    checkpoint_dtype = per_dtype.most_common(1)[0][0] if per_dtype else None
    return num_parameters, num_tensors, checkpoint_dtype


def choose_dtype(requested: str | None, checkpoint_dtype: torch.dtype | None, platform: Platform) -> tuple[torch.dtype, str]:
    import torch

    if requested is None:
        return platform.default_dtype(checkpoint_dtype), f"auto: the {platform.name} platform's choice"
    dtype = getattr(torch, requested)
    supported = platform.supported_dtypes()
    if dtype not in supported:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported)
        raise ConfigError(f"dtype {requested} is not supported on the {platform.name} platform (supported: {names})")
    return dtype, "given by --dtype"


def check_frontend_files(frontend: FrontendConfig, engine: EngineConfig) -> None:
    """Files named by options must exist now, not when the first request needs them."""
    for name in ("ssl_keyfile", "ssl_certfile"):
        path = getattr(frontend, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{name} {path} is not a file")
    generation_config = engine.model.generation_config
    if generation_config not in ("auto", "vllm") and not Path(generation_config).is_dir():
        raise ConfigError(f"generation_config must be 'auto', 'vllm' or a directory; {generation_config} is none of these")


def inspect_model(engine: EngineConfig, plugins: Plugins) -> ModelReport:
    """Resolve and read the model exactly as serving would, and report what was found."""
    from fw.core.model_files import (
        load_tokenizer,
        resolve_model,
        select_architecture,
        select_platform,
        select_weight_loader,
    )

    model, load = engine.model, engine.load
    resolved = resolve_model(plugins, model.model, revision=model.revision, download_dir=load.download_dir)
    platform = select_platform(plugins, engine.device.device)
    loader = select_weight_loader(plugins, load.load_format, resolved.path)
    hf_config = loader.load_hf_config(resolved.path, trust_remote_code=model.trust_remote_code)
    if model.tokenizer is not None:
        tokenizer_files = resolve_model(
            plugins, model.tokenizer, revision=model.tokenizer_revision, download_dir=load.download_dir
        )
        tokenizer = load_tokenizer(tokenizer_files.path, trust_remote_code=model.trust_remote_code)
    else:
        tokenizer = loader.load_tokenizer(resolved.path, trust_remote_code=model.trust_remote_code)
    model_cls = select_architecture(plugins, hf_config)
    quantization = choose_quantization(model.quantization, hf_config, plugins)
    max_model_len = choose_max_model_len(model.max_model_len, hf_config)

    started = time.perf_counter()
    num_parameters, num_tensors, checkpoint_dtype = count_weights(loader.iter_weights(resolved.path, hf_config))
    load_seconds = time.perf_counter() - started
    if num_tensors == 0:
        raise FwError(f"{resolved.path} holds no weights")
    dtype, chosen_by = choose_dtype(model.torch_dtype_name, checkpoint_dtype, platform)

    return ModelReport(
        served_model_names=model.served_model_name or (resolved.served_name,),
        path=resolved.path,
        source=resolved.source,
        platform=platform.name,
        load_format=loader.name,
        architectures=tuple(getattr(hf_config, "architectures", None) or ()),
        implementation=f"{model_cls.__module__}.{model_cls.__qualname__}",
        checkpoint_dtype=str(checkpoint_dtype).removeprefix("torch.") if checkpoint_dtype else None,
        dtype=str(dtype).removeprefix("torch."),
        dtype_chosen_by=chosen_by,
        num_parameters=num_parameters,
        num_tensors=num_tensors,
        max_model_len=max_model_len,
        quantization=quantization,
        tokenizer=f"{type(tokenizer).__name__}, {len(tokenizer)} tokens",
        load_seconds=load_seconds,
    )


def run_serve(args: argparse.Namespace, plugins: Plugins) -> int:
    plugins.check()
    values = config_values(args, SERVER_CONFIG_CLASSES)
    frontend_names = option_names([FrontendConfig])
    frontend = FrontendConfig(**{name: value for name, value in values.items() if name in frontend_names})
    engine = EngineConfig.from_values({name: value for name, value in values.items() if name not in frontend_names})
    check_frontend_files(frontend, engine)
    report = inspect_model(engine, plugins)
    print(f"fw serve: checked the model; this is what the server would serve:\n{report.format()}", end="")
    not_available("the OpenAI-compatible server")
