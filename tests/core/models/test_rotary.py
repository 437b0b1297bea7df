"""RoPE: config forms, the rotation itself, and dynamic NTK past the original context."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from fw.core.layers.rotary import apply_rotary, max_rope_positions, rope_parameters


def test_rotation_equals_hf_rotate_half():
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    freqs = torch.randn(5, 8)
    cos, sin = freqs.cos(), freqs.sin()
    # HF wants [batch, heads, seq, dim] and full-width cos/sin.
    hf_cos, hf_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], hf_cos, hf_sin)
    assert torch.equal(apply_rotary(q, cos, sin), hf_q[0].transpose(0, 1))
    assert torch.equal(apply_rotary(k, cos, sin), hf_k[0].transpose(0, 1))


def test_transformers_4_style_config_is_read():
    # transformers 4.x: `rope_theta` beside a `rope_scaling` dict keyed by `type`; no `rope_parameters`.
    config = SimpleNamespace(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0}, max_position_embeddings=64)
    params = rope_parameters(config)
    assert (params["rope_type"], params["rope_theta"], params["factor"]) == ("linear", 500000.0, 4.0)
    assert max_rope_positions(config, params) == 256
    assert rope_parameters(SimpleNamespace(max_position_embeddings=8)) == {"rope_type": "default", "rope_theta": 10000.0}


def test_transformers_5_rope_parameters_are_read():
    config = LlamaConfig(max_position_embeddings=128, rope_parameters={
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 64,
    })  # fmt: skip
    params = rope_parameters(config)
    assert (params["rope_type"], params["rope_theta"]) == ("yarn", 1e6)
    assert max_rope_positions(config, params) == 256  # original 64 x factor 4


def test_unsupported_rope_type_is_a_clear_error():
    config = SimpleNamespace(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}, max_position_embeddings=8)
    with pytest.raises(ValueError, match="rope type 'longrope' is not supported.*supported: default, linear"):
        rope_parameters(config)


def test_dynamic_ntk_past_max_position_matches_hf(build_twins, paged_runner):
    """HF recomputes dynamic-NTK frequencies from the sequence length once it passes
    max_position_embeddings (16 here): a 20-token prefill, then decode steps that each
    grow the length, must match HF's forward and its generate() step logits."""
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, initializer_range=0.1, eos_token_id=None,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 100.0},
    )  # fmt: skip
    hf_model, model = build_twins(config)
    generator = torch.Generator().manual_seed(7)
    long_prompt = torch.randint(0, 256, (20,), generator=generator).tolist()
    with torch.no_grad():
        expected = hf_model(torch.tensor([long_prompt])).logits[0]
    (prefill,) = paged_runner(model, config).step([(0, long_prompt)])
    torch.testing.assert_close(prefill, expected, atol=1e-4, rtol=0)

    # A 10-token prompt and 12 greedy steps: positions 10..21 cross the 16 boundary.
    # (HF resets its frequencies because this prompt is shorter than 16.)
    prompt = torch.randint(0, 256, (10,), generator=generator).tolist()
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, 10, dtype=torch.long), do_sample=False,
            max_new_tokens=12, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    runner = paged_runner(model, config)
    logits = [runner.step([(0, prompt)])[0][-1]]
    tokens = [int(logits[-1].argmax())]
    for _ in range(11):
        logits.append(runner.step([(0, tokens[-1:])])[0][-1])
        tokens.append(int(logits[-1].argmax()))
    assert tokens == out.sequences[0, 10:].tolist()
    torch.testing.assert_close(torch.stack(logits), torch.cat(out.logits), atol=1e-4, rtol=0)

    # The scaling really was exercised: plain RoPE gives other logits past position 16.
    plain = LlamaConfig(**{**config.to_dict(), "rope_parameters": {"rope_type": "default", "rope_theta": 100.0}})
    plain_model = type(model)(plain).eval()
    plain_model.load_weights(hf_model.state_dict().items())
    (plain_prefill,) = paged_runner(plain_model, plain).step([(0, long_prompt)])
    assert (plain_prefill - expected).abs().max() > 1e-2


def test_positions_past_the_table_extend_it_as_hf_computes_them(build_twins, paged_runner):
    # --max-model-len may exceed max_position_embeddings (the engine warns); HF just
    # computes those positions, so must we, without an index error.
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=8, initializer_range=0.1,
    )  # fmt: skip
    hf_model, model = build_twins(config)
    tokens = torch.randint(0, 256, (21,), generator=torch.Generator().manual_seed(8)).tolist()
    runner = paged_runner(model, config)
    logits = torch.cat(runner.step([(0, tokens[:6])]) + runner.step([(0, tokens[6:])]))
    assert model.model.rotary_emb.cos_sin_cache.shape[0] >= 21
    with torch.no_grad():
        torch.testing.assert_close(logits, hf_model(torch.tensor([tokens])).logits[0], atol=1e-4, rtol=0)
