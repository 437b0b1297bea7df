"""The ``gguf`` quantization method's contract: layers built with it, loaded with packed GGUF
tensors through their own ``weight_loader``, compute the dequantize-then-matmul.

Weights: quantized by gguf-py (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or random K-quant blocks with
sane scales (gguf-py has no K-quant quantizer); the expected weight is the loader's
dequantizer's (gguf_dequant.py, bit-identical to gguf-py). Tolerance against the float32
matmul: the kernels quantize activations to int8 blocks (relative Frobenius error
``FLOAT_REL``, as in tests/kernels/test_gguf_ops.py); the dense fallback (kernels off, or a
type they do not take) is exact up to float32 summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

from fw.core.layers.build import ModelBuildContext, building_model
from fw.core.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from fw.core.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod
from fw.core.layers.weights import WeightShapeError
from fw.core.plugins import load_plugins
from fw.kernels import gguf_ops
from fw.plugins.loaders.gguf_dequant import dequantize
from fw.plugins.loaders.gguf_file import GGUFQuantizedTensor
from fw.plugins.quantization import gguf_weight
from fw.plugins.quantization.gguf import GGUFQuantizationMethod

FLOAT_REL = 2e-2
K_QUANT_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q3_K: (108,)}


def packed(values: torch.Tensor, qtype: Q, seed: int = 0) -> tuple[GGUFQuantizedTensor, torch.Tensor]:
    """``values: [out, in]`` as a packed GGUF tensor of ``qtype``, and what it dequantizes to."""
    rows, cols = values.shape
    if qtype in K_QUANT_SCALES:  # random blocks, their fp16 scales made sane
        rng = np.random.default_rng(seed)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        data = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
        for offset in K_QUANT_SCALES[qtype]:
            data[:, offset:offset + 2] = rng.uniform(1e-4, 1e-3, (len(data), 1)).astype(np.float16).view(np.uint8)
        data = data.reshape(rows, -1)
    elif qtype in (Q.F32, Q.F16):
        tensor = values.to(torch.float32 if qtype == Q.F32 else torch.float16)
        return tensor, tensor.float()
    else:
        data = quantize(values.numpy(), qtype)
    expected = dequantize(data.reshape(-1), qtype, (rows, cols))
    return GGUFQuantizedTensor.wrap(torch.from_numpy(data), qtype, (rows, cols)), expected


def build(layer_cls, *args, dtype: torch.dtype = torch.float32, **kwargs):
    context = ModelBuildContext(TorchOps(), UnquantizedLinearMethod(), GGUFQuantizationMethod())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with building_model(context):
            return layer_cls(*args, **kwargs)
    finally:
        torch.set_default_dtype(previous)


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.float() - expected).norm() / expected.norm()).item()


LAYERS = {
    # name: (class, args, {shard id: [out, in]}), in the order the parts are loaded (not the fused order)
    "qkv": (QKVParallelLinear, (256, 32, 4, 2), {"v": (64, 256), "q": (128, 256), "k": (64, 256)}),
    "gate_up": (MergedColumnParallelLinear, (256, [96, 96]), {1: (96, 256), 0: (96, 256)}),
    "down": (RowParallelLinear, (512, 96), {None: (96, 512)}),
}
#: Part types per case: one type, and the Q4_K_M-style mixes (a part in another type, a dense part).
MIXES = {
    "q4_0": {}, "q4_1": {}, "q5_0": {}, "q5_1": {}, "q8_0": {}, "q4_k": {}, "q5_k": {}, "q6_k": {},
    "q4_k+q6_k": {"v": Q.Q6_K, 1: Q.Q6_K},
    "q8_0+f16": {"k": Q.F16, 0: Q.F16, None: Q.F32},
    "q3_k (dense)": {},
}
BASE_TYPE = {"q4_k+q6_k": Q.Q4_K, "q8_0+f16": Q.Q8_0, "q3_k (dense)": Q.Q3_K}


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_apply_equals_the_dequantized_matmul(layer_name, mix):
    layer_cls, args, parts = LAYERS[layer_name]
    base = BASE_TYPE.get(mix) or Q[mix.upper()]
    layer = build(layer_cls, *args, prefix=f"model.layers.0.{layer_name}")
    expected_parts = {}
    torch.manual_seed(0)
    for shard_id, shape in parts.items():
        tensor, expected_parts[shard_id] = packed(torch.randn(*shape) * 0.05, MIXES[mix].get(shard_id, base))
        layer.weight.weight_loader(layer.weight, tensor, shard_id)
    layer.linear_method.process_weights_after_loading(layer)
    order = sorted(parts, key=lambda s: layer.part_index(s) if s is not None else 0)
    weight = torch.cat([expected_parts[s] for s in order])
    kinds = {segment.ggml_type for segment in layer.weight.gguf.segments}
    exact = kinds == {None} or not gguf_ops.available()
    for rows in (1, 7, 40):
        x = torch.randn(rows, weight.shape[1])
        out, expected = layer(x), x @ weight.T
        if exact:
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-4 * expected.abs().max().item())
        else:
            assert relative_error(out, expected) < FLOAT_REL, rows


def test_mixed_types_are_one_kernel_call_per_run_of_a_type():
    layer = build(QKVParallelLinear, 256, 32, 4, 2, prefix="qkv")
    for shard_id, rows, qtype in (("q", 128, Q.Q4_K), ("k", 64, Q.Q4_K), ("v", 64, Q.Q6_K)):
        layer.weight.weight_loader(layer.weight, packed(torch.randn(rows, 256), qtype)[0], shard_id)
    segments = layer.weight.gguf.segments
    if not gguf_ops.available():
        pytest.skip("no C compiler: every part is dense")
    assert [(s.start, s.rows, s.ggml_type) for s in segments] == [(0, 192, int(Q.Q4_K)), (192, 64, int(Q.Q6_K))]
    # The parameter holds the resident bytes: with fp16 scale (and min) per 32 values, 20 bytes per
    # 32 Q4_K weights (the file's 18 plus 11%: 0.31x their bfloat16 size) and 28 per 32 Q6_K ones.
    assert layer.weight.numel() == 192 * 256 * 20 // 32 + 64 * 256 * 28 // 32


def test_bfloat16_model_computes_in_bfloat16():
    layer = build(RowParallelLinear, 256, 64, prefix="o_proj", dtype=torch.bfloat16)
    tensor, weight = packed(torch.randn(64, 256) * 0.05, Q.Q4_1)
    layer.weight.weight_loader(layer.weight, tensor, None)
    x = torch.randn(3, 256).bfloat16()
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, x.float() @ weight.T) < FLOAT_REL


def test_a_part_of_the_wrong_shape_is_refused_with_the_expected_shape():
    layer = build(MergedColumnParallelLinear, 256, [96, 96], prefix="gate_up")
    with pytest.raises(WeightShapeError) as info:
        layer.weight.weight_loader(layer.weight, packed(torch.randn(64, 256), Q.Q8_0)[0], 1)
    assert info.value.expected == (96, 256)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "dense fallback"])
def test_packed_embedding_and_the_lm_head_tied_to_it(kernels, monkeypatch):
    if not kernels:
        monkeypatch.setattr(gguf_weight.gguf_ops, "available", lambda: False)
    embedding = build(VocabParallelEmbedding, 320, 256)
    head = build(ParallelLMHead, 320, 256)
    head.tie_to(embedding)
    tensor, table = packed(torch.randn(320, 256) * 0.05, Q.Q8_0)
    embedding.weight.weight_loader(embedding.weight, tensor, None)  # the only load: the head shares it
    head.linear_method.process_weights_after_loading(head)
    ids = torch.tensor([5, 0, 319, 5])
    torch.testing.assert_close(embedding(ids), table[ids], rtol=0, atol=0)  # Q8_0 scales are stored exactly
    hidden = torch.randn(4, 256)
    logits, expected = head(hidden), hidden @ table.T
    if kernels and gguf_ops.available():
        assert relative_error(logits, expected) < FLOAT_REL
    else:
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_float_embedding_in_the_file_stays_dense():
    embedding = build(VocabParallelEmbedding, 320, 256, dtype=torch.bfloat16)
    table = torch.randn(320, 256, dtype=torch.float16)
    embedding.weight.weight_loader(embedding.weight, table, None)
    ids = torch.tensor([1, 2, 3])
    torch.testing.assert_close(embedding(ids), table[ids].bfloat16(), rtol=0, atol=0)


def test_the_placeholder_counts_the_weights_values_until_loaded():
    layer = build(QKVParallelLinear, 256, 32, 4, 2, prefix="qkv")
    assert tuple(layer.weight.shape) == (256, 256) and layer.weight.numel() == 256 * 256
    assert layer.weight.untyped_storage().nbytes() == 1


def test_registered_as_gguf_and_takes_every_cpu_dtype():
    method_cls = load_plugins(env={"FW_PLUGINS": ""}).quantization_methods.get("gguf")
    assert method_cls is GGUFQuantizationMethod
    assert set(method_cls.supported_act_dtypes()) >= {torch.float32, torch.bfloat16}
    method = method_cls.from_config({"quant_method": "gguf"})
    assert method.get_linear_method("lm_head") is not None
    assert method.get_embedding_method("model.embed_tokens") is not None


def test_large_bfloat16_batches_can_go_through_the_dequantized_matmul(monkeypatch):
    """Where the CPU has fast bf16 matmuls, 128+ rows are computed on the weight dequantized for the call."""
    monkeypatch.setattr(gguf_weight.GGUFWeight, "_dense_matmul_pays", lambda self: True)
    monkeypatch.setattr(gguf_weight, "DENSE_CHUNK_VALUES", 64 * 256)  # 64 rows at a time: 3 chunks a part
    layer = build(MergedColumnParallelLinear, 256, [96, 96], prefix="gate_up", dtype=torch.bfloat16)
    expected_parts = []
    for shard_id, qtype in ((0, Q.Q4_0), (1, Q.Q6_K)):
        tensor, weight = packed(torch.randn(96, 256) * 0.05, qtype)
        layer.weight.weight_loader(layer.weight, tensor, shard_id)
        expected_parts.append(weight)
    if not gguf_ops.available():
        pytest.skip("no C compiler: every part is dense")
    assert all(segment.dense_matmul_rows == gguf_weight.DENSE_MATMUL_ROWS for segment in layer.weight.gguf.segments)
    weight = torch.cat(expected_parts)
    for rows in (3, gguf_weight.DENSE_MATMUL_ROWS, 300):
        x = torch.randn(rows, 256).bfloat16()
        assert relative_error(layer(x), x.float() @ weight.T) < FLOAT_REL, rows
