"""Triton W4A16 / W8A16 and FP8 matmuls (kernels/triton_quant.py) against the canonical layouts'
torch references, ``int_weights.reference_matmul`` and ``fp8_weights.reference_matmul``.

Without a GPU the kernels run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it)
on small shapes: a covering subset on every run, sweeps marked slow. On a GPU the same tests run
compiled, and the ``cuda`` tests add model-sized shapes. Shapes are chosen against the tiles:
M = 1, 7, 33 and N = 24, 40, 56, 72, 100, 136, 200 are no multiples of BLOCK_M / BLOCK_N (16-64 and
32 / 64); FP8's K = 70, 80, 100, 300 leave a partial K tile, and its block scales partial blocks.
(An int layout's K is always whole tiles: the K tile divides the group size.) The x compared
with the reference is a column slice of a wider tensor, so its row stride is not K.

Tolerances, from what the kernels compute: x times weights that are exact in x's dtype (codes
minus zero points are integers below 256; every e4m3 value is a float16 and bfloat16 value), so
the products are exact, summed in float32, and scaled in float32. They differ from the float32
reference by (a) the float32 summation order and where the scale multiplies: ``atol`` is 1e-5 of
the largest output (1e-4 for the GPU's K up to 11008); (b) the one rounding of the output to x's
dtype: ``rtol`` is one unit in its last place, 2**-7 for bfloat16 (the interpreter truncates
float32 to bfloat16 where a GPU rounds to nearest), 2**-10 for float16, none for float32. Where x
is the identity, the outputs are the weights themselves and must equal the reference's bits.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from itertools import product
from types import SimpleNamespace

import pytest
import torch

from fw.plugins.quantization import fp8_weights, int_weights
from fw.plugins.quantization.fp8_method import TorchFp8Kernel, TritonFp8Kernel, fp8_kernel_for
from fw.plugins.quantization.fp8_weights import Fp8Weights
from fw.plugins.quantization.int_kernels import ScratchBuffers, TorchIntKernel, TritonIntKernel, int_kernel_for
from fw.plugins.quantization.int_weights import IntWeights

RTOL = {torch.float32: 0.0, torch.float16: 2**-10, torch.bfloat16: 2**-7}
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@pytest.fixture(scope="module")
def quant() -> SimpleNamespace:
    """The kernels' module, whether it is interpreted, and the device its tensors must live on."""
    from triton.runtime.interpreter import InterpretedFunction

    from fw.kernels import triton_quant

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpret and not torch.cuda.is_available():
        pytest.fail("no GPU and TRITON_INTERPRET is not 1: tests/conftest.py should have set it")
    if isinstance(triton_quant._int_matmul_kernel, InterpretedFunction) != interpret:
        pytest.fail(f"triton_quant was imported before TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')} was set")
    return SimpleNamespace(ops=triton_quant, interpreted=interpret,
                           device=torch.device("cpu" if interpret else "cuda"))


def on(device: torch.device, weights):
    """``weights`` (IntWeights or Fp8Weights) with its tensors moved to ``device``."""
    return dataclasses.replace(weights, **{field.name: value.to(device) for field in dataclasses.fields(weights)
                                           if isinstance(value := getattr(weights, field.name), torch.Tensor)})


