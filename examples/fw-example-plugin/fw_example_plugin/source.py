"""A toy model source: ``example://tiny-llama`` is a tiny random-weight Llama built on demand."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fw.core.errors import ModelNotFoundError
from fw.core.interfaces import ModelSource, ResolvedModel

SCHEME = "example://"
MODELS = ("tiny-llama",)


def _cache_dir() -> Path:
    root = os.environ.get("FW_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fw")
    return Path(root) / "example-plugin"


def build_tiny_llama(target: Path) -> None:
    """Write a 2-layer random Llama with a byte-level BPE tokenizer into ``target``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")

    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    fast.save_pretrained(target)


class ExampleModelSource(ModelSource):
    name = "example"
    priority = 100  # above the built-in sources: only it understands example:// references

    def matches(self, model: str | None) -> bool:
        return model is not None and model.startswith(SCHEME)

    def resolve(self, model: str | None, *, revision: str | None, download_dir: str | None) -> ResolvedModel:
        name = (model or "").removeprefix(SCHEME)
        if name not in MODELS:
            raise ModelNotFoundError(f"the example source has no model {name!r}; it has: {', '.join(MODELS)}")
        target = _cache_dir() / name
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build next to the target and rename, so an interrupted build leaves nothing half-made.
            staging = Path(tempfile.mkdtemp(dir=target.parent))
            build_tiny_llama(staging)
            os.replace(staging, target)
        return ResolvedModel(path=target, served_name=f"example/{name}", source=self.name)
