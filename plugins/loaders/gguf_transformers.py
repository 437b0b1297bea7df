"""A GGUF file's transformers config and tokenizer class, from metadata fw has already parsed.

``AutoConfig.from_pretrained(dir, gguf_file=...)`` opens the file with ``gguf.GGUFReader``
(seconds for a large vocabulary) and ``AutoTokenizer`` does the same again, only to
choose the tokenizer class from the config. For the architectures fw runs from GGUF
(llama, qwen2, qwen3), transformers' ``load_gguf_checkpoint`` does nothing but rename
metadata keys through its own table, ``GGUF_TO_TRANSFORMERS_MAPPING["config"]``; that
renaming is applied here to fw's parsed metadata, and the tokenizer class is chosen from
the resulting config as AutoTokenizer chooses it. Where transformers does more (other
architectures, Mistral's renaming, a directory with its own tokenizer_config.json, an
older transformers) these functions return None and the caller asks transformers itself.
The tests check both against transformers' own results.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# GGUF architectures whose config transformers builds by key renaming alone (no special
# case in load_gguf_checkpoint) and whose model classes fw has.
RENAMED_CONFIG_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3"})


def gguf_config_dict(metadata: dict[str, Any], tensor_names: tuple[str, ...]) -> dict[str, Any] | None:
    """``load_gguf_checkpoint(file, return_tensors=False)["config"]``, or None where that does more than rename.

    ``metadata`` follows transformers' fast reader: arrays of strings are given as their length.
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    architecture = metadata.get("general.architecture")
    # llama.cpp writes Mistral models as "llama"; transformers renames them by general.name.
    if architecture not in RENAMED_CONFIG_ARCHITECTURES or "mistral" in str(metadata.get("general.name", "")).lower():
        return None
    renames = GGUF_TO_TRANSFORMERS_MAPPING["config"]
    # llama.cpp writes the output projection only when it is not the embedding matrix.
    config: dict[str, Any] = {"tie_word_embeddings": "output.weight" not in tensor_names}
    for key, value in metadata.items():
        prefix, _, name = key.partition(".")
        renamed = renames.get(prefix, {}).get(name)
        if renamed is None or renamed == -1:  # transformers' marks for "read, but not a config value"
            continue
        # transformers reads every value as a list and unwraps the one-element ones.
        config[renamed] = value[0] if isinstance(value, list) and len(value) == 1 else value
    if "vocab_size" not in config and isinstance(metadata.get("tokenizer.ggml.tokens"), int):
        config["vocab_size"] = metadata["tokenizer.ggml.tokens"]  # the vocabulary's length
    return config


def config_from_dict(config_dict: dict[str, Any], directory: Path) -> PretrainedConfig:
    """The config object AutoConfig.from_pretrained(directory, gguf_file=...) makes from ``config_dict``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[config_dict["model_type"]].from_dict(dict(config_dict), name_or_path=str(directory))


def auto_tokenizer_class(config: PretrainedConfig, directory: Path) -> type | None:
    """The class AutoTokenizer.from_pretrained(directory, gguf_file=...) picks, or None where it could pick otherwise.

    With no tokenizer_config.json in the directory (no class or remote code named there)
    and a config that names no tokenizer class, AutoTokenizer takes the class registered
    for the config class, else TokenizersBackend; Mistral's backend it swaps depending on
    files, so that case is left to it.
    """
    if (directory / "tokenizer_config.json").exists() or getattr(config, "tokenizer_class", None):
        return None
    try:
        from transformers import TokenizersBackend  # transformers 5's default
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
    except ImportError:
        return None
    tokenizer_class = TOKENIZER_MAPPING.get(type(config), TokenizersBackend)
    if tokenizer_class is None or tokenizer_class.__name__ == "MistralCommonBackend":
        return None
    return tokenizer_class
