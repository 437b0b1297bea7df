"""Tiny checkpoints for the plugin tests (loaders, quantization, the CPU platform's fused
decoder), built in tmp dirs (never downloaded).

Models are transformers classes with tiny configs and seeded random weights, saved the
way real checkpoints are (``save_pretrained``, huggingface_hub's ``.bin`` sharding,
``gguf.GGUFWriter``). The GGUF writer below spells out llama.cpp's tensor names and its
Q/K permutation by hand, independently of the loader under test.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Callable
from unittest import mock

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

Q = gguf.GGMLQuantizationType

# Sizes are multiples of 256 so that every GGUF block type (K-quants have 256-element
# blocks) can hold each row; still only ~1M parameters.
TINY = dict(
    vocab_size=320,
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def make_model(arch: str, *, tie: bool, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny transformers causal LM with seeded random weights (norms too, so they are checked)."""
    config = CONFIG_CLASSES[arch](**{**TINY, **overrides}, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.uniform_(0.5, 1.5)  # default ones/zeros would hide a mix-up
    return model


def expected_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint of ``model`` holds: its state_dict without the tied lm_head."""
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]
    return state


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


@pytest.fixture(scope="session")
def tied_llama() -> torch.nn.Module:
    return make_model("llama", tie=True)


@pytest.fixture(scope="session")
def untied_qwen2() -> torch.nn.Module:
    return make_model("qwen2", tie=False, seed=1)


@pytest.fixture(scope="session")
def save_model(tmp_path_factory) -> Callable[..., Path]:
    """``save_model(model, **save_pretrained_kwargs)`` -> a fresh directory holding it."""

    def save(model: torch.nn.Module, **kwargs) -> Path:
        directory = tmp_path_factory.mktemp("checkpoint")
        model.save_pretrained(directory, **kwargs)
        return directory

    return save


# ---------------------------------------------------------------- GGUF

# llama.cpp's standard tensor names, written out here rather than taken from the gguf
# package so that the loader's mapping is checked against an independent table.
GGUF_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# Byte offsets of the fp16 super-block scales (d, dmin) inside one block of each K-quant.
K_QUANT_FP16_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def gguf_name(hf_name: str) -> str:
    module, _, suffix = hf_name.rpartition(".")
    if module in GGUF_TOP_NAMES:
        return f"{GGUF_TOP_NAMES[module]}.{suffix}"
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)
    assert match, hf_name
    return f"blk.{match[1]}.{GGUF_LAYER_NAMES[match[2]]}.{suffix}"


def llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's ``LlamaModel.permute`` (Q/K rows, for its rotary layout)."""
    return (
        weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def random_k_quant(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Valid random K-quant data ([rows, bytes per row], uint8) with sane fp16 scales.

    gguf-py cannot quantize to K-quants; random bits are valid quantized values, but
    random fp16 scales could be inf/NaN, so those are set to small positive numbers.
    """
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    num_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(num_blocks, type_size), dtype=np.uint8)
    for offset in K_QUANT_FP16_OFFSETS[qtype]:
        scales = rng.uniform(1e-3, 1e-2, num_blocks).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(num_blocks, 2)
    return blocks.reshape(rows, -1)


def gguf_tensor_data(data: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, Q | None]:
    """``data`` ([rows, cols] float32) encoded as ``qtype``: (array, raw_dtype for GGUFWriter)."""
    if qtype == Q.F32:
        return data.astype(np.float32), None
    if qtype == Q.F16:
        return data.astype(np.float16), None
    if qtype in K_QUANT_FP16_OFFSETS:
        return random_k_quant(*data.shape, qtype, rng), qtype
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(
    path: Path,
    model: torch.nn.Module,
    qtype: Q = Q.F32,
    *,
    arch: str | None = None,
    overrides: dict[str, Q] | None = None,
    tokenizer: dict | None = None,
) -> Path:
    """Write ``model`` as llama.cpp would: its names, Q/K permuted for llama, 1-D tensors in F32.

    ``overrides`` gives some tensors (by GGUF name) another type; ``tokenizer`` adds
    ``tokenizer.ggml.*`` metadata (see ``tiny_gguf_tokenizer``).
    """
    config = model.config
    arch = arch or config.model_type
    head_dim = config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if tokenizer is not None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokenizer["tokens"])
        writer.add_token_types(tokenizer["token_types"])
        writer.add_token_merges(tokenizer["merges"])
        writer.add_bos_token_id(tokenizer["bos_token_id"])
        writer.add_eos_token_id(tokenizer["eos_token_id"])
        writer.add_chat_template(tokenizer["chat_template"])
    rng = np.random.default_rng(0)
    for hf_name, tensor in expected_state_dict(model).items():
        name = gguf_name(hf_name)
        data = tensor.detach().float().numpy()
        if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
            data = llama_cpp_permute(data, heads)
        tensor_type = (overrides or {}).get(name, qtype if data.ndim == 2 else Q.F32)
        array, raw_dtype = gguf_tensor_data(data, tensor_type, rng)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf_tokenizer() -> dict:
    """A byte-level BPE trained with ``tokenizers`` on a few sentences, as GGUF metadata."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY["vocab_size"],
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [
        "the quick brown fox jumps over the lazy dog",
        "hello world, how are you today?",
        "a tiny tokenizer for testing weight loaders, trained on a handful of sentences",
        "models read their config, their tokenizer and their tensors from one file",
    ] * 10
    tokenizer.train_from_iterator(text, trainer)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert len(tokens) == TINY["vocab_size"]
    return {
        "tokens": tokens,
        "token_types": [3 if t.startswith("<|") else 1 for t in tokens],  # 3: control, 1: normal
        "merges": merges,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|im_end|>"],
        "chat_template": (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        ),
    }


def transformers_gguf_tensors(file: Path, hf_config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """What transformers loads from a GGUF file, as float32 tensors under HF names.

    ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` needs ``accelerate``,
    which fw does not depend on; for llama, qwen2 and qwen3 it takes its tensors from
    ``load_gguf_checkpoint`` (its own reader, name map and un-permutation), called here
    the same way, with a meta-device model of the config for the name map.
    """
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    # transformers rebuilds the same gguf TensorNameMap for every submodule (~400 times
    # for a 30-layer model, most of its load time); the map is a pure function of its
    # arguments, so caching it changes nothing but the time.
    cached_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    with mock.patch.object(gguf, "get_tensor_name_map", cached_name_map):
        parsed = load_gguf_checkpoint(str(file), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    return parsed["tensors"]


class CheckpointKit:
    """The helpers above, for the tests (a conftest is not importable under --import-mode=importlib)."""

    make_model = staticmethod(make_model)
    expected_state_dict = staticmethod(expected_state_dict)
    assert_same_tensors = staticmethod(assert_same_tensors)
    write_gguf = staticmethod(write_gguf)
    llama_cpp_permute = staticmethod(llama_cpp_permute)
    transformers_gguf_tensors = staticmethod(transformers_gguf_tensors)


@pytest.fixture(scope="session")
def ckpt() -> type[CheckpointKit]:
    return CheckpointKit
