"""The ``fw`` command line: vLLM's flag names, --config precedence, subcommands and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fw.core.config import SERVER_CONFIG_CLASSES, build_configs
from fw.entrypoints import collect_env
from fw.entrypoints.cli import build_parser, parse_command_line
from fw.entrypoints.commands import config_values
from fw import __version__


def serve_configs(plugins, *argv: str) -> dict:
    args = parse_command_line(build_parser(plugins), ["serve", *argv])
    configs = build_configs(config_values(args, SERVER_CONFIG_CLASSES), SERVER_CONFIG_CLASSES)
    return {cls.__name__: config for cls, config in configs.items()}


def test_vllm_command_line_parses_unchanged(plugins) -> None:
    configs = serve_configs(
        plugins,
        "org/model",
        "--served-model-name", "a", "b",
        "--max-model-len", "32k",
        "--dtype", "bfloat16",
        "-tp", "2",
        "--gpu-memory-utilization", "0.8",
        "--max-num-seqs", "64",
        "--max-num-batched-tokens", "8K",
        "--block-size", "32",
        "--no-enable-prefix-caching",
        "--enable-chunked-prefill",
        "--num-gpu-blocks-override", "100",
        "--kv-cache-dtype", "fp8",
        "--seed", "1234",
        "--tokenizer", "org/tok",
        "--revision", "v2",
        "--download-dir", "/data/models",
        "--load-format", "safetensors",
        "--trust-remote-code",
        "--enforce-eager",
        "--host", "127.0.0.1",
        "--port", "8100",
        "--api-key", "sk-test",
    )
    model, cache, scheduler = configs["ModelConfig"], configs["CacheConfig"], configs["SchedulerConfig"]
    assert model.model == "org/model"
    assert model.served_model_name == ("a", "b")
    assert model.max_model_len == 32000
    assert model.dtype == "bfloat16"
    assert configs["ParallelConfig"].tensor_parallel_size == 2
    assert cache.gpu_memory_utilization == 0.8
    assert scheduler.max_num_seqs == 64
    assert scheduler.max_num_batched_tokens == 8192
    assert cache.block_size == 32
    assert cache.enable_prefix_caching is False
    assert scheduler.enable_chunked_prefill is True
    assert cache.num_gpu_blocks_override == 100
    assert cache.kv_cache_dtype == "fp8"
    assert model.seed == 1234
    assert (model.tokenizer, model.revision) == ("org/tok", "v2")
    assert configs["LoadConfig"].download_dir == "/data/models"
    assert configs["LoadConfig"].load_format == "safetensors"
    assert model.trust_remote_code is True and model.enforce_eager is True
    frontend = configs["FrontendConfig"]
    assert (frontend.host, frontend.port, frontend.api_key) == ("127.0.0.1", 8100, "sk-test")


def test_long_parallel_flags_and_prefix_caching_on(plugins) -> None:
    configs = serve_configs(
        plugins, "--tensor-parallel-size", "4", "-pp", "2", "-dp", "3", "--enable-prefix-caching", "--max-model-len", "32K"
    )
    parallel = configs["ParallelConfig"]
    assert (parallel.tensor_parallel_size, parallel.pipeline_parallel_size, parallel.data_parallel_size) == (4, 2, 3)
    assert configs["CacheConfig"].enable_prefix_caching is True
    assert configs["ModelConfig"].max_model_len == 32768
    assert configs["ModelConfig"].model is None  # no MODEL: the default model


def test_config_file_precedence(plugins, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("max-model-len: 8k\nport: 9000\nmax_num_seqs: 12\nmodel: org/from-file\n")
    configs = serve_configs(plugins, "--config", str(config), "--max-model-len", "4k")
    assert configs["ModelConfig"].max_model_len == 4000  # command line beats the file
    assert configs["FrontendConfig"].port == 9000  # the file beats the default
    assert configs["SchedulerConfig"].max_num_seqs == 12
    assert configs["ModelConfig"].model == "org/from-file"
    assert configs["CacheConfig"].block_size == 16  # neither: the default
    # Without --config the defaults are back: the file changed only that parse.
    assert serve_configs(plugins)["FrontendConfig"].port == 8000


def test_config_file_unknown_key_is_one_line(run_fw, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("max-model-len: 8k\nmax-batch-size: 3\n")
    result = run_fw("serve", "--config", str(config))
    assert result.code == 2
    assert result.err == f"fw: error: config file {config}: unknown option 'max-batch-size'\n"


def test_config_file_bad_value_names_the_key(run_fw, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("block_size: big\n")
    result = run_fw("run-batch", "-i", "in.jsonl", "-o", "out.jsonl", "--config", str(config))
    assert result.code == 2
    assert "bad value for 'block_size'" in result.err and result.err.count("\n") == 1


def test_client_commands_parse_vllm_style_options(plugins) -> None:
    parser = build_parser(plugins)
    chat = parse_command_line(parser, ["chat", "--url", "http://localhost:9000/v1", "-q", "hi", "--temperature", "0"])
    assert (chat.url, chat.quick, chat.temperature, chat.model_name) == ("http://localhost:9000/v1", "hi", 0.0, None)
    complete = parse_command_line(parser, ["complete", "--model", "m", "--quick", "Once upon"])
    assert (complete.model_name, complete.quick) == ("m", "Once upon")
    bench = parse_command_line(parser, [
        "bench", "serve", "--base-url", "http://localhost:8000", "--dataset", "random", "--num-prompts", "5",
        "--random-input-len", "32", "--random-output-len", "8", "--request-rate", "2", "--max-concurrency", "4",
        "--save-result", "--plot", "latency.png",
    ])
    assert (bench.num_prompts, bench.request_rate, bench.max_concurrency, bench.plot) == (5, 2.0, 4, "latency.png")


def test_engine_commands_validate_their_options_first(run_fw) -> None:
    result = run_fw("bench", "throughput", "--block-size", "12")
    assert result.code == 2
    assert result.err == "fw: error: block_size must be a power of two (8, 16, 32...), got 12\n"


def test_run_batch_needs_its_files(run_fw, tmp_path: Path) -> None:
    result = run_fw("run-batch", "-i", "requests.jsonl")
    assert result.code == 2
    assert result.err == "fw: error: fw run-batch needs -i/--input-file and -o/--output-file\n"
    config = tmp_path / "batch.yaml"
    config.write_text("input-file: requests.jsonl\noutput_file: responses.jsonl\n")
    result = run_fw("run-batch", "--config", str(config))
    # The file supplied both: the command goes on to read the (missing) input file.
    assert result.err.startswith("fw: error: cannot read the batch input file requests.jsonl")


def test_argparse_errors_exit_2(run_fw) -> None:
    result = run_fw("serve", "--dtype", "int8")
    assert result.code == 2
    assert "argument --dtype: invalid choice: 'int8'" in result.err
    assert run_fw().code == 2  # no command


def test_keyboard_interrupt_exits_130_quietly(run_fw, monkeypatch) -> None:
    def interrupted(args, plugins):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_env, "run_collect_env", interrupted)
    result = run_fw("collect-env")
    assert (result.code, result.err) == (130, "")


def test_bugs_keep_their_traceback(run_fw, monkeypatch) -> None:
    def buggy(args, plugins):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(collect_env, "run_collect_env", buggy)
    with pytest.raises(ZeroDivisionError):
        run_fw("collect-env")


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version_loads_no_plugins_and_no_torch(flag: str) -> None:
    code = (
        "import sys\n"
        "from fw.entrypoints.cli import main\n"
        f"code = main([{flag!r}])\n"
        "heavy = [m for m in ('torch', 'transformers', 'fw.core.plugins', 'pluggy') if m in sys.modules]\n"
        "print('exit', code, 'heavy', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == f"fw {__version__}\nexit 0 heavy []\n"


def test_top_level_help_lists_the_commands(run_fw) -> None:
    result = run_fw("--help")
    assert result.code == 0
    for command in ("serve", "chat", "complete", "bench", "collect-env", "run-batch", "plugins"):
        assert command in result.out


def test_kv_cache_memory_is_accepted_as_the_short_name_of_kv_cache_memory_bytes():
    from fw.core.config import CacheConfig, EngineConfig

    assert EngineConfig.from_values({"kv_cache_memory_bytes": "1GiB"}).cache.kv_cache_memory_bytes == 2**30
    from fw.core.config.args import FwArgumentParser, add_config_arguments, values_from_namespace
    from fw.core.plugins import load_plugins

    parser = FwArgumentParser()
    add_config_arguments(parser, [CacheConfig], load_plugins(env={}))
    values = values_from_namespace(parser.parse_args(["--kv-cache-memory", "512MiB"]), [CacheConfig])
    assert values["kv_cache_memory_bytes"] == 512 * 2**20


def test_vllm_style_api_server_module_runs_fw_serve(tmp_path: Path) -> None:
    """`python -m fw.entrypoints.openai.api_server --model M ...`, as tutorials start vLLM."""
    module = [sys.executable, "-m", "fw.entrypoints.openai.api_server"]
    shown = subprocess.run([*module, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "usage: fw serve" in shown.stdout
    missing = tmp_path / "no-such-model"
    failed = subprocess.run([*module, "--model", str(missing), "--port", "0"], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().count("\n") == 0 and str(missing) in failed.stderr, failed.stderr


@pytest.mark.parametrize("argv, message", [
    (["-tp", "2"], "tensor parallelism is not available yet in fw (--tensor-parallel-size 2); "
                   "fw runs a model on one device"),
    (["--pipeline-parallel-size", "3"], "pipeline parallelism is not available yet in fw (--pipeline-parallel-size "
                                        "3); fw runs a model on one device"),
    (["-dp", "2"], "data parallelism is not available yet in fw (--data-parallel-size 2); "
                   "fw runs a model on one device"),
    (["--enable-lora", "--lora-modules", "sql=/adapters/sql"],
     "LoRA adapters are not available yet in fw (--enable-lora, --lora-modules)"),
    (["--max-lora-rank", "64"], "LoRA adapters are not available yet in fw (--max-lora-rank)"),
    (["--tokenizer-mode", "mistral"], "--tokenizer-mode mistral is not available yet in fw; it uses the model's fast "
                                      "tokenizer (auto)"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}'],
     "--speculative-config: speculative decoding is not available yet in fw"),
    (["--enable-expert-parallel"], "--enable-expert-parallel: expert parallelism is not available yet in fw"),
    (["--distributed-executor-backend", "ray"],
     "--distributed-executor-backend: distributed executors (worker processes, Ray) is not available yet in fw"),
])
def test_features_fw_lacks_are_refused_at_start_up_in_one_line(run_fw, tiny_llama, argv, message) -> None:
    result = run_fw("serve", str(tiny_llama.path), "--port", "0", *argv)
    assert (result.code, result.err, result.out) == (2, f"fw: error: {message}\n", "")


def test_a_tool_parser_from_a_plugin_is_refused_until_the_server_runs_parsers(run_fw, tiny_llama) -> None:
    from fw.core.hookspecs import hookimpl
    from fw.core.interfaces import ExtractedToolCalls, ToolParser
    from fw.core.plugins import load_plugins

    class EchoToolParser(ToolParser):
        name = "echo"

        def extract_tool_calls(self, model_output):
            return ExtractedToolCalls(tools_called=False, tool_calls=[], content=model_output)

        def extract_tool_calls_streaming(self, previous_text, current_text, delta_text):
            return None

    class EchoPlugin:
        @hookimpl
        def fw_register_tool_parsers(self, registry):
            registry.register(EchoToolParser.name, EchoToolParser)

    plugins = load_plugins(env={"FW_PLUGINS": "echo"}, extra=[("echo", EchoPlugin())])
    result = run_fw("serve", str(tiny_llama.path), "--port", "0", "--enable-auto-tool-choice",
                    "--tool-call-parser", "echo", plugins=plugins)
    assert (result.code, result.err) == (2, "fw: error: tool-call parsing is not available yet in fw "
                                            "(--tool-call-parser echo)\n")


def test_the_offline_api_refuses_the_same_options() -> None:
    from fw import LLM
    from fw.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"^tensor parallelism is not available yet in fw"):
        LLM("unused", tensor_parallel_size=2)


def test_the_servers_limits_parse_with_their_defaults_and_units(plugins) -> None:
    default = serve_configs(plugins, "org/model")["FrontendConfig"]
    assert (default.max_request_body_bytes, default.header_read_timeout, default.body_read_timeout,
            default.timeout_keep_alive, default.h11_max_incomplete_event_size, default.h11_max_header_count,
            default.shutdown_timeout, default.request_chat_template_timeout,
            default.request_chat_template_max_bytes) == (8 * 2**20, 10.0, 60.0, 5.0, 64 * 2**10, 256, 0.0, 2.0,
                                                         8 * 2**20)
    frontend = serve_configs(plugins, "org/model", "--max-request-body-bytes", "16MiB", "--header-read-timeout", "2",
                             "--body-read-timeout", "30", "--timeout-keep-alive", "1.5",
                             "--h11-max-incomplete-event-size", "1MiB", "--h11-max-header-count", "100",
                             "--shutdown-timeout", "30", "--request-chat-template-timeout", "0.5",
                             "--request-chat-template-max-bytes", "1MiB")["FrontendConfig"]
    assert (frontend.max_request_body_bytes, frontend.header_read_timeout, frontend.body_read_timeout,
            frontend.timeout_keep_alive, frontend.h11_max_incomplete_event_size, frontend.h11_max_header_count,
            frontend.shutdown_timeout, frontend.request_chat_template_timeout,
            frontend.request_chat_template_max_bytes) == (16 * 2**20, 2.0, 30.0, 1.5, 2**20, 100, 30.0, 0.5, 2**20)


@pytest.mark.parametrize(("argv", "message"), [
    (("--max-request-body-bytes", "0"), "max_request_body_bytes must be at least 1, got 0"),
    (("--header-read-timeout", "0"), "header_read_timeout must be a number of seconds more than 0"),
    (("--body-read-timeout", "inf"), "body_read_timeout must be a number of seconds more than 0"),
    (("--timeout-keep-alive", "nan"), "timeout_keep_alive must be a number of seconds more than 0"),
    (("--shutdown-timeout", "-1"), "shutdown_timeout must be a number of seconds, 0 or more"),
    (("--request-chat-template-timeout", "0"), "request_chat_template_timeout must be"),
    (("--request-chat-template-max-bytes", "0"), "request_chat_template_max_bytes must be at least 1"),
    (("--h11-max-header-count", "0"), "h11_max_header_count must be at least 1"),
    (("--h11-max-incomplete-event-size", "0"), "h11_max_incomplete_event_size must be at least 1"),
])
def test_the_servers_limits_are_refused_in_one_line_when_out_of_range(run_fw, argv, message) -> None:
    result = run_fw("serve", "org/model", *argv)
    assert result.code == 2 and result.err.startswith(f"fw: error: {message}") and result.err.count("\n") == 1
