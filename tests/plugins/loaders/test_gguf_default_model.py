"""The default model's config and tokenizer, built from fw's one parse, equal transformers' own.

SmolLM2's 49k-token vocabulary is what made gguf's reader slow; the loader must get the
same objects without it. Fetched like test_default_model.py does (once, into the fw cache).
"""

from __future__ import annotations

import gguf
import pytest
from transformers import AutoConfig, AutoTokenizer

from fw.core.errors import FwError
from fw.plugins.loaders.default_model import ensure_default_model
from fw.plugins.loaders.gguf_loader import GGUFLoader

pytestmark = pytest.mark.slow  # the embedded default model (fetched once, 100 MB)


@pytest.fixture(scope="module")
def default_gguf():
    try:
        return ensure_default_model()
    except FwError as exc:
        pytest.skip(f"the default model is not available here: {exc}")


def test_config_and_tokenizer_equal_transformers_without_ggufs_reader(default_gguf, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("gguf.GGUFReader was used")

    with monkeypatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", refuse)
        loader = GGUFLoader()
        config, tokenizer = loader.load_hf_config(default_gguf), loader.load_tokenizer(default_gguf)

    directory, name = str(default_gguf.parent), default_gguf.name
    expected_config = AutoConfig.from_pretrained(directory, gguf_file=name)
    expected_config.architectures = ["LlamaForCausalLM"]  # what the loader adds
    assert config.gguf_file_type == "Q4_1"  # from general.file_type, shown by fw serve
    expected_config.gguf_file_type = "Q4_1"
    expected_config.quantization_config = {"quant_method": "gguf"}  # the weights stay packed
    assert type(config) is type(expected_config) and vars(config) == vars(expected_config)
    expected = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    assert type(tokenizer) is type(expected)
    assert tokenizer.backend_tokenizer.to_str() == expected.backend_tokenizer.to_str()
    assert tokenizer.init_kwargs == expected.init_kwargs and tokenizer.chat_template == expected.chat_template
    messages = [{"role": "user", "content": "What is 2 + 2? Answer in one word."}]
    assert tokenizer.apply_chat_template(messages) == expected.apply_chat_template(messages)
