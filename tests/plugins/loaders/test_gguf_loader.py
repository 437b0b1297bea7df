"""The GGUF loader against tiny GGUF files written with gguf.GGUFWriter.

Each file is compared with what transformers loads from it, and the unquantized ones
with the Hugging Face weights they were written from (which checks the name mapping and
the Q/K un-permutation without trusting either implementation).
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from fw.core.errors import ModelLoadError
from fw.plugins.loaders.gguf_loader import SUPPORTED_TYPES, GGUFLoader, find_gguf_file


def load(path):
    loader = GGUFLoader(packed=False)  # every tensor dequantized at load (packed ones: test_gguf_packed.py)
    config = loader.load_hf_config(path)
    return config, dict(loader.iter_weights(path, config))


def as_float32(weights):
    return {name: tensor.float() for name, tensor in weights.items()}


@pytest.mark.parametrize("qtype", sorted(SUPPORTED_TYPES, key=lambda t: t.name), ids=lambda t: t.name)
def test_every_supported_type_loads_as_transformers_loads_it(ckpt, tmp_path, qtype):
    model = ckpt.make_model("llama", tie=False)
    file = ckpt.write_gguf(tmp_path / "tiny.gguf", model, qtype)

    config, weights = load(file)

    expected_dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(qtype, torch.float32)
    assert weights["model.layers.0.mlp.up_proj.weight"].dtype == expected_dtype
    ckpt.assert_same_tensors(as_float32(weights), ckpt.transformers_gguf_tensors(file, config))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0], ids=lambda t: t.name)
def test_quantized_weights_approximate_the_originals(ckpt, tmp_path, qtype):
    model = ckpt.make_model("llama", tie=False)
    _, weights = load(ckpt.write_gguf(tmp_path / "tiny.gguf", model, qtype))

    for name, original in ckpt.expected_state_dict(model).items():
        error = (weights[name] - original).abs().max() / original.abs().max()
        assert error < (0.02 if qtype == Q.Q8_0 else 0.2), name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f32_file_gives_back_the_original_weights(ckpt, tmp_path, arch):
    model = ckpt.make_model(arch, tie=False)
    file = ckpt.write_gguf(tmp_path / f"{arch}.gguf", model)

    config, weights = load(file)

    assert config.model_type == arch and config.num_hidden_layers == 2
    ckpt.assert_same_tensors(weights, ckpt.expected_state_dict(model))
    ckpt.assert_same_tensors(weights, ckpt.transformers_gguf_tensors(file, config))


def test_llama_q_and_k_are_unpermuted_but_qwen2_ones_are_not(ckpt, tmp_path):
    """Guards the test above: the file really holds permuted rows for llama only."""
    from gguf import GGUFReader

    for arch, permuted in [("llama", True), ("qwen2", False)]:
        model = ckpt.make_model(arch, tie=False)
        file = ckpt.write_gguf(tmp_path / f"{arch}.gguf", model)
        stored = next(t for t in GGUFReader(file).tensors if t.name == "blk.0.attn_q.weight")
        original = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
        assert torch.equal(torch.from_numpy(stored.data.copy()), original) is not permuted


def test_tied_embeddings_yield_no_lm_head(ckpt, tied_llama, tmp_path):
    config, weights = load(ckpt.write_gguf(tmp_path / "tiny.gguf", tied_llama, Q.Q8_0))

    assert config.tie_word_embeddings and "lm_head.weight" not in weights
    assert "model.embed_tokens.weight" in weights


def test_config_and_tokenizer_come_from_the_metadata(ckpt, tied_llama, tiny_gguf_tokenizer, tmp_path):
    file = ckpt.write_gguf(tmp_path / "tiny.gguf", tied_llama, Q.Q8_0, tokenizer=tiny_gguf_tokenizer)
    loader = GGUFLoader()

    config = loader.load_hf_config(tmp_path)  # the directory with one .gguf works too
    tokenizer = loader.load_tokenizer(file)

    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (256, 4, 2)
    assert config.vocab_size == len(tokenizer) == 320
    text = "hello world, the quick fox"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == [tiny_gguf_tokenizer["tokens"][i] for i in ids]
    assert tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n"


def test_unsupported_quantization_type_names_it_and_the_tensor(ckpt, tied_llama, tmp_path):
    file = ckpt.write_gguf(tmp_path / "tiny.gguf", tied_llama, Q.Q8_0, overrides={"blk.1.attn_v.weight": Q.TQ2_0})
    loader = GGUFLoader()

    with pytest.raises(ModelLoadError, match=r"blk\.1\.attn_v\.weight.*TQ2_0"):
        next(loader.iter_weights(file, loader.load_hf_config(file)))


def test_truncated_file_is_a_load_error_naming_the_file(ckpt, tied_llama, tmp_path):
    good = ckpt.write_gguf(tmp_path / "good.gguf", tied_llama, Q.Q8_0)
    config = GGUFLoader().load_hf_config(good)
    data = good.read_bytes()
    for size in (len(data) - 100, len(data) // 2, 200, 3):
        bad = tmp_path / "bad" / f"cut-{size}.gguf"
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(data[:size])
        with pytest.raises(ModelLoadError, match=f"cut-{size}.gguf") as info:
            list(GGUFLoader().iter_weights(bad, config))
        assert "\n" not in str(info.value)
        bad.unlink()


def test_truncated_file_fails_config_loading_clearly(ckpt, tied_llama, tmp_path):
    good = ckpt.write_gguf(tmp_path / "good.gguf", tied_llama, Q.Q8_0)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(good.read_bytes()[:500])

    with pytest.raises(ModelLoadError, match="bad.gguf"):
        GGUFLoader().load_hf_config(bad)


def test_which_paths_it_can_load(ckpt, tied_llama, tmp_path):
    file = ckpt.write_gguf(tmp_path / "one.gguf", tied_llama, Q.Q8_0)
    assert find_gguf_file(file) == file and find_gguf_file(tmp_path) == file
    assert not GGUFLoader().can_load(tmp_path / "missing.gguf")

    (tmp_path / "two.gguf").write_bytes(file.read_bytes())
    assert not GGUFLoader().can_load(tmp_path)
    with pytest.raises(ModelLoadError, match="several .gguf files"):
        GGUFLoader().load_hf_config(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no gguf weight files in .*empty"):
        list(GGUFLoader().iter_weights(empty, None))
