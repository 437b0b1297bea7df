"""vLLM-style help: groups by default, =all, =<group> in any case, =<text> with _ and - alike."""

from __future__ import annotations

import pytest

from fw.core.config import SERVER_CONFIG_CLASSES, ENGINE_CONFIG_CLASSES
from fw.core.config.base import field_specs

GROUPS = [cls.__name__ for cls in SERVER_CONFIG_CLASSES]


def all_flags(classes) -> list[str]:
    return [spec.flag for cls in classes for spec in field_specs(cls)]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_groups_not_every_option(run_fw, flag: str) -> None:
    result = run_fw("serve", flag)
    assert result.code == 0
    out = result.out
    assert out.startswith("usage: fw serve [MODEL] [options]")
    assert "MODEL" in out and "--config FILE" in out
    for title in GROUPS:
        assert f"\n  {title} " in out
    assert "--help=all" in out and "--help=<group>" in out and "--help=<text>" in out
    assert "--max-num-seqs" not in out  # options stay in their groups


def test_help_all_shows_every_option(run_fw) -> None:
    result = run_fw("serve", "--help=all")
    assert result.code == 0
    for flag in all_flags(SERVER_CONFIG_CLASSES):
        assert flag in result.out, flag
    assert "-tp" in result.out and "--no-enable-prefix-caching" in result.out


@pytest.mark.parametrize("topic", ["cacheconfig", "CacheConfig", "CACHECONFIG"])
def test_help_group_is_case_insensitive(run_fw, topic: str) -> None:
    result = run_fw("serve", f"--help={topic}")
    assert result.code == 0
    assert "CacheConfig:" in result.out
    assert "--block-size" in result.out and "--gpu-memory-utilization" in result.out
    assert "--port" not in result.out and "--max-model-len" not in result.out


@pytest.mark.parametrize("topic", ["max_model", "max-model", "MAX_MODEL_LEN", "--max-model-len"])
def test_help_text_matches_option_names_with_underscores_or_dashes(run_fw, topic: str) -> None:
    result = run_fw("serve", f"--help={topic}")
    assert result.code == 0
    assert "--max-model-len" in result.out
    assert "ModelConfig:" in result.out
    assert "--block-size" not in result.out


def test_help_text_can_match_several_groups(run_fw) -> None:
    out = run_fw("serve", "--help=max").out
    for flag in ("--max-model-len", "--max-num-seqs", "--max-num-batched-tokens", "--max-loras", "--max-log-len"):
        assert flag in out
    assert "SchedulerConfig:" in out and "LoRAConfig:" in out
    assert "--port" not in out


def test_help_with_no_match_lists_the_groups(run_fw) -> None:
    result = run_fw("serve", "--help=warp-drive")
    assert result.code == 2
    assert "--help=warp-drive matches no option group and no option" in result.err
    assert ", ".join(GROUPS) in result.err


def test_other_engine_commands_have_the_same_help(run_fw) -> None:
    basic = run_fw("run-batch", "--help").out
    assert "BatchFiles" in basic and "ModelConfig" in basic
    assert "FrontendConfig" not in basic  # run-batch runs no HTTP server
    latency = run_fw("bench", "latency", "--help=latencybenchmark").out
    assert "--input-len" in latency and "--num-iters" in latency
    every = run_fw("bench", "throughput", "--help=all").out
    for flag in all_flags(ENGINE_CONFIG_CLASSES):
        assert flag in every


def test_plugin_backed_choices_appear_in_help(run_fw, plugins) -> None:
    out = run_fw("serve", "--help=load-format").out
    assert "{" + ",".join(["auto", *sorted(plugins.weight_loaders.names())]) + "}" in out
