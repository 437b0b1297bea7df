"""Every registered model architecture against Hugging Face transformers in float32.

Parametrized over the architecture registry itself rather than a hand-written list: an
architecture added to fw's built-in plugins is held to the same contract with no test
change (test_parity.py covers each architecture's variants: RoPE scalings, biases, windows).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from fw.core.plugins import load_plugins

REGISTERED = sorted(load_plugins(env={"FW_PLUGINS": ""}).model_architectures.names())
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1, bos_token_id=None,
            eos_token_id=None, pad_token_id=None)


def tiny_config_for(architecture: str):
    """A tiny transformers config of the model type whose causal LM class is ``architecture``."""
    model_types = [model_type for model_type, names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
                   if architecture in ((names,) if isinstance(names, str) else names)]
    assert model_types, f"transformers has no causal LM class named {architecture}"
    return AutoConfig.for_model(model_types[0], **TINY)


def test_the_builtin_architectures_are_registered():
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"} <= set(REGISTERED)


@pytest.mark.parametrize("architecture", REGISTERED)
def test_logits_and_greedy_tokens_match_transformers(architecture, build_twins, paged_runner):
    config = tiny_config_for(architecture)
    hf_model, model = build_twins(config)
    prompt = torch.randint(0, 256, (17,), generator=torch.Generator().manual_seed(7)).tolist()

    (ours,) = paged_runner(model, config).step([(0, prompt)])
    with torch.no_grad():
        expected = hf_model(torch.tensor([prompt])).logits[0]
        generated = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                      do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert expected.abs().max() > 0.5  # logits large enough for the tolerance to mean something
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert paged_runner(model, config).greedy([prompt], num_steps=8) == [generated[0, len(prompt):].tolist()]
