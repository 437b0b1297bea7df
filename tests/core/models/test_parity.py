"""Each architecture and RoPE variant against Hugging Face transformers in float32.

Tiny random-weight twins (same weights in HF's model and ours) must give the same
logits for a full prefill, for a paged run that mixes prefills, cached-prefix chunks
and decodes of two sequences in one flat batch, and the same greedy tokens as
``generate``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1,
    bos_token_id=None, eos_token_id=None, pad_token_id=None,
)  # fmt: skip

CASES = {
    "llama-mha": (LlamaConfig, dict(num_key_value_heads=4)),
    "llama-gqa2-tied-bias": (
        LlamaConfig, dict(num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, mlp_bias=True)
    ),
    "llama-gqa4-head-dim": (LlamaConfig, dict(num_key_value_heads=1, head_dim=32, rope_theta=500.0)),
    # transformers-4 style `rope_scaling` (converted by transformers 5) and native `rope_parameters`.
    "llama-linear": (LlamaConfig, dict(num_key_value_heads=2, rope_scaling={"type": "linear", "factor": 2.0})),
    "llama-dynamic": (
        # Within max_position_embeddings; test_rotary.py covers dynamic NTK past it.
        LlamaConfig, dict(num_key_value_heads=2, rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    ),
    "llama-llama3": (
        LlamaConfig,
        dict(num_key_value_heads=2, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        }),
    ),
    "llama-yarn": (
        LlamaConfig,
        dict(num_key_value_heads=2, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
        }),
    ),
    "mistral": (MistralConfig, dict(num_key_value_heads=2, sliding_window=None)),
    "mistral-window": (MistralConfig, dict(num_key_value_heads=2, sliding_window=6)),
    "qwen2-tied": (Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2-yarn": (
        Qwen2Config,
        dict(num_key_value_heads=1, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 2.0, "original_max_position_embeddings": 64,
        }),
    ),
    "qwen3": (Qwen3Config, dict(num_key_value_heads=2, head_dim=32)),
    "qwen3-tied-gqa4": (Qwen3Config, dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)),
}  # fmt: skip

TOLERANCE = 1e-4


def make_config(case: str):
    config_class, overrides = CASES[case]
    return config_class(**{**COMMON, **overrides})


def random_tokens(length: int, seed: int, vocab_size: int = 256) -> list[int]:
    return torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0]


def hf_greedy(hf_model, prompt: list[int], num_steps: int) -> list[int]:
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=num_steps, pad_token_id=0,
        )  # fmt: skip
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module", params=list(CASES))
def twins(request, build_twins):
    config = make_config(request.param)
    hf_model, model = build_twins(config)
    return config, hf_model, model


def test_prefill_logits_match_hf_at_every_position(twins, paged_runner):
    config, hf_model, model = twins
    prompt = random_tokens(20, seed=1)
    (ours,) = paged_runner(model, config).step([(0, prompt)])
    expected = hf_logits(hf_model, prompt)
    assert ours.shape == expected.shape == (20, config.vocab_size)
    assert expected.abs().max() > 0.5  # logits large enough for the tolerance to mean something
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_paged_mixed_batch_matches_hf(twins, paged_runner):
    """Two sequences share every step: prefills, a chunk after a cached prefix, decodes."""
    config, hf_model, model = twins
    seq_a, seq_b = random_tokens(19, seed=2), random_tokens(11, seed=3)
    # (tokens of A, tokens of B) per step, as [start, end) slices; B finishes before A.
    plan = [((0, 8), (0, 5)), ((8, 13), (5, 6)), ((13, 14), (6, 9)), ((14, 15), (9, 10)), ((15, 16), (10, 11)),
            ((16, 17), None), ((17, 19), None)]  # fmt: skip
    runner = paged_runner(model, config)
    got = {0: [], 1: []}
    for span_a, span_b in plan:
        chunks = [(0, seq_a[slice(*span_a)])] + ([(1, seq_b[slice(*span_b)])] if span_b else [])
        for (seq_id, _), logits in zip(chunks, runner.step(chunks)):
            got[seq_id].append(logits)
    torch.testing.assert_close(torch.cat(got[0]), hf_logits(hf_model, seq_a), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(torch.cat(got[1]), hf_logits(hf_model, seq_b), atol=TOLERANCE, rtol=0)


def test_greedy_tokens_match_hf_generate(twins, paged_runner):
    config, hf_model, model = twins
    prompts = [random_tokens(7, seed=4), random_tokens(13, seed=5)]
    ours = paged_runner(model, config).greedy(prompts, num_steps=10)
    assert ours == [hf_greedy(hf_model, prompt, 10) for prompt in prompts]
