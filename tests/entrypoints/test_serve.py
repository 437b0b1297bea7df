"""``fw serve`` checks a real checkpoint end to end and reports it before serving.

Here the HTTP server is replaced by a stub that records what it was given (the real server
is tested in tests/entrypoints/openai/), and the socket is bound on a free loopback port.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fw.entrypoints import serve
from fw.plugins.platforms.cpu import CpuPlatform


@pytest.fixture(autouse=True)
def served(monkeypatch) -> list[tuple]:
    """What ``serve_engine`` was called with, instead of running a server."""
    calls: list[tuple] = []
    real_listen = serve.listen
    monkeypatch.setattr(serve, "listen", lambda host, port: real_listen("127.0.0.1", 0))
    monkeypatch.setattr(serve, "serve_engine", lambda *args: calls.append(args) or 0)
    return calls


def report(out: str) -> dict[str, str]:
    rows = [line.split(":", 1) for line in out.splitlines()[1:] if ":" in line]
    return {name.strip(): value.strip() for name, value in rows}


def test_serve_reads_the_whole_checkpoint_and_reports_it(run_fw, tiny_llama, served) -> None:
    result = run_fw("serve", str(tiny_llama.path))
    assert result.code == 0, result.err
    assert len(served) == 1
    found = report(result.out)
    assert found["served model name"] == str(tiny_llama.path)
    assert found["model path"] == str(tiny_llama.path)
    assert found["source"] == "local"
    assert found["platform"] == "cpu"
    assert found["load format"] == "safetensors"
    assert found["architecture"].startswith("LlamaForCausalLM (implemented by fw.")
    assert found["checkpoint dtype"] == "bfloat16"
    expected_dtype = str(CpuPlatform().default_dtype(torch.bfloat16)).removeprefix("torch.")
    assert found["dtype"].startswith(f"{expected_dtype} (auto")
    assert found["parameters"].startswith(f"{tiny_llama.num_parameters:,} in ")
    assert found["max model len"] == "128"
    assert found["quantization"] == "none"
    assert "tokens" in found["tokenizer"]


def test_serve_options_shape_the_report(run_fw, tiny_llama, served) -> None:
    result = run_fw(
        "serve", "--model", str(tiny_llama.path), "--served-model-name", "tiny", "tiny-alias",
        "--max-model-len", "64", "--dtype", "float", "--device", "cpu", "--load-format", "safetensors",
    )
    assert result.code == 0, result.err
    found = report(result.out)
    assert found["served model name"] == "tiny, tiny-alias"
    engine, config, frontend, served_names, plugins, sock = served[0]
    assert served_names == ("tiny", "tiny-alias")
    assert found["dtype"] == "float32 (given by --dtype)"
    assert found["max model len"] == "64"


def one_line_error(result) -> str:
    assert result.code != 0
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fw: error: "), result.err
    return lines[0]


def test_missing_directory_is_one_line(run_fw, tmp_path: Path) -> None:
    line = one_line_error(run_fw("serve", str(tmp_path / "no-such-model")))
    assert "no-such-model" in line


def test_context_longer_than_the_model_is_rejected(run_fw, tiny_llama) -> None:
    result = run_fw("serve", str(tiny_llama.path), "--max-model-len", "1k")
    assert result.code == 2
    assert "max_model_len 1000 is larger than the model's context length 128" in one_line_error(result)


def test_truncated_weights_fail_with_the_loader_error(run_fw, tiny_llama, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama.path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = one_line_error(run_fw("serve", str(broken)))
    assert "model.safetensors" in line


def test_quantization_no_plugin_provides_is_rejected(run_fw, tiny_llama) -> None:
    result = run_fw("serve", str(tiny_llama.path), "--quantization", "hqq")  # no plugin provides it
    assert result.code == 2
    assert "unknown quantization 'hqq'" in result.err and "awq" in result.err  # lists the available ones


def test_model_given_twice_differently_is_an_error(run_fw, tiny_llama) -> None:
    result = run_fw("serve", str(tiny_llama.path), "--model", "other")
    assert result.code == 2
    assert "the model is given twice" in one_line_error(result)


def test_invalid_option_value_is_one_line(run_fw, tiny_llama) -> None:
    result = run_fw("serve", str(tiny_llama.path), "--gpu-memory-utilization", "1.5")
    assert result.code == 2
    assert one_line_error(result) == "fw: error: gpu_memory_utilization must be in (0, 1], got 1.5"


def test_unsupported_architecture_lists_the_supported(run_fw, tiny_llama, tmp_path: Path, plugins) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_llama.path, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["WarpDriveForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    line = one_line_error(run_fw("serve", str(other)))
    assert "unsupported model architecture WarpDriveForCausalLM" in line
    assert ", ".join(sorted(plugins.model_architectures.names())) in line
