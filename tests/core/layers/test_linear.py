"""Each layer's weight_loader puts every checkpoint tensor, and every part of a fused one,
where the layer's matmul expects it: on one rank, and on each rank of a tensor-parallel group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fw.core.layers import embedding, linear
from fw.core.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from fw.core.layers.layernorm import RMSNorm
from fw.core.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from fw.core.layers.ops import rms_norm
from fw.core.layers.weights import WeightShapeError


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def load(layer, name: str, tensor: torch.Tensor, shard_id=None) -> None:
    param = getattr(layer, name)
    param.weight_loader(param, tensor, shard_id)


def test_column_and_row_layers_compute_the_checkpoints_linear_map():
    x = torch.randn(5, 8)
    weight, bias = torch.randn(6, 8), torch.randn(6)
    for layer in (ColumnParallelLinear(8, 6, bias=True), RowParallelLinear(8, 6, bias=True)):
        load(layer, "weight", weight)
        load(layer, "bias", bias)
        torch.testing.assert_close(layer(x), F.linear(x, weight, bias), atol=0, rtol=0)


def test_merged_layer_holds_each_part_where_its_outputs_go():
    x = torch.randn(5, 8)
    gate, up = torch.randn(12, 8), torch.randn(12, 8)
    layer = MergedColumnParallelLinear(8, [12, 12])
    load(layer, "weight", up, 1)  # in any order
    load(layer, "weight", gate, 0)
    out_gate, out_up = layer(x).split(layer.output_sizes, dim=-1)
    assert torch.equal(out_gate, F.linear(x, gate)) and torch.equal(out_up, F.linear(x, up))


def test_qkv_layer_holds_q_k_and_v_with_their_biases():
    x = torch.randn(5, 16)
    head_dim, num_heads, num_kv_heads = 4, 4, 2
    parts = {name: (torch.randn(heads * head_dim, 16), torch.randn(heads * head_dim))
             for name, heads in (("q", num_heads), ("k", num_kv_heads), ("v", num_kv_heads))}
    layer = QKVParallelLinear(16, head_dim, num_heads, num_kv_heads, bias=True)
    assert layer.output_sizes == [16, 8, 8]
    for name in ("v", "q", "k"):
        load(layer, "weight", parts[name][0], name)
        load(layer, "bias", parts[name][1], name)
    for out, name in zip(layer(x).split(layer.output_sizes, dim=-1), "qkv"):
        torch.testing.assert_close(out, F.linear(x, *parts[name]), atol=0, rtol=0)


def test_embedding_rows_and_a_tied_head_share_one_parameter():
    table = torch.randn(10, 8)
    embed = VocabParallelEmbedding(10, 8)
    load(embed, "weight", table)
    ids = torch.tensor([3, 0, 9])
    assert torch.equal(embed(ids), table[ids])
    head = ParallelLMHead(10, 8)
    head.tie_to(embed)
    assert head.weight is embed.weight and head.weight_shared
    hidden = torch.randn(2, 8)
    torch.testing.assert_close(head(hidden), hidden @ table.T, atol=0, rtol=0)


def test_norm_weight_loads_whole():
    norm, weight, x = RMSNorm(8, 1e-6), torch.randn(8), torch.randn(3, 8)
    load(norm, "weight", weight)
    assert torch.equal(norm(x), rms_norm(x, weight, 1e-6))


def test_a_tensor_of_the_wrong_shape_is_refused_with_the_shape_expected():
    layer = QKVParallelLinear(16, 4, 4, 2)
    with pytest.raises(WeightShapeError) as error:
        load(layer, "weight", torch.ones(16, 16), "k")
    assert error.value.expected == (8, 16)


@pytest.fixture
def rank_1_of_2(monkeypatch):
    """Pretend this process is rank 1 of a tensor-parallel group of 2."""
    for module in (linear, embedding):
        monkeypatch.setattr(module, "tensor_parallel_rank", lambda: 1)
        monkeypatch.setattr(module, "tensor_parallel_size", lambda: 2)


def test_each_rank_takes_its_own_slice_of_every_part(rank_1_of_2):
    gate, up = torch.randn(12, 8), torch.randn(12, 8)
    merged = MergedColumnParallelLinear(8, [12, 12])
    load(merged, "weight", gate, 0)
    load(merged, "weight", up, 1)
    assert torch.equal(merged.weight, torch.cat([gate[6:], up[6:]]))

    q, k, v = torch.randn(16, 16), torch.randn(8, 16), torch.randn(8, 16)
    qkv = QKVParallelLinear(16, 4, 4, 2)
    for name, tensor in zip("qkv", (q, k, v)):
        load(qkv, "weight", tensor, name)
    assert qkv.output_sizes == [8, 4, 4]
    assert torch.equal(qkv.weight, torch.cat([q[8:], k[4:], v[4:]]))

    weight, bias = torch.randn(6, 8), torch.randn(6)
    row = RowParallelLinear(8, 6, bias=True)
    load(row, "weight", weight)
    load(row, "bias", bias)
    assert torch.equal(row.weight, weight[:, 4:]) and torch.equal(row.bias, bias)  # every rank holds the bias

    column = ColumnParallelLinear(8, 6)
    load(column, "weight", weight)
    assert torch.equal(column.weight, weight[3:])

    table = torch.randn(10, 8)
    embed = VocabParallelEmbedding(10, 8)
    load(embed, "weight", table)
    assert torch.equal(embed.weight, table[5:])


def test_sizes_that_do_not_split_over_the_ranks_are_refused(rank_1_of_2):
    with pytest.raises(ValueError, match="does not split evenly over 2"):
        ColumnParallelLinear(8, 7)


# ---------------------------------------------------------------- packed and grouped parameters

def quantized_layer(method_name: str, quant_config: dict, layer_cls, *args, prefix: str):
    """A layer built with a built-in quantization method, as the engine builds it."""
    from fw.core.layers.build import ModelBuildContext, building_model
    from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod
    from fw.core.plugins import load_plugins

    method = load_plugins(env={"FW_PLUGINS": ""}).quantization_methods.get(method_name).from_config(quant_config)
    with building_model(ModelBuildContext(TorchOps(), UnquantizedLinearMethod(), method)):
        return layer_cls(*args, prefix=prefix)


AWQ = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True}
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True}
FP8_BLOCK = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [16, 16]}
FP8_TENSOR = {"quant_method": "fp8", "activation_scheme": "static"}


def ints(*shape: int) -> torch.Tensor:
    return torch.randint(-2**31, 2**31 - 1, shape, dtype=torch.int32)


def test_packed_parts_start_at_their_packed_offsets():
    # AWQ packs 8 outputs per int32 along the outputs: up's columns start at gate's 64 / 8.
    merged = quantized_layer("awq", AWQ, MergedColumnParallelLinear, 64, [64, 32], prefix="mlp.gate_up_proj")
    gate, up = ints(64, 8), ints(64, 4)
    load(merged, "qweight", up, 1)
    load(merged, "qweight", gate, 0)
    assert torch.equal(merged.qweight, torch.cat([gate, up], dim=1))
    # FP8 block scales: one row per 16 outputs; per-tensor scales: one entry per part.
    qkv = quantized_layer("fp8", FP8_BLOCK, QKVParallelLinear, 32, 16, 2, 1, prefix="attn.qkv_proj")
    scales = {name: torch.rand(rows, 2) for name, rows in (("q", 2), ("k", 1), ("v", 1))}
    for name, scale in scales.items():
        load(qkv, "weight_scale_inv", scale, name)
    assert torch.equal(qkv.weight_scale_inv, torch.cat(list(scales.values())))
    per_tensor = quantized_layer("fp8", FP8_TENSOR, QKVParallelLinear, 32, 16, 2, 1, prefix="attn.qkv_proj")
    for index, name in enumerate("qkv"):
        load(per_tensor, "weight_scale", torch.tensor(float(index + 1)), name)  # stored as a scalar
        load(per_tensor, "input_scale", torch.tensor([0.5 * (index + 1)]), name)  # or as [1]
    assert per_tensor.weight_scale.tolist() == [1.0, 2.0, 3.0] and per_tensor.input_scale.tolist() == [0.5, 1, 1.5]


def test_each_rank_takes_its_slice_of_packed_and_grouped_parameters(rank_1_of_2):
    merged = quantized_layer("awq", AWQ, MergedColumnParallelLinear, 64, [64, 64], prefix="mlp.gate_up_proj")
    gate, up = ints(64, 8), ints(64, 8)  # whole checkpoint parts: 64 outputs, 8 packed columns
    gate_scales, up_scales = torch.rand(2, 64), torch.rand(2, 64)
    load(merged, "qweight", gate, 0)
    load(merged, "qweight", up, 1)
    load(merged, "scales", gate_scales, 0)
    load(merged, "scales", up_scales, 1)
    assert torch.equal(merged.qweight, torch.cat([gate[:, 4:], up[:, 4:]], dim=1))
    assert torch.equal(merged.scales, torch.cat([gate_scales[:, 32:], up_scales[:, 32:]], dim=1))

    # Row-parallel GPTQ: codes packed along the inputs, scales grouped along them, g_idx per input.
    row = quantized_layer("gptq", GPTQ, RowParallelLinear, 128, 64, prefix="mlp.down_proj")
    qweight, scales, g_idx = ints(16, 64), torch.rand(4, 64), torch.randperm(128).to(torch.int32) // 32
    load(row, "qweight", qweight)
    load(row, "scales", scales)
    load(row, "g_idx", g_idx)
    assert torch.equal(row.qweight, qweight[8:]) and torch.equal(row.scales, scales[2:])
    assert torch.equal(row.g_idx[0], g_idx[64:])
    with pytest.raises(WeightShapeError) as error:
        load(row, "qweight", ints(8, 64))  # one rank's share, not the checkpoint's tensor
    assert error.value.expected == (16, 64)
