"""fw's int4 / int8 CPU kernels (kernels/cpu_quant.c) against the canonical layout's torch
reference, in each build the CPU can run: AVX-512 where present, AVX2, and plain C."""

from __future__ import annotations

import pytest
import torch

from fw.kernels import cpu_quant
from fw.plugins.quantization.int_weights import IntWeights, dequantize, pack_codes, reference_matmul

if cpu_quant.load() is None:
    pytest.skip("no C compiler: the int kernels are not built here", allow_module_level=True)


def available_variants() -> list[str]:
    from fw.plugins.platforms.cpu import cpu_flags

    flags = cpu_flags()
    variants = ["portable"]
    if {"avx2", "fma", "f16c"} <= flags:
        variants.append("avx2")
    if "avx512f" in flags:
        variants.append("native")
    return variants


def random_weights(bits: int, group_size: int, num_inputs: int, num_outputs: int, zeros: bool,
                   scale_dtype: torch.dtype) -> IntWeights:
    codes = torch.randint(0, 2**bits, (num_inputs, num_outputs))
    scales = (torch.rand(num_inputs // group_size, num_outputs) * 0.05 + 0.01).to(scale_dtype)
    zero_points = torch.randint(0, 2**bits, scales.shape, dtype=torch.uint8) if zeros else None
    return IntWeights(pack_codes(codes, bits), scales, zero_points, None, bits, group_size)


@pytest.mark.parametrize("variant", available_variants())
@pytest.mark.parametrize("bits,group_size,zeros,scale_dtype", [
    (4, 32, True, torch.float16), (4, 64, False, torch.bfloat16), (4, 256, True, torch.float32),
    (8, 32, True, torch.float16), (8, 256, False, torch.bfloat16),
])
def test_gemm_and_dequant_match_the_reference(variant, bits, group_size, zeros, scale_dtype):
    torch.manual_seed(0)
    # 48 outputs: whole tiles plus a one-vector tail on 16-wide builds; 7 rows: a partial row block.
    num_outputs = 48 if cpu_quant.vector_width(variant) <= 16 else 64
    weights = random_weights(bits, group_size, 256, num_outputs, zeros, scale_dtype)
    tiled = cpu_quant.tile(weights.qweight, weights.scales, weights.zeros, bits, group_size, variant)
    for rows in (1, 4, 7):
        x = torch.randn(rows, 256)
        expected = reference_matmul(x, weights)
        torch.testing.assert_close(cpu_quant.int_gemm(x, tiled), expected, atol=1e-4 * expected.abs().max().item(),
                                   rtol=0)
    exact = dequantize(weights).T
    assert torch.equal(cpu_quant.int_dequant(tiled, torch.float32), exact)
    assert torch.equal(cpu_quant.int_dequant(tiled, torch.bfloat16), exact.bfloat16())  # rounded as torch rounds


def test_shapes_the_kernels_do_not_take_are_refused_not_misread():
    weights = random_weights(4, 32, 64, 24, True, torch.float16)
    assert not cpu_quant.supports(24, 4, 32)  # 24 outputs: not whole vectors
    with pytest.raises(ValueError, match="do not take N=24"):
        cpu_quant.tile(weights.qweight, weights.scales, weights.zeros, 4, 32)
    good = random_weights(4, 32, 64, 32, True, torch.float16)
    tiled = cpu_quant.tile(good.qweight, good.scales, good.zeros, 4, 32)
    with pytest.raises(ValueError, match="x must be"):
        cpu_quant.int_gemm(torch.randn(2, 96), tiled)
    with pytest.raises(ValueError, match="out must be"):
        cpu_quant.int_dequant(tiled, torch.bfloat16, out=torch.empty(3, 3, dtype=torch.bfloat16))


def test_layers_use_the_c_kernel_where_it_fits_and_torch_elsewhere():
    from fw.plugins.quantization.int_kernels import CpuIntKernel, ScratchBuffers, TorchIntKernel, int_kernel_for

    scratch = ScratchBuffers()
    assert isinstance(int_kernel_for(random_weights(4, 32, 64, 32, True, torch.float16), torch.device("cpu"), scratch),
                      CpuIntKernel)
    odd = random_weights(4, 32, 64, 24, True, torch.float16)
    kernel = int_kernel_for(odd, torch.device("cpu"), scratch)
    assert isinstance(kernel, TorchIntKernel)
    x = torch.randn(3, 64)
    torch.testing.assert_close(kernel(x, None), reference_matmul(x, odd), atol=1e-4, rtol=1e-4)
