"""Shared test set-up: GPU tests skip visibly where no GPU is present; tiny checkpoints; the
fault-injection plugin."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

# Triton decides when it is imported (its own tl.* helpers included) whether @triton.jit
# compiles or interprets: where there is no GPU, interpret, set before any test imports it.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (cuda marker); none on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- tiny checkpoints

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "to be or not to be that is the question",
    "all that glitters is not gold",
    "ünïcödé wörds and emoji 🙂 also need bytes",
    "def main(): return 42",
] * 10

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

ARCHITECTURES = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=True, head_dim=16),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, sliding_window=None),
}


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_checkpoint(target, arch: str = "llama", seed: int = 0, weights_dtype: str = "float32", **overrides):
    """A tiny random-weight checkpoint in Hugging Face layout (config, safetensors in
    ``weights_dtype``, tokenizer); ``overrides`` go into the transformers config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer()
    spec = {**ARCHITECTURES[arch], **overrides}
    model_type = spec.pop("model_type")
    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
    )
    config = AutoConfig.for_model(model_type, **{**sizes, **spec})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # The default init (std 0.02) gives nearly flat logits, where greedy choices are
    # near-ties; a wider init gives varied, decisive outputs.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.15)
    model.to(getattr(torch, weights_dtype)).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(arch="llama", **config_overrides)`` -> path, built once per set of arguments."""
    built = {}

    def make(arch: str = "llama", **overrides):
        key = (arch, repr(sorted(overrides.items())))
        if key not in built:
            built[key] = build_checkpoint(tmp_path_factory.mktemp(f"tiny-{arch}"), arch, **overrides)
        return built[key]

    return make


# ---------------------------------------------------------------- fault injection

#: The fault-injection platform ``faulty-cpu`` (its docstring says how a request triggers each fault).
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"


@pytest.fixture(scope="session")
def fault_plugin():
    """tests/fault_plugin.py as the module ``fw_fault_plugin`` (with ``--import-mode=importlib``
    nothing under tests/ is importable by name): pass it to ``load_plugins(extra=[("fault", it)])``
    and run on ``device="faulty-cpu"``."""
    spec = importlib.util.spec_from_file_location("fw_fault_plugin", FAULT_PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fault_plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment under which an ``fw`` process (``fw serve MODEL --device faulty-cpu``) has the
    fault plugin installed: the distribution ``fw-fault-plugin`` (entry point ``fault``) in a
    throwaway directory on ``PYTHONPATH``, as pip would leave it."""
    site = tmp_path_factory.mktemp("fault-site")
    info = site / "fw_fault_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fw-fault-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fw.plugins]\nfault = fw_fault_plugin\n")
    shutil.copyfile(FAULT_PLUGIN, site / "fw_fault_plugin.py")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
