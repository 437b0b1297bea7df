"""Fixtures for the CLI tests: fw's built-in plugins, a tiny Llama checkpoint, and a runner."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from fw.entrypoints.cli import main
from fw.core.plugins import Plugins, load_plugins


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    """fw's built-in plugins only, so that installed third-party plugins don't change the tests."""
    return load_plugins(env={"FW_PLUGINS": ""})


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture()
def run_fw(plugins: Plugins, capsys: pytest.CaptureFixture[str]):
    """Run ``fw`` in-process through ``main(argv)``; returns the exit code and the captured output."""

    def run(*argv: str, plugins: Plugins = plugins) -> Result:
        code = main(list(argv), plugins=plugins)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@dataclass(frozen=True)
class TinyModel:
    path: Path
    num_parameters: int


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoint) -> TinyModel:
    """The shared tiny Llama (tests/conftest.py), with its weights stored in bfloat16."""
    from safetensors import safe_open

    path = tiny_checkpoint("llama", weights_dtype="bfloat16", max_position_embeddings=128)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        num_parameters = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return TinyModel(path, num_parameters)
