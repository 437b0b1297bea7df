"""The fp8 KV cache's pieces: checkpoint scale names, scale loading and calculation, saturation,
and the start-up refusals."""

from __future__ import annotations

import pytest
import torch

from fw.core.attention.kv_quant import KVScales, kv_cache_dtype, kv_scale_target, quantize_kv
from fw.core.errors import FwError, ModelLoadError
from fw.plugins.platforms.cpu import CpuPlatform


@pytest.mark.parametrize("name, target", [
    ("model.layers.3.self_attn.k_scale", ("model.layers.3.self_attn", "k")),
    ("model.layers.3.self_attn.v_scale", ("model.layers.3.self_attn", "v")),
    ("model.layers.0.self_attn.attn.k_scale", ("model.layers.0.self_attn", "k")),
    ("model.layers.0.self_attn.attn.v_scale", ("model.layers.0.self_attn", "v")),
    ("model.layers.7.self_attn.k_proj.output_scale", ("model.layers.7.self_attn", "k")),  # compressed-tensors
    ("model.layers.7.self_attn.v_proj.output_scale", ("model.layers.7.self_attn", "v")),
    ("model.layers.1.self_attn.k_proj.k_scale", ("model.layers.1.self_attn", "k")),  # ModelOpt
    ("model.layers.1.self_attn.v_proj.v_scale", ("model.layers.1.self_attn", "v")),
    ("model.layers.2.self_attn.kv_scale", ("model.layers.2.self_attn", "kv")),  # deprecated: both
    ("model.layers.2.self_attn.q_scale", ("model.layers.2.self_attn", None)),  # accepted, ignored
    ("model.layers.2.self_attn.attn.prob_scale", ("model.layers.2.self_attn", None)),
])
def test_the_scale_names_vllm_accepts_map_to_their_attention_layer(name, target):
    assert kv_scale_target(name) == target


@pytest.mark.parametrize("name", [
    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.k_proj.weight_scale",
    "model.layers.0.self_attn.k_proj.input_scale", "model.layers.0.self_attn.q_proj.output_scale",
    "model.layers.0.self_attn.v_proj.k_scale", "model.layers.0.mlp.down_proj.output_scale", "lm_head.weight",
])
def test_other_tensors_are_not_kv_scales(name):
    assert kv_scale_target(name) is None


def test_loading_takes_one_positive_finite_value_per_scale():
    scales = KVScales()
    scales.load("k", torch.tensor([0.25]), "a.k_scale")
    scales.load("v", torch.tensor(0.5, dtype=torch.bfloat16), "a.v_scale")
    assert (scales.k, scales.v, scales.source) == (0.25, 0.5, "checkpoint")
    scales.load("kv", torch.tensor(2.0), "a.kv_scale")
    assert (scales.k, scales.v) == (2.0, 2.0)
    with pytest.raises(ModelLoadError, match="'a.k_scale' holds 4 values; .* one scale per layer"):
        scales.load("k", torch.ones(4), "a.k_scale")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ModelLoadError, match="'a.v_scale' is .*; a KV-cache scale must be positive and finite"):
            scales.load("v", torch.tensor(bad), "a.v_scale")


def test_calculated_scales_map_the_largest_magnitude_to_the_format_maximum():
    scales = KVScales()
    key, value = torch.randn(7, 2, 16), torch.zeros(7, 2, 16)
    key[3, 1, 5] = -44.8
    scales.calculate(key, value, torch.float8_e4m3fn)
    assert scales.k == pytest.approx(44.8 / 448) and scales.v == 1.0  # all zeros: nothing to fit, 1.0
    assert scales.source == "calculated"
    stored = quantize_kv(key, scales.k, torch.float8_e4m3fn)
    assert stored.float().abs().max() == 448
    scales.calculate(key, key, torch.float8_e5m2)
    assert scales.v == pytest.approx(44.8 / 57344)


def test_quantization_saturates_instead_of_overflowing():
    x = torch.tensor([1e6, -1e6, 449.0, 3.0, -0.0])
    assert quantize_kv(x, 1.0, torch.float8_e4m3fn).float().tolist() == [448.0, -448.0, 448.0, 3.0, -0.0]
    assert quantize_kv(x * 100, 1.0, torch.float8_e5m2).float().tolist()[:2] == [57344.0, -57344.0]
    assert quantize_kv(x, 0.5, torch.float8_e4m3fn).float().tolist()[3] == 6.0


def test_cache_dtype_names_and_refusals(monkeypatch):
    platform = CpuPlatform()
    assert kv_cache_dtype("auto", torch.bfloat16, platform) == torch.bfloat16
    assert kv_cache_dtype("fp8", torch.bfloat16, platform) == torch.float8_e4m3fn
    assert kv_cache_dtype("fp8_e4m3", torch.float32, platform) == torch.float8_e4m3fn
    assert kv_cache_dtype("fp8_e5m2", torch.float32, platform) == torch.float8_e5m2

    monkeypatch.setattr(CpuPlatform, "kv_cache_dtypes", lambda self: [torch.float8_e5m2])
    with pytest.raises(FwError, match=r"^--kv-cache-dtype fp8 is not supported on the cpu platform; "
                                      r"supported: auto, fp8_e5m2$"):
        kv_cache_dtype("fp8", torch.bfloat16, platform)
    monkeypatch.delattr(torch, "float8_e4m3fn")
    with pytest.raises(FwError, match=r"^--kv-cache-dtype fp8_e4m3 needs torch's float8 dtypes \(torch 2.1 or "
                                      r"newer\); torch .* has none$"):
        kv_cache_dtype("fp8_e4m3", torch.bfloat16, platform)
