"""``fw serve``: starts the engine for real, then says the HTTP server is not available yet.

Everything serving needs is built now: the model's files are resolved, the weights loaded
into the model, the KV cache sized and allocated. A bad file or option fails here with
its one-line error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fw.core.config import SERVER_CONFIG_CLASSES, ConfigError, EngineConfig, FrontendConfig, option_names
from fw.core.entrypoints.commands import config_values, not_available

if TYPE_CHECKING:
    from fw.core.engine.llm_engine import LLMEngine
    from fw.core.plugins import Plugins


def describe_engine(engine: LLMEngine, served_names: tuple[str, ...]) -> str:
    """The start-up summary: what is served, from where, on what, and how big the cache is."""
    from fw.core.engine.loading import checkpoint_dtype

    loaded = engine.loaded
    model_cls = type(loaded.model)
    num_params = sum(p.numel() for p in loaded.model.parameters())
    num_tensors = sum(1 for _ in loaded.model.parameters())
    stored = checkpoint_dtype(loaded.hf_config)
    chosen = "given by --dtype" if engine.config.model.dtype != "auto" else f"auto: the {loaded.platform.name} platform's choice"
    bm = engine.block_manager
    rows = [
        ("served model name", ", ".join(served_names)),
        ("model path", str(loaded.resolved.path)),
        ("source", loaded.resolved.source),
        ("platform", loaded.platform.name),
        ("load format", loaded.load_format),
        ("architecture", f"{', '.join(loaded.hf_config.architectures or ())} "
                         f"(implemented by {model_cls.__module__}.{model_cls.__qualname__})"),
        ("checkpoint dtype", str(stored).removeprefix("torch.") if stored else "unknown"),
        ("dtype", f"{str(loaded.dtype).removeprefix('torch.')} ({chosen})"),
        ("parameters", f"{num_params:,} in {num_tensors} tensors (loaded in {loaded.load_seconds:.1f} s)"),
        ("max model len", str(engine.max_model_len)),
        ("kv cache", f"{bm.num_blocks} blocks of {bm.block_size} tokens"),
        ("quantization", loaded.quantization or "none"),
        ("tokenizer", f"{type(engine.tokenizer).__name__}, {len(engine.tokenizer)} tokens"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows) + "\n"


def check_frontend_files(frontend: FrontendConfig) -> None:
    """Files named by options must exist now, not when the first request needs them."""
    for name in ("ssl_keyfile", "ssl_certfile"):
        path = getattr(frontend, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{name} {path} is not a file")


def run_serve(args: argparse.Namespace, plugins: Plugins) -> int:
    from fw.core.engine.llm_engine import LLMEngine

    plugins.check()
    values = config_values(args, SERVER_CONFIG_CLASSES)
    frontend_names = option_names([FrontendConfig])
    frontend = FrontendConfig(**{name: value for name, value in values.items() if name in frontend_names})
    config = EngineConfig.from_values({name: value for name, value in values.items() if name not in frontend_names})
    generation_config = config.model.generation_config
    if generation_config not in ("auto", "vllm") and not Path(generation_config).is_dir():
        raise ConfigError(f"generation_config must be 'auto', 'vllm' or a directory; {generation_config} is none of these")
    check_frontend_files(frontend)
    engine = LLMEngine(config, plugins)
    served_names = config.model.served_model_name or (engine.served_name,)
    print(f"fw serve: the engine is ready; this is what the server would serve:\n"
          f"{describe_engine(engine, served_names)}", end="")
    not_available("the OpenAI-compatible server")
