"""The contract of a quantization method, checked for every method fw's plugins register.

Each method's test checkpoints (conftest.all_cases(), written by packers independent of the
loading code) are loaded into fused and plain linear layers through the layers' own
``weight_loader``; after ``process_weights_after_loading``, ``apply`` must equal the
float32 matmul with the weights the packer dequantizes to, and the method's canonical
layout must dequantize to them too. Tolerances: float32 activations, 1e-4 of the largest
output (the kernels accumulate in another order; both paths, per-row codes and
dequantize-then-matmul, run); bfloat16 activations, 2% (bfloat16's own rounding of the input
and the output). A registered method without a case fails the suite until it gets one.
"""

from __future__ import annotations

import pytest
import torch

from fw.core.layers.build import ModelBuildContext, building_model
from fw.core.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod
from fw.core.plugins import load_plugins
from fw.plugins.quantization import fp8_weights, int_weights

BUILTIN = load_plugins(env={"FW_PLUGINS": ""})
#: Each method once, under its own name (aliases name the same class).
METHODS = sorted(name for name in BUILTIN.quantization_methods.names()
                 if BUILTIN.quantization_methods.get(name).name == name)
NOT_MINE = {"gguf"}  # packed GGUF: its own contract test (tests/plugins/quantization/test_gguf*.py)


def build(method, layer_cls, *args, prefix: str):
    """A layer built with ``method`` in the build context, as the engine builds it."""
    context = ModelBuildContext(TorchOps(), UnquantizedLinearMethod(), method)
    with building_model(context):
        return layer_cls(*args, prefix=prefix)


def load_parts(layer, parts: dict, packed_parts: dict) -> None:
    """Hand each part's packed tensors to the layer's loaders, as load_weights does."""
    params = dict(layer.named_parameters())
    for shard_id, packed in packed_parts.items():
        for suffix, tensor in packed.tensors.items():
            param = params[suffix]
            param.weight_loader(param, tensor, shard_id)


LAYERS = {
    # name: (layer class, constructor args, {shard id: [out, in]}); K and the parts are multiples of 32
    "qkv": (QKVParallelLinear, (64, 16, 4, 2), "model.layers.0.self_attn.qkv_proj",
            {"q": (64, 64), "k": (32, 64), "v": (32, 64)}),
    "gate_up": (MergedColumnParallelLinear, (96, [64, 64]), "model.layers.0.mlp.gate_up_proj",
                {0: (64, 96), 1: (64, 96)}),
    "down": (RowParallelLinear, (128, 64), "model.layers.0.mlp.down_proj", {None: (64, 128)}),
}


@pytest.fixture(params=METHODS)
def method_cases(request, quant_cases):
    name = request.param
    if name in NOT_MINE:
        pytest.skip(f"{name} has its own contract test")
    if name not in quant_cases:
        pytest.fail(f"quantization method {name!r} has no test checkpoint packer in tests/plugins/quantization/"
                    "conftest.all_cases(); add one so that it is held to the contract")
    return quant_cases[name]


