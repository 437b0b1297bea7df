"""The ``gguf`` quantization method: llama.cpp's quantized weights computed in packed form.

vLLM's ``--quantization gguf``. The gguf loader names it in the config of every GGUF file it
reads (``quantization_config = {"quant_method": "gguf"}``; ``FW_GGUF_PACKED=0`` turns that
off and dequantizes at load instead), so the engine selects it without a flag, and yields
quantized tensors packed (``GGUFQuantizedTensor``). Each linear layer, and the token
embedding, keeps them packed (gguf_weight.py): the types fw's CPU kernels take
(fw.kernels.gguf_ops: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) are repacked once
for them; the embedding dequantizes only the rows it looks up; a tied LM head multiplies
by the packed embedding with the same kernels. Tensors stored as floats, and the rarer
types (Q2_K, Q3_K), are computed dense.

Decode steps (a few rows) are where packed weights pay most: the kernels read 4.5-8.5 bits
per weight and do int8 dot products, with AVX-512 VNNI or AVX2 chosen at run time
(benchmarks/gguf_matmul.py). For large batches of bfloat16 rows on a CPU with fast bf16
matmuls (AMX), the weight is dequantized per call, in chunks, and torch multiplies: measured
faster from 128 rows on (gguf_weight.DENSE_MATMUL_ROWS); the kernels do everything else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fw.core.distributed import tensor_parallel_size
from fw.core.hookspecs import hookimpl
from fw.core.interfaces.linear import LinearMethod, NativeMatmul, WeightLoaderFn
from fw.core.interfaces.quantization import QuantizationMethod
from fw.core.layers.embedding import EmbeddingMethod

def create_gguf_weight(layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype) -> None:
    """Register ``layer.weight``: a placeholder of the logical shape ``[sum(output_sizes),
    input_size]`` (one byte of storage, so that it counts the weight's values until loaded, and a
    tied LM head matches the embedding's shape), carrying a :class:`GGUFWeight` as ``.gguf``."""
    # Here, not at import: listing plugins must not load kernels (tests/plugins/platforms).
    from fw.plugins.quantization.gguf_weight import GGUFWeight

    if tensor_parallel_size() != 1:
        raise ValueError("the gguf quantization method runs one tensor-parallel rank only")
    placeholder = torch.zeros((), dtype=torch.uint8).expand(sum(output_sizes), input_size)
    weight = nn.Parameter(placeholder, requires_grad=False)
    weight.gguf = GGUFWeight(input_size, output_sizes, params_dtype, placeholder.device)
    part_index = getattr(layer, "part_index", None)  # fused layers name their parts

    def weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | int | None = None) -> None:
        index = part_index(shard_id) if part_index is not None and shard_id is not None else 0
        param.gguf.load_part(param, index, loaded_weight)

    weight.weight_loader, weight.output_dim, weight.input_dim = weight_loader, 0, 1
    layer.register_parameter("weight", weight)


class GGUFLinearMethod(LinearMethod):
    """A linear layer on GGUF weights: one kernel call per run of parts of one type."""

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       weight_loader: WeightLoaderFn) -> None:
        create_gguf_weight(layer, input_size, output_sizes, params_dtype)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # Usually done already: the weight repacks itself when its last part arrives.
        layer.weight.gguf.finalize(layer.weight)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = layer.weight.gguf.matmul(x)
        return out if bias is None else out.add_(bias)

    def native_matmuls(self, layer: nn.Module) -> list[NativeMatmul] | None:
        """One gguf_matmul call per segment, when the kernels compute every segment."""
        segments = layer.weight.gguf.segments
        if any(segment.kernel is None for segment in segments):
            return None
        return [NativeMatmul(*segment.kernel.c_call(), rows=segment.rows, column=segment.start, owner=segment.data)
                for segment in segments]


class GGUFEmbeddingMethod(EmbeddingMethod):
    """A token embedding kept packed; a lookup dequantizes only the rows it returns."""

    def create_weights(self, layer: nn.Module, num_embeddings: int, embedding_dim: int,
                       params_dtype: torch.dtype) -> None:
        create_gguf_weight(layer, embedding_dim, [num_embeddings], params_dtype)

    def embedding(self, layer: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return layer.weight.gguf.lookup(input_ids)


class GGUFQuantizationMethod(QuantizationMethod):
    """Every linear layer and the token embedding on packed GGUF weights (the LM head too)."""

    name = "gguf"

    def __init__(self) -> None:
        self.linear_method = GGUFLinearMethod()
        self.embedding_method = GGUFEmbeddingMethod()

    @classmethod
    def from_config(cls, quant_config: dict[str, Any]) -> GGUFQuantizationMethod:
        return cls()

    @classmethod
    def supported_act_dtypes(cls) -> list[torch.dtype]:
        # The kernels read float32 and bfloat16; float16 is converted around them.
        return [torch.float32, torch.bfloat16, torch.float16]

    def get_linear_method(self, prefix: str) -> LinearMethod | None:
        return self.linear_method

    def get_embedding_method(self, prefix: str) -> EmbeddingMethod | None:
        """The method of the token embedding at ``prefix`` (see fw.core.layers.embedding)."""
        return self.embedding_method


@hookimpl
def fw_register_quantization_methods(registry) -> None:
    registry.register(GGUFQuantizationMethod.name, GGUFQuantizationMethod)
