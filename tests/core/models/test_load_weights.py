"""Registration, weight loading (fused parts, tied heads, clear errors), logits rows and dtypes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from fw.core.errors import ModelLoadError
from fw.core.models.llama import LlamaForCausalLM, MistralForCausalLM
from fw.core.models.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)  # fmt: skip


def hf_state_dict(config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).state_dict()


def test_builtin_plugin_registers_the_four_architectures(architectures):
    expected = {
        "LlamaForCausalLM": LlamaForCausalLM, "MistralForCausalLM": MistralForCausalLM,
        "Qwen2ForCausalLM": Qwen2ForCausalLM, "Qwen3ForCausalLM": Qwen3ForCausalLM,
    }  # fmt: skip
    for name, cls in expected.items():
        registration = architectures.registration(name)
        assert registration.obj is cls
        assert (registration.plugin.name, registration.plugin.distribution) == ("models", "fw")


def test_fused_projections_hold_the_checkpoint_parts_in_order():
    config = Qwen3Config(**TINY, head_dim=16)
    state = hf_state_dict(config)
    model = Qwen3ForCausalLM(config)
    model.load_weights(state.items())
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    prefix = "model.layers.1."
    expected_qkv = torch.cat([state[prefix + f"self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(attn.qkv_proj.weight, expected_qkv)
    expected_gate_up = torch.cat([state[prefix + "mlp.gate_proj.weight"], state[prefix + "mlp.up_proj.weight"]])
    assert torch.equal(mlp.gate_up_proj.weight, expected_gate_up)
    assert torch.equal(attn.q_norm.weight, state[prefix + "self_attn.q_norm.weight"])


def test_tied_head_loads_from_the_embedding_alone():
    # The dummy loader (and many checkpoints) store a tied lm_head only once, as the embedding.
    config = LlamaConfig(**TINY, tie_word_embeddings=True)
    state = {k: v for k, v in hf_state_dict(config).items() if k != "lm_head.weight"}
    model = LlamaForCausalLM(config)
    assert model.load_weights(state.items()) == set(state)
    hidden = torch.randn(3, 32)
    torch.testing.assert_close(model.compute_logits(hidden), hidden @ state["model.embed_tokens.weight"].T)


def test_saved_rotary_buffers_are_skipped():
    config = LlamaConfig(**TINY)
    state = hf_state_dict(config)
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}
    loaded = LlamaForCausalLM(config).load_weights([*state.items(), *extra.items()])
    assert loaded == set(state)


def test_unknown_tensor_is_a_clear_error():
    config = LlamaConfig(**TINY)
    state = {**hf_state_dict(config), "model.layers.0.self_attn.mystery.weight": torch.ones(2)}
    message = "'model.layers.0.self_attn.mystery.weight' matches no parameter of LlamaForCausalLM"
    with pytest.raises(ModelLoadError, match=message):
        LlamaForCausalLM(config).load_weights(state.items())


def test_shape_mismatch_is_a_clear_error():
    config = LlamaConfig(**TINY)
    state = hf_state_dict(config)
    state["model.layers.0.self_attn.k_proj.weight"] = torch.ones(8, 32)
    with pytest.raises(ModelLoadError, match=r"k_proj.weight' has shape \(8, 32\) but LlamaForCausalLM expects \(16, 32\)"):
        LlamaForCausalLM(config).load_weights(state.items())


def test_missing_weights_are_named_in_checkpoint_terms():
    config = LlamaConfig(**TINY)
    state = hf_state_dict(config)
    del state["model.layers.1.self_attn.v_proj.weight"], state["model.norm.weight"]
    with pytest.raises(ModelLoadError, match=r"no weights for model.layers.1.self_attn.v_proj.weight, model.norm.weight$"):
        LlamaForCausalLM(config).load_weights(state.items())


def test_logits_only_for_the_rows_asked_for(build_twins, paged_runner):
    config = LlamaConfig(**TINY)
    _, model = build_twins(config)
    hidden = paged_runner(model, config).forward([(0, list(range(1, 12))), (1, list(range(5, 9)))])
    assert hidden.shape == (15, config.hidden_size)
    with torch.no_grad():
        sampled = model.compute_logits(hidden[[10, 14]])  # each sequence's last token
        everything = model.compute_logits(hidden)
    assert sampled.shape == (2, config.vocab_size)
    torch.testing.assert_close(sampled, everything[[10, 14]])


def test_runs_in_the_dtype_it_is_cast_to(build_twins, paged_runner):
    config = Qwen3Config(**TINY, head_dim=16)
    _, model = build_twins(config)
    prompt = list(range(3, 20))
    (reference,) = paged_runner(model, config).step([(0, prompt)])
    model_bf16 = model.to(torch.bfloat16)
    (logits,) = paged_runner(model_bf16, config, dtype=torch.bfloat16).step([(0, prompt)])
    assert logits.dtype == torch.bfloat16
    assert model_bf16.model.rotary_emb.cos_sin_cache.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()