def random_int_weights(seed: int, bits: int, group_size: int, num_inputs: int, num_outputs: int, zeros: bool,
                       act_order: bool, scale_dtype: torch.dtype = torch.float16) -> IntWeights:
    """Random codes, scales and zero points (``group_size`` -1: channel-wise) through ``from_codes``;
    with ``act_order`` the inputs are dealt to the groups in random order (a ``g_idx``)."""
    gen = torch.Generator().manual_seed(seed)
    group_size = num_inputs if group_size == -1 else group_size
    num_groups = num_inputs // group_size
    codes = torch.randint(0, 2**bits, (num_inputs, num_outputs), generator=gen)
    scales = (torch.rand(num_groups, num_outputs, generator=gen) * 0.05 + 0.01).to(scale_dtype)
    zero_points = torch.randint(0, 2**bits, (num_groups, num_outputs), generator=gen) if zeros else None
    g_idx = None
    if act_order:
        g_idx = (torch.arange(num_inputs) // group_size)[torch.randperm(num_inputs, generator=gen)]
    weights = int_weights.from_codes(codes, scales, zero_points, bits, group_size, g_idx)
    assert (weights.perm is not None) == act_order
    return weights


def random_fp8_codes(gen: torch.Generator, num_outputs: int, num_inputs: int) -> torch.Tensor:
    """float8_e4m3fn ``[N, K]`` drawn uniformly from the 254 finite codes: both signs, zero,
    subnormals, up to 448."""
    codes = torch.randint(0, 254, (num_outputs, num_inputs), generator=gen, dtype=torch.uint8)
    return (codes + (codes >= 0x7F).to(torch.uint8)).view(torch.float8_e4m3fn)  # skip NaN, 0x7F and 0xFF


def random_fp8_weights(seed: int, strategy: str, num_outputs: int, num_inputs: int,
                       block_size: tuple[int, int] | None = None) -> Fp8Weights:
    """Random FP8 weights: "channel" rounds a random float weight with ``quantize_per_channel``
    (online fp8); "tensor" and "block" take random codes and random positive scales."""
    gen = torch.Generator().manual_seed(seed)
    if strategy == "channel":
        weights = fp8_weights.quantize_per_channel(torch.randn(num_outputs, num_inputs, generator=gen))
        return dataclasses.replace(weights, input_scheme=None)
    if strategy == "tensor":
        shape = (1,)
    else:
        shape = (-(-num_outputs // block_size[0]), -(-num_inputs // block_size[1]))
    scale = torch.rand(shape, generator=gen) * 2e-3 + 1e-4
    return Fp8Weights(random_fp8_codes(gen, num_outputs, num_inputs), scale, strategy, block_size, None)


def strided_input(seed: int, rows: int, num_inputs: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x: [rows, K]`` as a column slice of a wider tensor (row stride K + 8)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(rows, num_inputs + 8, generator=gen).to(dtype).to(device)[:, 3:num_inputs + 3]


def assert_matches(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, atol_fraction: float = 1e-5,
                   what: str = "") -> None:
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().float(), expected, rtol=RTOL[dtype],
                               atol=atol_fraction * expected.abs().max().item(), msg=lambda m: f"{what}: {m}")


def check_int(quant, seed: int, bits: int, group_size: int, zeros: bool, act_order: bool, rows: int, num_outputs: int,
              num_inputs: int, dtype: torch.dtype, with_bias: bool, atol_fraction: float = 1e-5) -> None:
    """The layer's Triton kernel (x[:, perm] then the GEMM, as a model runs it) against the reference."""
    weights = random_int_weights(seed, bits, group_size, num_inputs, num_outputs, zeros, act_order)
    x = strided_input(seed, rows, num_inputs, dtype, quant.device)
    bias = torch.randn(num_outputs).to(dtype) if with_bias else None
    expected = int_weights.reference_matmul(x.cpu(), weights, bias)
    out = TritonIntKernel(on(quant.device, weights))(x, None if bias is None else bias.to(quant.device))
    what = f"int{bits} group {group_size}, zeros {zeros}, act-order {act_order}, M={rows}, {dtype}"
    assert_matches(out, expected, dtype, atol_fraction, what)


def check_fp8(quant, seed: int, strategy: str, block_size: tuple[int, int] | None, rows: int, num_outputs: int,
              num_inputs: int, dtype: torch.dtype, with_bias: bool, atol_fraction: float = 1e-5) -> None:
    weights = random_fp8_weights(seed, strategy, num_outputs, num_inputs, block_size)
    x = strided_input(seed, rows, num_inputs, dtype, quant.device)
    bias = torch.randn(num_outputs).to(dtype) if with_bias else None
    expected = fp8_weights.reference_matmul(x.cpu(), weights, bias)
    out = TritonFp8Kernel(on(quant.device, weights))(x, None if bias is None else bias.to(quant.device))
    assert_matches(out, expected, dtype, atol_fraction, f"fp8 {strategy} {block_size}, M={rows}, {dtype}")


# ---------------------------------------------------------------- int: every run

INT_CASES = [
    # bits, group size (-1: channel-wise), zero points, act-order, M, N, K, dtype, bias
    (4, 32, True, False, 7, 40, 128, torch.bfloat16, True),
    (4, 128, False, True, 1, 24, 256, torch.float16, False),
    (4, -1, True, False, 33, 72, 96, torch.float32, True),  # one group of 96: K tiles of 32
    (8, 32, True, True, 33, 40, 64, torch.bfloat16, False),
    (8, 128, False, False, 7, 56, 256, torch.float16, True),
    (8, -1, False, False, 1, 40, 48, torch.float32, False),  # one group of 48: K tiles of 16
]


@pytest.mark.parametrize("case", INT_CASES, ids=lambda case: "int{}-g{}-z{:d}-act{:d}-m{}-n{}-k{}-{}".format(
    *case[:4], *case[4:7], str(case[7]).removeprefix("torch.")))
def test_int_matmul_matches_the_reference(quant, case):
    check_int(quant, INT_CASES.index(case), *case)


@pytest.mark.parametrize("bits", [4, 8])
def test_int_matmul_reads_every_code_exactly(quant, bits):
    """x = I: the output is W.T, each weight (code - zero) * scale in float32, as the reference's."""
    weights = random_int_weights(bits, bits, 32, 64, 40, zeros=True, act_order=False, scale_dtype=torch.bfloat16)
    identity = torch.eye(64, device=quant.device)
    out = quant.ops.int_matmul(identity, *(t.to(quant.device) for t in (weights.qweight, weights.scales,
                                                                         weights.zeros)), bits, 32)
    assert torch.equal(out.cpu(), int_weights.dequantize(weights).T)


# ---------------------------------------------------------------- fp8: every run

FP8_CASES = [
    # strategy, block size, M, N, K, dtype, bias
    ("tensor", None, 7, 40, 80, torch.bfloat16, True),
    ("channel", None, 1, 72, 64, torch.float16, False),
    ("channel", None, 33, 40, 100, torch.float32, True),
    ("block", (128, 128), 7, 200, 300, torch.bfloat16, False),  # 2 x 3 blocks, the last ones partial
    ("block", (32, 32), 33, 72, 100, torch.float16, True),
    ("block", (64, 32), 1, 100, 70, torch.float32, False),
]


@pytest.mark.parametrize("case", FP8_CASES, ids=lambda case: "{}-{}-m{}-n{}-k{}-{}".format(
    case[0], "x".join(map(str, case[1] or ())) or "na", *case[2:5], str(case[5]).removeprefix("torch.")))
def test_fp8_matmul_matches_the_reference(quant, case):
    check_fp8(quant, FP8_CASES.index(case), *case)


@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_fp8_matmul_widens_every_e4m3_value_exactly(quant, strategy):
    """x = I over a weight holding each of the 254 finite e4m3 codes (subnormals, both signs):
    the output is W.T, each weight code * scale in float32, as the reference's."""
    codes = torch.cat([torch.arange(0, 0x7F), torch.arange(0x80, 0xFF)]).to(torch.uint8)
    weight = codes.view(torch.float8_e4m3fn).reshape(2, 127)  # [N, K]
    gen = torch.Generator().manual_seed(5)
    scale, block = {"tensor": ((1,), None), "channel": ((2, 1), None), "block": ((1, 4), (32, 32))}[strategy]
    weights = Fp8Weights(weight, torch.rand(scale, generator=gen) + 0.5, strategy, block, None)
    identity = torch.eye(127, device=quant.device)
    out = quant.ops.fp8_matmul(identity, weight.to(quant.device), weights.scale.to(quant.device), strategy, block)
    assert torch.equal(out.cpu(), fp8_weights.dequantize(weights).T)


# ---------------------------------------------------------------- arguments and layouts

def test_the_wrappers_refuse_what_they_cannot_read(quant):
    ops, device = quant.ops, quant.device
    w = on(device, random_int_weights(0, 4, 32, 64, 40, zeros=True, act_order=False))
    x = torch.randn(3, 64, device=device)
    int_args = (w.qweight, w.scales, w.zeros, 4, 32)
    int_cases = {
        "x must be [M, K]": ((x[0], *int_args), {}),
        "x must be float16, bfloat16 or float32": ((x.double(), *int_args), {}),
        "x must be contiguous along K": ((x.T.contiguous().T, *int_args), {}),
        "bits must be one of": ((x, *int_args[:3], 3, 32), {}),
        "group_size 8 is not a multiple of 16": ((x, *int_args[:4], 8), {}),
        "qweight must be int32 [8, N] for 64 inputs": ((x, w.qweight[:4], *int_args[1:]), {}),
        "scales must be a float [2, 40] tensor": ((x, w.qweight, w.scales[:1], None, 4, 32), {}),
        "zeros must be uint8 [2, 40]": ((x, w.qweight, w.scales, w.zeros.int(), 4, 32), {}),
        "bias must be a contiguous [40] tensor": ((x, *int_args), {"bias": torch.zeros(41, device=device)}),
    }
    for message, (args, kwargs) in int_cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            ops.int_matmul(*args, **kwargs)
    f = on(device, random_fp8_weights(0, "block", 40, 64, (32, 32)))
    fp8_cases = {
        "strategy must be one of": (x, f.weight, f.scale, "row", None),
        "block_size (32, 8) needs blocks a multiple of 16": (x, f.weight, f.scale, "block", (32, 8)),
        "weight must be float8_e4m3fn [N, 64]": (x, f.weight.float(), f.scale, "block", (32, 32)),
        "block scales must be float32 [2, 2]": (x, f.weight, f.scale[:1], "block", (32, 32)),
        "channel scales must be float32 [40, 1]": (x, f.weight, f.scale, "channel", None),
        "tensor scales must be float32 [1]": (x, f.weight, f.scale.double()[:1, :1].reshape(1), "tensor", None),
    }
    for message, args in fp8_cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            ops.fp8_matmul(*args)
    empty = ops.int_matmul(x[:0], *int_args)
    assert empty.shape == (0, 40) and empty.dtype == x.dtype


def test_the_layouts_the_kernels_take():
    from fw.kernels.triton_quant import supports_fp8, supports_int

    assert all(supports_int(bits, group) for bits in (4, 8) for group in (16, 32, 48, 128, 4096, 11008))
    assert not any(supports_int(4, group) for group in (8, 24, 200))  # no multiples of 16
    assert not supports_int(3, 128)
    assert supports_fp8("tensor", None) and supports_fp8("channel", None)
    assert supports_fp8("block", (128, 128)) and supports_fp8("block", (1, 48))
    assert not supports_fp8("block", (128, 8)) and not supports_fp8("block", None)


# ---------------------------------------------------------------- which kernel a layer gets

def test_cuda_layers_get_the_triton_kernels_where_they_fit_and_torch_elsewhere(quant, monkeypatch):
    """The choice for a CUDA device is made from the weights alone (no GPU is touched), so it is
    checked here on CPU tensors; then the chosen kernel computes (interpreted without a GPU)."""
    from fw.plugins.quantization import int_kernels

    cuda = torch.device("cuda")
    grouped = random_int_weights(0, 4, 32, 64, 40, zeros=True, act_order=True)
    layer = int_kernel_for(grouped, cuda, ScratchBuffers())
    assert isinstance(layer, TritonIntKernel)
    x = torch.randn(5, 64).to(quant.device)
    assert_matches(layer.to(quant.device)(x, None), int_weights.reference_matmul(x.cpu(), grouped), torch.float32)
    assert isinstance(int_kernel_for(random_int_weights(0, 4, 8, 64, 40, True, False), cuda, ScratchBuffers()),
                      TorchIntKernel)  # group size 8: no K tile of 16 fits

    block = random_fp8_weights(0, "block", 40, 64, (32, 32))
    fp8_layer = fp8_kernel_for(block, cuda, torch.bfloat16)
    assert isinstance(fp8_layer, TritonFp8Kernel)
    assert_matches(fp8_layer.to(quant.device)(x, None), fp8_weights.reference_matmul(x.cpu(), block), torch.float32)
    assert isinstance(fp8_kernel_for(random_fp8_weights(0, "block", 40, 64, (32, 8)), cuda, torch.bfloat16),
                      TorchFp8Kernel)

    monkeypatch.setattr(int_kernels, "load_triton_quant", lambda: None)  # as on a CUDA machine without Triton
    monkeypatch.setattr("fw.plugins.quantization.fp8_method.load_triton_quant", lambda: None)
    assert isinstance(int_kernel_for(grouped, cuda, ScratchBuffers()), TorchIntKernel)
    assert isinstance(fp8_kernel_for(block, cuda, torch.bfloat16), TorchFp8Kernel)


def test_load_triton_quant_is_none_where_triton_is_missing(monkeypatch):
    from fw.plugins.quantization.int_kernels import load_triton_quant

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "fw.kernels.triton_quant", raising=False)
    assert load_triton_quant() is None


def test_fw_and_its_quantization_plugins_import_and_compute_on_a_cpu_without_triton():
    code = """
import sys
sys.modules["triton"] = None  # as if Triton were not installed
import torch
from fw.plugins.quantization import awq, compressed_tensors, fp8, gptq, int_kernels
from fw.plugins.quantization.int_weights import from_codes
weights = from_codes(torch.randint(0, 16, (64, 24)), torch.rand(2, 24), None, 4, 32)
layer = int_kernels.int_kernel_for(weights, torch.device("cpu"), int_kernels.ScratchBuffers())
print(type(layer).__name__, tuple(layer(torch.randn(2, 64), None).shape), "fw.kernels.triton_quant" in sys.modules)
"""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["(2,", "24)", "False"]


# ---------------------------------------------------------------- compiled for a GPU, without one

AOT_COMPILE = """
import sys
import triton
import triton.language as tl
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:
    print(error); sys.exit(3)
from fw.kernels.triton_quant import _fp8_matmul_kernel, _int_matmul_kernel

POINTERS = {"out_ptr": "*bf16", "x_ptr": "*bf16", "qweight_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*u8",
            "bias_ptr": "*bf16", "weight_ptr": "*u8", "scale_ptr": "*fp32"}

def compile_for_sm80(kernel, constexprs):
    signature = {name: "constexpr" if name in constexprs else POINTERS.get(name, "fp32" if name == "view_factor"
                 else "i32") for name in kernel.arg_names}
    # Pointers and strides 16-divisible, as Triton specializes them at launch.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if name.endswith("_ptr") or "stride" in name}
    triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 80, 32),
                   options={"num_warps": 4})

# bfloat16 tensor-core dots and float32 ("ieee") ones; sm_80 has no e4m3 conversions, fw's integer ones compile.
for bits, zeros, dot_dtype, precision in ((4, True, tl.bfloat16, None), (8, False, tl.float32, "ieee")):
    compile_for_sm80(_int_matmul_kernel, dict(BITS=bits, GROUP_SIZE=128, HAS_ZEROS=zeros, HAS_BIAS=zeros,
                     BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, DOT_DTYPE=dot_dtype, DOT_PRECISION=precision))
for block_n, block_k in ((128, 128), (1, 0)):
    compile_for_sm80(_fp8_matmul_kernel, dict(SCALE_BLOCK_N=block_n, SCALE_BLOCK_K=block_k, HAS_BIAS=block_k > 0,
                     BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, DOT_DTYPE=tl.bfloat16, DOT_PRECISION=None))
print("compiled")
"""


def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter skips Triton's compiler; compile ahead of time for sm_80 (no GPU needed)
    so type and shape errors in the kernels show up on CPU-only machines too."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", AOT_COMPILE], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    if result.returncode == 3:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {result.stdout.strip()}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("compiled")


# ---------------------------------------------------------------- sweeps (slow in the interpreter)

INT_LAYOUTS = [(bits, group, zeros, act_order) for bits, group, zeros, act_order
               in product((4, 8), (32, 128, -1), (True, False), (False, True)) if not (group == -1 and act_order)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", INT_LAYOUTS, ids=lambda layout: "int{}-g{}-z{:d}-act{:d}".format(*layout))
def test_int_matmul_sweep(quant, layout):
    for seed, (rows, dtype, with_bias) in enumerate(product((1, 7, 33), DTYPES, (False, True))):
        check_int(quant, seed, *layout, rows, 72, 256, dtype, with_bias)
        check_int(quant, seed, *layout, rows, 40, 384, dtype, with_bias)


FP8_LAYOUTS = [("tensor", None), ("channel", None), ("block", (128, 128)), ("block", (32, 32)), ("block", (16, 64))]


@pytest.mark.slow
@pytest.mark.parametrize("layout", FP8_LAYOUTS, ids=lambda layout: f"{layout[0]}-{layout[1]}")
def test_fp8_matmul_sweep(quant, layout):
    for seed, (rows, dtype, with_bias) in enumerate(product((1, 7, 33), DTYPES, (False, True))):
        check_fp8(quant, seed, *layout, rows, 200, 300, dtype, with_bias)
        check_fp8(quant, seed, *layout, rows, 136, 64, dtype, with_bias)


# ---------------------------------------------------------------- model-sized, compiled on a GPU

GPU_INT_CASES = [
    (4, 128, True, True, 512, 4096, 4096, torch.bfloat16, False),
    (4, 128, False, False, 1, 4096, 4096, torch.float16, False),
    (4, 32, True, False, 33, 11008, 4096, torch.bfloat16, True),
    (8, -1, False, False, 512, 4096, 4096, torch.float16, False),
    (8, 128, True, True, 7, 4096, 11008, torch.bfloat16, False),
    (4, 64, True, False, 512, 1000, 2048, torch.float32, True),
]
GPU_FP8_CASES = [
    ("block", (128, 128), 512, 4096, 4096, torch.bfloat16, False),
    ("block", (128, 128), 33, 4000, 4000, torch.bfloat16, True),  # partial blocks
    ("block", (128, 128), 1, 4096, 11008, torch.float16, False),
    ("channel", None, 512, 4096, 4096, torch.float16, False),
    ("tensor", None, 7, 4096, 4096, torch.bfloat16, True),
    ("tensor", None, 512, 1000, 2000, torch.float32, False),
]


@pytest.mark.cuda
@pytest.mark.parametrize("case_index", range(len(GPU_INT_CASES)))
def test_int_matmul_matches_the_reference_on_gpu(quant, case_index):
    if quant.interpreted:
        pytest.skip("TRITON_INTERPRET=1 is set; these shapes are for compiled kernels")
    check_int(quant, 100 + case_index, *GPU_INT_CASES[case_index], atol_fraction=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("case_index", range(len(GPU_FP8_CASES)))
def test_fp8_matmul_matches_the_reference_on_gpu(quant, case_index):
    if quant.interpreted:
        pytest.skip("TRITON_INTERPRET=1 is set; these shapes are for compiled kernels")
    check_fp8(quant, 100 + case_index, *GPU_FP8_CASES[case_index], atol_fraction=1e-4)
