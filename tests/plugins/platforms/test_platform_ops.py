"""Contract: every available platform's ops and unquantized linear method compute what plain
torch does, in every dtype the platform supports (parametrized over the platform registry)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fw.core.layers.build import ModelBuildContext, building_model
from fw.core.layers.linear import MergedColumnParallelLinear, process_weights_after_loading
from fw.core.layers.ops import TorchOps
from fw.core.plugins import load_plugins

CASES = [(registration.obj, dtype)
         for registration in load_plugins(env={"FW_PLUGINS": ""}).platforms.registrations()
         if registration.obj.is_available()
         for dtype in registration.obj().supported_dtypes()]
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
             torch.float16: dict(atol=2e-3, rtol=2e-3)}
REFERENCE = TorchOps()


@pytest.fixture(params=CASES, ids=lambda case: f"{case[0].name}-{str(case[1]).removeprefix('torch.')}")
def case(request):
    platform_cls, dtype = request.param
    platform = platform_cls()
    return platform, dtype, platform.torch_device()


def randn(*shape, dtype, device) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).to(device, dtype)


@torch.inference_mode()
def test_norms_match_torch(case):
    platform, dtype, device = case
    ops, tolerance = platform.ops(dtype), TOLERANCE[dtype]
    x, residual, weight = (randn(*shape, dtype=dtype, device=device) for shape in ((7, 64), (7, 64), (64,)))
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6), REFERENCE.rms_norm(x, weight, 1e-6), **tolerance)
    heads = randn(7, 4, 64, dtype=dtype, device=device)  # per-head norms (Qwen3's q/k norm)
    torch.testing.assert_close(ops.rms_norm(heads, weight, 1e-6), REFERENCE.rms_norm(heads, weight, 1e-6), **tolerance)
    out, stream = ops.fused_add_rms_norm(x, residual.clone(), weight, 1e-6)
    expected_out, expected_stream = REFERENCE.fused_add_rms_norm(x, residual.clone(), weight, 1e-6)
    torch.testing.assert_close(out, expected_out, **tolerance)
    torch.testing.assert_close(stream, expected_stream, **tolerance)


@torch.inference_mode()
def test_silu_and_mul_and_rotary_match_torch(case):
    platform, dtype, device = case
    ops, tolerance = platform.ops(dtype), TOLERANCE[dtype]
    gate_up = randn(5, 96, dtype=dtype, device=device)
    torch.testing.assert_close(ops.silu_and_mul(gate_up), REFERENCE.silu_and_mul(gate_up), **tolerance)
    q, k = randn(5, 4, 16, dtype=dtype, device=device), randn(5, 2, 16, dtype=dtype, device=device)
    freqs = randn(5, 8, dtype=torch.float32, device=device)
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)  # as RotaryEmbedding slices its table
    cos, sin = cos_sin.chunk(2, dim=-1)
    expected_q, expected_k = REFERENCE.rotary_neox(q, k, cos, sin)
    got_q, got_k = ops.rotary_neox(q.clone(), k.clone(), cos, sin)
    torch.testing.assert_close(got_q, expected_q, **tolerance)
    torch.testing.assert_close(got_k, expected_k, **tolerance)


@torch.inference_mode()
def test_sample_rows_matches_torch(case):
    platform, _, device = case
    ops = platform.ops(torch.float32)  # what the sampler asks for
    assert torch.float32 in ops.sample_rows_dtypes
    # Well-separated logits, so that rounding cannot move a draw across a token boundary.
    logits = torch.tensor([[4.0, 1.0, 0.0, -2.0, 2.5]] * 6, device=device)
    temperature = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 0.0], device=device)
    uniform = torch.tensor([0.3, 0.1, 0.9, 0.55, 0.75, 0.99], device=device)
    for dtype in ops.sample_rows_dtypes:
        expected = REFERENCE.sample_rows(logits, temperature, uniform)
        assert torch.equal(ops.sample_rows(logits.to(dtype), temperature, uniform), expected), dtype


def test_unquantized_linear_method_matches_f_linear(case):
    platform, dtype, device = case
    gate, up, bias = (randn(*shape, dtype=dtype, device=device) for shape in ((16, 32), (8, 32), (24,)))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), building_model(ModelBuildContext.for_platform(platform, dtype)):
            layer = MergedColumnParallelLinear(32, [16, 8], bias=True)
    finally:
        torch.set_default_dtype(previous)
    assert type(layer.linear_method) is type(platform.unquantized_linear_method(dtype))
    for index, part in enumerate((gate, up)):
        layer.weight.weight_loader(layer.weight, part, index)
        layer.bias.weight_loader(layer.bias, bias[:16] if index == 0 else bias[16:], index)
    process_weights_after_loading(layer)
    x = randn(3, 32, dtype=dtype, device=device)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, torch.cat([gate, up]), bias), **TOLERANCE[dtype])
