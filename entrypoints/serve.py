"""``fw serve``: the OpenAI-compatible server.

The port is bound first, so that a busy port fails in a second rather than after the model
loaded. Then the engine is built (files resolved, weights loaded, KV cache sized and
allocated; a bad file or option fails here with its one-line error), and the HTTP server
runs until SIGINT or SIGTERM, which stop it gracefully and exit 0.

FastAPI, uvicorn and prometheus_client are imported only once serving starts, so the engine
stays importable where they are not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fw.core.config import SERVER_CONFIG_CLASSES, ConfigError, EngineConfig, FrontendConfig, option_names
from fw.entrypoints.commands import config_values
from fw.core.errors import FwError

if TYPE_CHECKING:
    from fw.core.engine.info import EngineInfo
    from fw.core.engine.llm_engine import LLMEngine
    from fw.core.plugins import Plugins

#: Where ``--api-key`` comes from when the option is not given.
API_KEY_ENV = "FW_API_KEY"


def describe_engine(info: EngineInfo, config: EngineConfig, served_names: tuple[str, ...]) -> str:
    """The start-up summary: what is served, from where, on what, and how big the cache is."""
    from fw.core.engine.loading import checkpoint_dtype

    stored = checkpoint_dtype(info.hf_config)
    chosen = "given by --dtype" if config.model.dtype != "auto" else f"auto: the {info.platform} platform's choice"
    rows = [
        ("served model name", ", ".join(served_names)),
        ("model path", str(info.path)),
        ("source", info.source),
        ("platform", info.platform),
        ("load format", info.load_format),
        ("architecture", f"{', '.join(info.architectures)} (implemented by {info.implementation})"),
        ("checkpoint dtype", _stored_format(stored, info.hf_config)),
        ("dtype", f"{str(info.dtype).removeprefix('torch.')} ({chosen})"),
        ("parameters", f"{info.num_params:,} in {info.num_tensors} tensors (loaded in {info.load_seconds:.1f} s)"),
        ("max model len", str(info.max_model_len)),
        ("kv cache", f"{info.num_kv_blocks} blocks of {info.block_size} tokens"),
        ("quantization", info.quantization or "none"),
        *_weights_row(info),
        ("tokenizer", f"{type(info.tokenizer).__name__}, {len(info.tokenizer)} tokens"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows) + "\n"


def _weights_row(info: EngineInfo) -> list[tuple[str, str]]:
    """The weights' resident size against the same parameters in bfloat16 (quantized: ~0.27x for 4-bit)."""
    if not info.weight_bytes or not info.num_params:
        return []
    ratio = info.weight_bytes / (2 * info.num_params)
    return [("weights", f"{info.weight_bytes / 1e6:.1f} MB in memory ({ratio:.2f}x of bf16)")]


def _stored_format(stored, hf_config) -> str:
    if stored is not None:
        return str(stored).removeprefix("torch.")
    file_type = getattr(hf_config, "gguf_file_type", None)
    packed = (getattr(hf_config, "quantization_config", None) or {}).get("quant_method") == "gguf"
    return f"GGUF {file_type} ({'packed' if packed else 'dequantized at load'})" if file_type else "unknown"


def check_frontend_files(frontend: FrontendConfig) -> None:
    """Files named by options must exist now, not when the first request needs them."""
    for name in ("ssl_keyfile", "ssl_certfile"):
        path = getattr(frontend, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{name} {path} is not a file")


def run_serve(args: argparse.Namespace, plugins: Plugins) -> int:
    plugins.check()
    values = config_values(args, SERVER_CONFIG_CLASSES)
    frontend_names = option_names([FrontendConfig])
    frontend = FrontendConfig(**{name: value for name, value in values.items() if name in frontend_names})
    config = EngineConfig.from_values({name: value for name, value in values.items() if name not in frontend_names})
    generation_config = config.model.generation_config
    if generation_config not in ("auto", "vllm") and not Path(generation_config).is_dir():
        raise ConfigError(f"generation_config must be 'auto', 'vllm' or a directory; {generation_config} is none of these")
    check_frontend_files(frontend)
    if frontend.api_key is None and os.environ.get(API_KEY_ENV):
        frontend = dataclasses.replace(frontend, api_key=os.environ[API_KEY_ENV])
    sock = listen(frontend.host or "0.0.0.0", frontend.port)
    try:
        from fw.core.engine.llm_engine import LLMEngine  # torch: after the quick checks

        engine = LLMEngine(config, plugins)
        served_names = config.model.served_model_name or (engine.info.served_name,)
        print(f"fw serve: the engine is ready:\n{describe_engine(engine.info, config, served_names)}", end="",
              flush=True)
        return serve_engine(engine, config, frontend, tuple(served_names), plugins, sock)
    finally:
        sock.close()


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now; a busy port or a bad address is a one-line error."""
    try:
        from fw.entrypoints.openai.api_server import bind_socket
    except ImportError as e:  # the engine runs without them; the server does not
        raise FwError(f"fw serve needs the Python package {e.name!r}; install it with "
                      "`pip install fastapi uvicorn prometheus-client`") from None
    try:
        return bind_socket(host, port)
    except OSError as e:
        raise FwError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_engine(engine: LLMEngine, config: EngineConfig, frontend: FrontendConfig,
                 served_names: tuple[str, ...], plugins: Plugins, sock: socket.socket) -> int:
    """Serve ``engine`` over HTTP on ``sock`` until SIGINT/SIGTERM; returns the exit code (0, or 1
    when the engine died)."""
    from prometheus_client import CollectorRegistry

    from fw.core.engine.async_engine import AsyncEngine
    from fw.entrypoints.openai.api_server import build_app, run_server
    from fw.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger
    from fw.entrypoints.openai.serving import OpenAIServing
    from fw.entrypoints.openai.shutdown import Lifecycle

    configure_logging()
    registry = CollectorRegistry()
    log_stats = None if config.observability.disable_log_stats else LoggingStatLogger()
    stat_loggers = [PrometheusStatLogger(served_names[0], registry), *([log_stats] if log_stats else [])]
    lifecycle = Lifecycle(frontend.shutdown_timeout)
    async_engine = AsyncEngine(engine, stat_loggers, on_dead=lifecycle.engine_died)
    try:
        serving = OpenAIServing(async_engine, served_names, frontend, plugins)
        app = build_app(async_engine, serving, frontend, served_names, registry, log_stats, lifecycle)
        print(f"fw serve: {server_address(sock, frontend)}", flush=True)
        code = run_server(app, frontend, sock)
    finally:
        async_engine.shutdown()
    if code:
        print("fw serve: the engine died; exiting 1", file=sys.stderr, flush=True)
    return code


def server_address(sock: socket.socket, frontend: FrontendConfig) -> str:
    """Where clients should point, e.g. ``OpenAI API at http://localhost:8000/v1``."""
    host, port = sock.getsockname()[:2]
    scheme = "https" if frontend.ssl_certfile else "http"
    shown = "localhost" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"{scheme}://{shown}:{port}"  # --root-path is the proxy's prefix; the server itself answers at /
    where = " (listening on every interface)" if shown == "localhost" else ""
    return f"OpenAI API at {url}/v1{where}; stop with Ctrl-C"


def configure_logging() -> None:
    """fw's log lines (stats, request errors) on stderr, next to uvicorn's."""
    fw_logger = logging.getLogger("fw")
    if not fw_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s", "%m-%d %H:%M:%S"))
        fw_logger.addHandler(handler)
    if fw_logger.level == logging.NOTSET:
        fw_logger.setLevel(logging.INFO)
