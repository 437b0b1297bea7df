"""The GGUF loader's config and tokenizer equal what transformers builds from the same file.

The loader builds them from its own parse of the header (gguf_transformers.py); these
tests compare with ``AutoConfig`` / ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``,
check that the slow ``gguf.GGUFReader`` is never used, and that one loader parses a
file's header once.
"""

from __future__ import annotations

import gguf
import pytest
from gguf import GGMLQuantizationType as Q
from transformers import AutoConfig, AutoTokenizer

from fw.plugins.loaders import gguf_loader
from fw.plugins.loaders.gguf_file import read_gguf_file
from fw.plugins.loaders.gguf_loader import GGUFLoader
from fw.plugins.loaders.gguf_transformers import auto_tokenizer_class, config_from_dict, gguf_config_dict


def transformers_config(file):
    config = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)
    config.architectures = [f"{type(config).__name__.removesuffix('Config')}ForCausalLM"]  # as the loader adds
    return config


def assert_same_config(ours, theirs):
    assert type(ours) is type(theirs)
    assert vars(ours) == vars(theirs)


def assert_same_tokenizer(ours, theirs):
    assert type(ours) is type(theirs)
    assert ours.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()
    assert ours.init_kwargs == theirs.init_kwargs and ours.special_tokens_map == theirs.special_tokens_map
    assert ours.chat_template == theirs.chat_template
    text = "hello world, the quick brown fox <|im_end|>"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]


@pytest.fixture
def gguf_with_tokenizer(ckpt, tiny_gguf_tokenizer, tmp_path):
    def write(arch: str):
        model = ckpt.make_model(arch, tie=arch == "llama")
        return ckpt.write_gguf(tmp_path / f"{arch}.gguf", model, Q.Q8_0, tokenizer=tiny_gguf_tokenizer)

    return write


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_config_and_tokenizer_equal_transformers(gguf_with_tokenizer, arch):
    file = gguf_with_tokenizer(arch)
    loader = GGUFLoader(packed=False)  # no quantization_config: the config is transformers' own

    assert_same_config(loader.load_hf_config(file), transformers_config(file))
    expected_tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    assert_same_tokenizer(loader.load_tokenizer(file), expected_tokenizer)


def test_loading_never_opens_ggufs_slow_reader(gguf_with_tokenizer, monkeypatch):
    file = gguf_with_tokenizer("llama")

    def refuse(*args, **kwargs):
        raise AssertionError("gguf.GGUFReader was used")

    monkeypatch.setattr(gguf, "GGUFReader", refuse)  # where transformers' load_gguf_checkpoint takes it from
    loader = GGUFLoader()
    config = loader.load_hf_config(file)
    loader.load_tokenizer(file)
    assert len(dict(loader.iter_weights(file, config))) == 2 * 9 + 2  # 2 layers x 9, embeddings, final norm


def test_one_loader_parses_a_file_once_and_again_when_it_changes(ckpt, tied_llama, gguf_with_tokenizer, monkeypatch):
    file = gguf_with_tokenizer("llama")
    calls = []

    def counting_read(path):
        calls.append(path)
        return read_gguf_file(path)

    monkeypatch.setattr(gguf_loader, "read_gguf_file", counting_read)
    loader = GGUFLoader()
    config = loader.load_hf_config(file)
    loader.load_tokenizer(file.parent)  # the directory names the same file
    list(loader.iter_weights(file, config))
    assert len(calls) == 1

    ckpt.write_gguf(file, tied_llama, Q.Q4_0)  # replaced: another size and mtime
    assert len(dict(loader.iter_weights(file, config))) == 20
    assert len(calls) == 2


def test_other_architectures_and_mistral_are_left_to_transformers():
    llama = {"general.architecture": "llama", "general.name": "tiny llama", "llama.block_count": 2}

    assert gguf_config_dict(llama, ())["num_hidden_layers"] == 2
    assert gguf_config_dict({**llama, "general.name": "Mistral 7B Instruct"}, ()) is None  # renamed to mistral
    assert gguf_config_dict({"general.architecture": "phi3", "phi3.block_count": 2}, ()) is None


def test_the_fallback_through_transformers_gives_the_same_result(gguf_with_tokenizer, monkeypatch):
    file = gguf_with_tokenizer("qwen2")
    fast = GGUFLoader()
    fast_config, fast_tokenizer = fast.load_hf_config(file), fast.load_tokenizer(file)

    monkeypatch.setattr(gguf_loader, "gguf_config_dict", lambda metadata, names: None)
    slow = GGUFLoader()

    assert_same_config(slow.load_hf_config(file), fast_config)
    assert_same_tokenizer(slow.load_tokenizer(file), fast_tokenizer)


def test_a_tokenizer_config_json_leaves_the_class_to_transformers(gguf_with_tokenizer):
    file = gguf_with_tokenizer("llama")
    config = config_from_dict(gguf_config_dict(gguf_loader.open_gguf(file).metadata, ()), file.parent)
    assert auto_tokenizer_class(config, file.parent).__name__ == "TokenizersBackend"

    # A class named there wins in AutoTokenizer; the loader must not pick its own.
    (file.parent / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')

    assert auto_tokenizer_class(config, file.parent) is None
    ours = GGUFLoader().load_tokenizer(file)
    assert type(ours).__name__ == "GPT2Tokenizer"
    assert_same_tokenizer(ours, AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name))