def loaded_layer(case, layer_name: str, dtype: torch.dtype, seed: int = 0):
    """(the layer, processed, with the case's packed parts loaded; its canonical weights; the
    float32 weight ``[N, K]`` the packer says they dequantize to)."""
    torch.manual_seed(seed)
    layer_cls, args, prefix, shapes = LAYERS[layer_name]
    method = BUILTIN.quantization_methods.get(case.method).from_config(case.quant_config or {})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the model's dtype, as the engine sets it while building
    try:
        layer = build(method, layer_cls, *args, prefix=prefix)
    finally:
        torch.set_default_dtype(previous)
    # Weights as a checkpoint in the model's dtype holds them (online methods round what they read).
    packed = {shard: case.pack((torch.randn(*shape) * 0.1).to(dtype).float()) for shard, shape in shapes.items()}
    load_parts(layer, shapes, packed)
    canonical = layer.linear_method.canonical(layer)
    layer.linear_method.process_weights_after_loading(layer)
    return layer, canonical, torch.cat([p.dequantized for p in packed.values()])


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_apply_equals_the_dequantized_matmul(method_cases, layer_name):
    for case in method_cases:
        layer, canonical, expected_weight = loaded_layer(case, layer_name, torch.float32)
        reference = fp8_weights if isinstance(canonical, fp8_weights.Fp8Weights) else int_weights
        torch.testing.assert_close(reference.dequantize(canonical), expected_weight, atol=1e-6, rtol=1e-6,
                                   msg=lambda m: f"{case.id}: canonical layout: {m}")
        for rows in (1, 5, 40):  # the per-row kernel and dequantize-then-matmul
            x = torch.randn(rows, expected_weight.shape[1])
            expected = x @ expected_weight.T
            tolerance = 1e-4 * expected.abs().max().item()
            torch.testing.assert_close(layer(x), expected, atol=tolerance, rtol=0,
                                       msg=lambda m: f"{case.id}, {rows} rows: {m}")
            torch.testing.assert_close(reference.reference_matmul(x, canonical), expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize("layer_name", ["qkv", "down"])
def test_apply_in_bfloat16_is_the_matmul_up_to_bfloat16_rounding(method_cases, layer_name):
    for case in method_cases:
        layer, _, expected_weight = loaded_layer(case, layer_name, torch.bfloat16)
        for rows in (1, 40):
            x = torch.randn(rows, expected_weight.shape[1]).bfloat16()
            expected = x.float() @ expected_weight.T
            out = layer(x)
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out.float(), expected, atol=0.02 * expected.abs().max().item(), rtol=0,
                                       msg=lambda m: f"{case.id}, {rows} rows: {m}")


def test_every_method_is_registered_with_its_own_entry_point():
    records = {r.name: r for r in BUILTIN.records}
    for name in METHODS:
        owners = [r for r in records.values() if f"quantization: {name}" in r.provides]
        assert len(owners) == 1 and owners[0].module.startswith("fw.plugins.quantization."), name


def test_the_torch_kernels_for_other_devices_match_the_reference(quant_cases):
    """What CUDA runs without Triton or for layouts the Triton kernels refuse (and CPU shapes the C
    kernel refuses); the Triton kernels' own tests are tests/kernels/test_triton_quant.py."""
    from fw.plugins.quantization.fp8_method import TorchFp8Kernel
    from fw.plugins.quantization.int_kernels import TorchIntKernel

    for method in ("gptq", "fp8"):
        for case in quant_cases[method]:
            _, canonical, expected_weight = loaded_layer(case, "qkv", torch.float32)
            fp8 = isinstance(canonical, fp8_weights.Fp8Weights)
            kernel = TorchFp8Kernel(canonical) if fp8 else TorchIntKernel(canonical)
            x = torch.randn(3, expected_weight.shape[1])
            expected = x @ expected_weight.T
            torch.testing.assert_close(kernel(x, None), expected, atol=1e-4 * expected.abs().max().item(), rtol=0,
                                       msg=lambda m: f"{case.id}: {m}")


def test_the_reference_can_round_activations_as_w8a8_kernels_do():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    codes = torch.randint(0, 256, (64, 32))
    weights = int_weights.IntWeights(int_weights.pack_codes(codes, 8), torch.full((1, 32), 0.01), None, None, 8, 64,
                                     input_scheme="dynamic")
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    expected = (torch.round(x / scale) * scale) @ int_weights.dequantize(weights).T
    torch.testing.assert_close(int_weights.reference_matmul(x, weights, quantize_input_too=True), expected)
    fp8 = fp8_weights.quantize_per_channel(torch.randn(32, 64))
    rounded = fp8_weights.reference_matmul(x, fp8, quantize_input_too=True)
    plain = fp8_weights.reference_matmul(x, fp8)
    assert 0 < (rounded - plain).abs().max() < 0.1 * plain.abs().max()
