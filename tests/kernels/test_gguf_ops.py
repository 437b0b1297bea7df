"""fw's GGUF kernels (kernels/gguf_ops.c) against the torch dequantizer, for every type and path.

Two references per case. Exact: the activations quantized as the kernel does (int8 blocks of
32, scale amax / 127, round half to even) times the repacked weight's values, in float64:
the kernel must match it up to float32 summation order (``EXACT``). Float: the loader's
dequantizer (gguf_dequant.py, bit-identical to the gguf package) then a float32 matmul: the
kernel differs from it by the int8 rounding of the activations, as llama.cpp's does
(``FLOAT_REL``, relative Frobenius error). Each instruction-set path the CPU has is run
(AVX-512 VNNI, AVX2, portable C); one the CPU lacks is skipped, visibly.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from fw.kernels import gguf_ops
from fw.plugins.loaders.gguf_dequant import dequantize

pytestmark = pytest.mark.skipif(gguf_ops.load() is None, reason="no C compiler to build the GGUF kernels")

TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]
ISAS = ["avx512", "avx2", "portable"]
#: Kernel vs the exact reference: float32 sums in another order.
EXACT = dict(rtol=1e-4, atol_of_max=1e-5)
#: Kernel vs dequantize-then-float32-matmul: int8 activations (about 0.5% per value for
#: Gaussian inputs, ~0.6% relative error on a dot product of 512 terms; 2% leaves room for
#: one-row cases).
FLOAT_REL = 2e-2
#: The K-quants' scale (d times a 6-bit or 8-bit integer) is stored as fp16 in the repacked
#: layout: at most half an fp16 ulp (2^-11) of relative error on scale and min.
REPACK_REL = {Q.Q4_K: 2**-11, Q.Q5_K: 2**-11, Q.Q6_K: 2**-11}
#: Where each type stores its fp16 scale (and min) in a block: the tests give them sane values.
SCALE_OFFSETS = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q4_K: [0, 2],
                 Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def random_rows(qtype: Q, rows: int, cols: int, seed: int) -> np.ndarray:
    """``[rows, row_bytes]`` of random blocks whose fp16 scales are in [0.001, 0.02]."""
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(0.001, 0.02, size=(rows, cols // block_size)).astype(np.float16)
        data[:, :, offset:offset + 2] = scales.view(np.uint8).reshape(rows, cols // block_size, 2)
    return data.reshape(rows, -1)


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kernels see it: int8 blocks of 32 times their scale, in float64."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inverse)  # float32 product, rounded half to even as the kernels do
    return (q.double() * (amax / 127.0).double()).reshape(x.shape)


def require(isa: str, library=None) -> None:
    if not gguf_ops.isa_supported(isa, library):
        pytest.skip(f"this CPU cannot run the {isa} path")


@pytest.fixture(scope="module")
def weights():
    """Per type: (GGUF rows, float32 values from the loader's dequantizer, repacked bytes) of [37, 512]."""
    n, k, cases = 37, 512, {}
    for qtype in TYPES:
        rows = random_rows(qtype, n, k, seed=int(qtype))
        values = dequantize(rows.reshape(-1), qtype, (n, k))
        cases[qtype] = (rows, values, gguf_ops.repack(torch.from_numpy(rows), int(qtype), k))
    return cases


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_repacked_rows_dequantize_to_the_loaders_values(qtype, weights):
    _, values, packed = weights[qtype]
    back = gguf_ops.dequantize_rows(packed, int(qtype), 37, 512)
    bound = REPACK_REL.get(qtype, 0.0) * values.abs().amax() * 2  # scale and min each off by 2^-11
    assert (back - values).abs().max() <= bound
    ids = torch.tensor([36, 0, 17, 17])
    torch.testing.assert_close(gguf_ops.dequantize_rows(packed, int(qtype), 37, 512, ids, torch.bfloat16),
                               back[ids].bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_dequantization_for_prefill(qtype, isa, dtype, weights):
    require(isa)
    _, _, packed = weights[qtype]
    rows = gguf_ops.dequantize_rows(packed, int(qtype), 37, 512)
    transposed = gguf_ops.dequantize_transposed(packed, int(qtype), 37, 512, dtype, isa=isa)
    assert transposed.shape == (512, 48) and transposed.dtype == dtype
    torch.testing.assert_close(transposed[:, :37], rows.T.to(dtype), rtol=1e-6, atol=1e-6)
    assert (transposed[:, 37:] == 0).all()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 3, 16, 100])
