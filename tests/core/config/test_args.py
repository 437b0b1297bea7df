"""The CLI generated from the config dataclasses, and --config files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fw.core.config import SERVER_CONFIG_CLASSES, CacheConfig, ConfigError, ModelConfig, build_configs
from fw.core.config.args import (
    FwArgumentParser,
    add_config_arguments,
    apply_config_file,
    plugin_choices,
    values_from_namespace,
)
from fw.core.config.base import field_specs
from fw.core.plugins import load_plugins


@pytest.fixture()
def parser(toy_plugins) -> FwArgumentParser:
    parser = FwArgumentParser(prog="fw test", exit_on_error=False)
    add_config_arguments(parser, SERVER_CONFIG_CLASSES, toy_plugins)
    return parser


def parse(parser: FwArgumentParser, argv: list[str]) -> dict:
    values = values_from_namespace(parser.parse_args(argv), SERVER_CONFIG_CLASSES)
    return {cls.__name__: config for cls, config in build_configs(values, SERVER_CONFIG_CLASSES).items()}


def test_one_group_per_config_titled_by_class_with_every_field(parser: FwArgumentParser) -> None:
    assert list(parser.option_groups) == [cls.__name__ for cls in SERVER_CONFIG_CLASSES]
    for cls in SERVER_CONFIG_CLASSES:
        flags = {flag for action in parser.group_actions(cls.__name__) for flag in action.option_strings}
        assert {spec.flag for spec in field_specs(cls)} <= flags


def test_help_comes_from_field_metadata(parser: FwArgumentParser) -> None:
    actions = parser.option_actions()
    assert actions["block_size"].help.startswith("Tokens per KV-cache block")
    assert "(default: %(default)s)" in actions["block_size"].help


def test_types_map_to_argparse(parser: FwArgumentParser) -> None:
    actions = parser.option_actions()
    assert isinstance(actions["enable_prefix_caching"], argparse.BooleanOptionalAction)
    assert actions["served_model_name"].nargs == "+"
    assert actions["dtype"].choices == ["auto", "half", "float16", "bfloat16", "float", "float32", "bf16"]
    assert actions["tensor_parallel_size"].option_strings == ["--tensor-parallel-size", "-tp"]


def test_parsed_values_build_the_configs(parser: FwArgumentParser) -> None:
    configs = parse(parser, ["--max-model-len", "32K", "--no-enable-prefix-caching", "--kv-cache-memory-bytes", "512MB"])
    assert configs["ModelConfig"].max_model_len == 32768
    assert configs["CacheConfig"] == CacheConfig(enable_prefix_caching=False, kv_cache_memory_bytes=512 * 10**6)


def test_bad_integer_is_rejected_with_its_reason(parser: FwArgumentParser) -> None:
    with pytest.raises(argparse.ArgumentError, match="'1.5K' has a binary suffix"):
        parser.parse_args(["--max-model-len", "1.5K"])


def test_plugin_backed_choices_come_from_the_registries(parser: FwArgumentParser, toy_plugins) -> None:
    actions = parser.option_actions()
    assert "toyquant" in actions["quantization"].choices
    assert actions["quantization"].choices == sorted(toy_plugins.quantization_methods.names())
    assert "toytools" in actions["tool_call_parser"].choices
    assert actions["load_format"].choices[0] == "auto"
    assert set(actions["load_format"].choices[1:]) == set(toy_plugins.weight_loaders.names())
    assert actions["device"].choices == ["auto", *sorted(toy_plugins.platforms.names())]
    assert parse(parser, ["--quantization", "toyquant"])["ModelConfig"].quantization == "toyquant"


def test_unknown_plugin_name_is_rejected_listing_the_available(parser: FwArgumentParser, toy_plugins) -> None:
    with pytest.raises(argparse.ArgumentError) as info:
        parser.parse_args(["--quantization", "awq-nope"])
    message = str(info.value)
    assert "unknown quantization 'awq-nope'" in message
    quantization = next(spec for spec in field_specs(ModelConfig) if spec.name == "quantization")
    assert "available: " + ", ".join(plugin_choices(quantization, toy_plugins)) in message


def test_plugin_kind_without_any_plugin_says_so() -> None:
    no_plugins = load_plugins(env={}, entry_points=False)
    parser = FwArgumentParser(prog="fw test", exit_on_error=False)
    add_config_arguments(parser, SERVER_CONFIG_CLASSES, no_plugins)
    assert parser.option_actions()["reasoning_parser"].choices is None
    with pytest.raises(argparse.ArgumentError, match="no plugin provides a reasoning parser"):
        parser.parse_args(["--reasoning-parser", "deepseek_r1"])
    assert parser.parse_args(["--device", "auto"]).device == "auto"  # the fixed choice needs no plugin


# ---------------------------------------------------------------- --config file.yaml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_config_file_values_become_defaults(parser: FwArgumentParser, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "max-model-len: 8k\nmax_num_seqs: 12\nserved-model-name: [a, b]\nenable_prefix_caching: false\n"
        "gpu-memory-utilization: 0.5\nquantization: toyquant\n",
    )
    apply_config_file(parser, path)
    configs = parse(parser, [])
    assert configs["ModelConfig"].max_model_len == 8000
    assert configs["ModelConfig"].served_model_name == ("a", "b")
    assert configs["ModelConfig"].quantization == "toyquant"
    assert configs["SchedulerConfig"].max_num_seqs == 12
    assert configs["CacheConfig"].enable_prefix_caching is False
    assert configs["CacheConfig"].gpu_memory_utilization == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("max-model-length: 4\n", "unknown option 'max-model-length'"),
        ("max-model-len: lots\n", "bad value for 'max-model-len': 'lots' is not an integer"),
        ("quantization: nope\n", "bad value for 'quantization': unknown quantization 'nope'"),
        ("dtype: int8\n", "bad value for 'dtype': 'int8' is not one of auto, half"),
        ("enforce-eager: maybe\n", "bad value for 'enforce-eager': expected true or false"),
        ("port: [1, 2]\n", "bad value for 'port': expected one value"),
        ("- a\n- b\n", "must hold a mapping of option names to values"),
        ("port: [1\n", "is not valid YAML"),
    ],
)
def test_config_file_errors_name_the_key(parser: FwArgumentParser, tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        apply_config_file(parser, write(tmp_path, text))


def test_missing_config_file(parser: FwArgumentParser, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*nothing.yaml"):
        apply_config_file(parser, tmp_path / "nothing.yaml")
