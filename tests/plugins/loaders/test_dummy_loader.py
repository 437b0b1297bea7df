"""The dummy loader gives seeded random weights of the right names, shapes and dtype."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from fw.plugins.loaders.dummy_loader import DUMMY_HIGH, DUMMY_LOW, DummyLoader


def config_only_dir(tmp_path, config):
    config.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    return tmp_path


def load(directory):
    loader = DummyLoader()
    return dict(loader.iter_weights(directory, loader.load_hf_config(directory)))


def test_needs_only_config_json_and_matches_the_model_state_dict(ckpt, tied_llama, tmp_path):
    directory = config_only_dir(tmp_path, tied_llama.config)
    assert DummyLoader().can_load(directory) and DummyLoader.auto_priority is None

    weights = load(directory)

    expected = ckpt.expected_state_dict(tied_llama)  # tied lm_head left out
    assert sorted(weights) == sorted(expected)
    for name, tensor in expected.items():
        assert weights[name].shape == tensor.shape and weights[name].dtype == torch.float32, name


def test_untied_lm_head_is_yielded(untied_qwen2, tmp_path):
    weights = load(config_only_dir(tmp_path, untied_qwen2.config))
    assert "lm_head.weight" in weights and "model.layers.0.self_attn.q_proj.bias" in weights


def test_values_are_small_seeded_and_norms_are_ones(tied_llama, tmp_path):
    directory = config_only_dir(tmp_path, tied_llama.config)
    first, second = load(directory), load(directory)

    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name  # same seed, same weights
        if name.endswith("norm.weight"):
            assert torch.equal(tensor, torch.ones_like(tensor)), name
        else:
            assert DUMMY_LOW <= tensor.min() and tensor.max() <= DUMMY_HIGH, name
            assert tensor.std() > 1e-4, name  # random, not constant
    embed, q_proj = first["model.embed_tokens.weight"], first["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(embed[:4, :4], q_proj[:4, :4])


def test_weights_take_the_config_dtype(tmp_path):
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        dtype="bfloat16",
    )
    weights = load(config_only_dir(tmp_path, config))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_weights_load_into_the_transformers_model_and_run(tied_llama, tmp_path):
    weights = load(config_only_dir(tmp_path, tied_llama.config))
    model = AutoModelForCausalLM.from_config(tied_llama.config)

    result = model.load_state_dict(weights, strict=False)

    assert result.unexpected_keys == [] and set(result.missing_keys) <= {"lm_head.weight"}
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, tied_llama.config.vocab_size) and torch.isfinite(logits).all()
