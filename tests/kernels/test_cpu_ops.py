"""The fused C ops for the CPU against the torch compositions they replace."""

from __future__ import annotations

import pytest
import torch

from fw.core.layers.ops import rms_norm as torch_rms_norm
from fw.core.layers.rotary import apply_rotary
from fw.kernels import cpu_ops

pytestmark = pytest.mark.skipif(cpu_ops.load() is None, reason="no C compiler to build the CPU ops")

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_torch_and_updates_the_residual(dtype, with_residual):
    torch.manual_seed(0)
    rows, dim = 37, 576
    x = torch.randn(rows, dim + 8, dtype=dtype)[:, :dim]  # a strided view, as a slice of a fused output
    weight = torch.randn(dim, dtype=dtype)
    residual = torch.randn(rows, dim, dtype=dtype) if with_residual else None
    stream = (x + residual) if with_residual else x
    expected = torch_rms_norm(stream, weight, 1e-5)
    before = residual.clone() if with_residual else None
    out = cpu_ops.rms_norm(x, weight, 1e-5, residual)
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    if with_residual:
        torch.testing.assert_close(residual, before + x, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_matches_torch(dtype):
    torch.manual_seed(1)
    gate_up = torch.randn(19, 2 * 1536, dtype=dtype) * 3
    gate, up = gate_up.chunk(2, dim=-1)
    expected = (torch.nn.functional.silu(gate.float()) * up.float()).to(dtype)
    torch.testing.assert_close(cpu_ops.silu_and_mul(gate_up), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 128), (2, 1, 16)])
def test_rotary_in_place_matches_torch_on_views_of_a_fused_qkv(dtype, heads, kv_heads, head_dim):
    torch.manual_seed(2)
    tokens = 23
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype)
    q, k, _ = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim)
    table = torch.randn(50, head_dim, dtype=dtype)
    positions = torch.randint(0, 50, (tokens,))
    cos, sin = table[positions].chunk(2, dim=-1)
    expected_q, expected_k = apply_rotary(q.clone(), cos, sin), apply_rotary(k.clone(), cos, sin)
    v_before = qkv[:, (heads + kv_heads) * head_dim:].clone()
    cpu_ops.rotary_neox_(q, k, cos, sin)
    torch.testing.assert_close(q, expected_q, **TOLERANCE[dtype])
    torch.testing.assert_close(k, expected_k, **TOLERANCE[dtype])
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], v_before)  # v is untouched


def test_sampling_greedy_rows_take_the_argmax_and_masked_tokens_never_come_out():
    torch.manual_seed(3)
    logits = torch.randn(64, 1000) * 4
    logits[:, ::2] = float("-inf")  # only odd tokens are possible
    temperature = torch.where(torch.arange(64) % 2 == 0, 0.0, 0.8)
    uniform = torch.rand(64)
    tokens = cpu_ops.sample_rows(logits, temperature, uniform)
    greedy = temperature == 0
    assert torch.equal(tokens[greedy], logits[greedy].argmax(dim=-1))
    assert bool((tokens % 2 == 1).all())
    # uniform at the edges of [0, 1) still gives possible tokens
    edges = cpu_ops.sample_rows(logits[:2], torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0 - 1e-7]))
    assert bool((edges % 2 == 1).all())


def test_sampling_is_the_inverse_cdf_draw_of_softmax():
    torch.manual_seed(4)
    logits = torch.randn(8, 300)
    temperature = torch.full((8,), 0.7)
    uniform = torch.rand(8)
    cdf = (logits / 0.7).softmax(dim=-1).cumsum(dim=-1)
    expected = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(1)).squeeze(1)
    assert torch.equal(cpu_ops.sample_rows(logits, temperature, uniform), expected)


def test_sampling_follows_the_distribution():
    torch.manual_seed(5)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(20000, 1)
    tokens = cpu_ops.sample_rows(logits, torch.ones(20000), torch.rand(20000))
    frequencies = torch.bincount(tokens, minlength=4).float() / 20000
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("FW_CPU_OPS", "0")
    cpu_ops.load.cache_clear()
    try:
        assert cpu_ops.load() is None
    finally:
        monkeypatch.delenv("FW_CPU_OPS")
        cpu_ops.load.cache_clear()