def test_matmul_matches_both_references(qtype, isa, m, weights):
    require(isa)
    _, values, packed = weights[qtype]
    torch.manual_seed(m)
    x = torch.randn(m, 512)
    out = gguf_ops.matmul(x, packed, int(qtype), 37, 512, isa=isa)
    repacked_values = gguf_ops.dequantize_rows(packed, int(qtype), 37, 512).double()
    exact = (quantized_activations(x) @ repacked_values.T).float()
    torch.testing.assert_close(out, exact, rtol=EXACT["rtol"], atol=EXACT["atol_of_max"] * exact.abs().max().item())
    reference = x @ values.T
    assert ((out - reference).norm() / reference.norm()).item() < FLOAT_REL


@pytest.mark.parametrize("isa", ISAS)
def test_bfloat16_activations_and_a_strided_output(isa, weights):
    """bf16 in and out, written into columns of a wider tensor (a fused layer's part)."""
    require(isa)
    _, _, packed = weights[Q.Q4_1]
    x = torch.randn(5, 512 + 64).bfloat16()[:, :512]  # rows 576 apart
    wide = torch.full((5, 50), 7.0, dtype=torch.bfloat16)
    gguf_ops.matmul(x, packed, int(Q.Q4_1), 37, 512, out=wide[:, 6:43], isa=isa)
    repacked_values = gguf_ops.dequantize_rows(packed, int(Q.Q4_1), 37, 512).double()
    exact = (quantized_activations(x) @ repacked_values.T).float()
    torch.testing.assert_close(wide[:, 6:43].float(), exact, rtol=1e-2, atol=1e-2 * exact.abs().max().item())
    assert (wide[:, :6] == 7).all() and (wide[:, 43:] == 7).all()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 only")
def test_avx2_path_builds_for_an_avx2_only_cpu(weights):
    """What an AVX2-only CPU (AMD Zen 3) compiles: -march=x86-64-v3, no AVX-512 in the baseline.
    The AVX-512 functions still build (their own target attributes); the AVX2 path must run."""
    library = gguf_ops.load(("-march=x86-64-v3",))
    assert library is not None, "the kernels do not compile for an AVX2-only target"
    require("avx2", library)
    for qtype in (Q.Q4_1, Q.Q6_K, Q.Q8_0):
        rows, values, _ = weights[qtype]
        packed = gguf_ops.repack(torch.from_numpy(rows), int(qtype), 512, library=library)
        x = torch.randn(3, 512)
        out = gguf_ops.matmul(x, packed, int(qtype), 37, 512, isa="avx2", library=library)
        reference = x @ values.T
        assert ((out - reference).norm() / reference.norm()).item() < FLOAT_REL


def test_default_isa_is_the_best_the_cpu_runs(monkeypatch):
    gguf_ops.default_isa.cache_clear()
    try:
        best = gguf_ops.default_isa()
        assert gguf_ops.isa_supported(best)
        if gguf_ops.isa_supported("avx512"):
            assert best == "avx512"
        monkeypatch.setenv("FW_GGUF_ISA", "portable")
        gguf_ops.default_isa.cache_clear()
        assert gguf_ops.default_isa() == "portable"
        monkeypatch.setenv("FW_GGUF_ISA", "sse9")
        gguf_ops.default_isa.cache_clear()
        with pytest.raises(ValueError, match="FW_GGUF_ISA"):
            gguf_ops.default_isa()
    finally:
        gguf_ops.default_isa.cache_clear()


def test_wrappers_refuse_what_the_kernels_would_misread(weights):
    rows, _, packed = weights[Q.Q4_0]
    with pytest.raises(ValueError, match="repacked"):
        gguf_ops.matmul(torch.randn(1, 512), packed[:-1], int(Q.Q4_0), 37, 512)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        gguf_ops.matmul(torch.randn(512, 2).T, packed, int(Q.Q4_0), 37, 512)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        gguf_ops.matmul(torch.randn(1, 512).half(), packed, int(Q.Q4_0), 37, 512)
    with pytest.raises(ValueError, match="out must be"):
        gguf_ops.matmul(torch.randn(2, 512), packed, int(Q.Q4_0), 37, 512, out=torch.empty(2, 36))
    with pytest.raises(ValueError, match="do not take"):
        gguf_ops.repack(torch.from_numpy(rows), int(Q.Q2_K), 512)
    with pytest.raises(IndexError):
        gguf_ops.dequantize_rows(packed, int(Q.Q4_0), 37, 512, torch.tensor([37]))
