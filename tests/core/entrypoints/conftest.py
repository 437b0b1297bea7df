"""Fixtures for the CLI tests: fw's built-in plugins, a tiny Llama checkpoint, and a runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fw.core.entrypoints.cli import main
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
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A 2-layer Llama with random bfloat16 weights in safetensors and a BPE tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["hello world, this is a tiny model for fw's tests"] * 8, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return TinyModel(path, sum(p.numel() for p in model.parameters()))
