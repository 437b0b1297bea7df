"""The CPU platform's fused decoder: a step of single-token decodes through a Llama-family
model (Llama, Mistral, Qwen2) in one C call (fw.kernels.cpu_decode).

At batch 1 the default model's matmuls take 3.2 ms a token and the ~400 Python calls
around them (norms, rotary, cache writes, attention, the linear wrappers, ~10 us each on
the 2-core Xeon) as much again; in C those calls cost next to nothing. The embedding
lookup, the rotary table, the LM head and sampling stay in Python: once per step.

It takes a model only when every layer computes exactly as the C function does: the
decoder's standard layers with fw's C ops (``CpuOps``) and the C attention kernel, SiLU,
no per-head q/k norm, no LoRA, and linears whose method gives native matmuls
(``LinearMethod.native_matmuls``: the packed GGUF weights today). A step runs here when it
has only single-token decodes, at most ``MAX_TOKENS`` of them, with a cache in the model's
dtype and no dynamic-NTK rotary; any other step runs the model's forward. Both paths call
the same kernels with the same arguments, so they agree bit for bit
(tests/plugins/platforms/test_cpu_decode.py).
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from fw.core.forward_context import AttentionMetadata, ForwardContext, forward_context
from fw.core.interfaces.linear import NativeMatmul
from fw.kernels import cpu_attention, cpu_decode, cpu_ops
from fw.plugins.platforms.cpu_layers import CpuOps

#: Decodes per step up to which the fused path runs. Above, the per-call overhead it saves is
#: small next to the matmuls, and the GGUF weights may switch to dequantize-then-matmul.
MAX_TOKENS = 16
DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def fused_decoder(model: nn.Module) -> CpuFusedDecoder | None:
    """The fused decoder for ``model``, or None when it does not compute exactly as the C path."""
    from fw.core.layers.activation import SiluAndMul
    from fw.core.models.llama import DecoderLayer, DecoderModel, LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM) or type(model.model) is not DecoderModel:
        return None
    libraries = cpu_decode.load(), cpu_ops.load(), cpu_attention.load()
    if any(library is None for library in libraries):
        return None
    decoder = model.model
    dtype = decoder.norm.weight.dtype
    if dtype not in DTYPES or decoder.rotary_emb._config is not None or not isinstance(decoder.norm.ops, CpuOps):
        return None  # (a rotary table with _config recomputes dynamic-NTK rows per step)
    layers = []
    for layer in decoder.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if type(layer) is not DecoderLayer or attn.q_norm is not None or not isinstance(mlp.act_fn, SiluAndMul):
            return None
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(not isinstance(n.ops, CpuOps) or n.weight.dtype != dtype or n.eps != decoder.norm.eps for n in norms) \
                or not isinstance(attn.ops, CpuOps):
            return None
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        parts = [_native(linear, dtype) for linear in linears]
        if any(p is None for p in parts):
            return None
        layers.append((layer, parts))
    return CpuFusedDecoder(model, dtype, layers)


def _native(linear: nn.Module, dtype: torch.dtype) -> list[NativeMatmul] | None:
    """The layer's native matmuls, when they cover its outputs in at most MAX_PARTS calls."""
    if linear.lora is not None or (linear.bias is not None and linear.bias.dtype != dtype):
        return None
    parts = linear.linear_method.native_matmuls(linear)
    if not parts or len(parts) > cpu_decode.MAX_PARTS:
        return None
    columns = [0]
    for part in parts:
        if part.column != columns[-1]:
            return None
        columns.append(part.column + part.rows)
    return parts if columns[-1] == sum(linear.output_sizes) else None


class CpuFusedDecoder:
    """The C structures of one model (built once per KV cache) and the per-step call."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, layers: list[tuple[nn.Module, list]]) -> None:
        self.model, self.dtype, self.layers = model, dtype, layers
        self.library = cpu_decode.load()
        attn = layers[0][0].self_attn
        self.num_heads, self.num_kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        # Every layer's shapes must be the first's: the C function sizes its buffers once.
        self.shapes_agree = all(
            (layer.self_attn.qkv_proj.output_sizes, layer.mlp.gate_up_proj.output_sizes, layer.self_attn.scale)
            == (attn.qkv_proj.output_sizes, layers[0][0].mlp.gate_up_proj.output_sizes, attn.scale)
            for layer, _ in layers)
        self._decoder: cpu_decode.Decoder | None = None
        self._cache_key: tuple[int, ...] | None = None
        self._keep: list = []  # what the C structures point into
        self._scratch = torch.empty(0, dtype=torch.uint8)
        self._token_rows = torch.arange(MAX_TOKENS)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata,
                 kv_caches: list[torch.Tensor]) -> torch.Tensor | None:
        num_tokens = input_ids.shape[0]
        if not self.shapes_agree or metadata.max_query_len != 1 or num_tokens > MAX_TOKENS \
                or metadata.seq_lens.shape[0] != num_tokens or len(kv_caches) != len(self.layers) \
                or any(c.dtype != self.dtype or not c.is_contiguous() for c in kv_caches):
            return None
        decoder = self._structures(kv_caches)
        embed = self.model.model.embed_tokens(input_ids)
        with forward_context(ForwardContext(metadata, kv_caches, None)):
            cos, sin = self.model.model.rotary_emb(positions)  # the table grows here if needed
        if embed.dtype != self.dtype or not embed.is_contiguous() or cos.stride(1) != 1 \
                or cos.stride(0) != sin.stride(0):
            return None
        scratch_bytes = self.library.decoder_scratch_bytes(ctypes.byref(decoder), num_tokens)
        if self._scratch.numel() < scratch_bytes:
            self._scratch = torch.empty(scratch_bytes, dtype=torch.uint8)
        out = torch.empty(num_tokens, embed.shape[1], dtype=self.dtype)
        block_tables = metadata.block_tables.contiguous()
        seq_lens = metadata.seq_lens.contiguous()
        token_rows = self._token_rows[:num_tokens]  # one token per sequence: sequence s's is row s
        slots = metadata.slot_mapping.contiguous()
        status = self.library.decoder_forward(
            ctypes.byref(decoder), num_tokens, embed.data_ptr(), cos.data_ptr(), sin.data_ptr(), cos.stride(0),
            slots.data_ptr(), block_tables.data_ptr(), block_tables.stride(0), seq_lens.data_ptr(),
            token_rows.data_ptr(), self._scratch.data_ptr(), out.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"the fused CPU decoder failed (kernel status {status})")
        return out

    def _structures(self, kv_caches: list[torch.Tensor]) -> cpu_decode.Decoder:
        """The Decoder for these caches (rebuilt only when the caches change)."""
        key = tuple(cache.data_ptr() for cache in kv_caches)
        if key == self._cache_key:
            return self._decoder
        decoder_model = self.model.model
        keep = []
        array = (cpu_decode.Layer * len(self.layers))()
        for (layer, parts), entry, cache in zip(self.layers, array, kv_caches):
            attn, mlp = layer.self_attn, layer.mlp
            entry.input_norm = _pointer(layer.input_layernorm.weight, keep)
            entry.post_attention_norm = _pointer(layer.post_attention_layernorm.weight, keep)
            for name, linear, native in zip(("qkv", "o", "gate_up", "down"),
                                            (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj), parts):
                _fill_linear(getattr(entry, name), linear, native, keep)
            entry.k_cache, entry.v_cache = cache[0].data_ptr(), cache[1].data_ptr()
            entry.sliding_window = attn.sliding_window or 0
        attn = self.layers[0][0].self_attn
        ops = cpu_ops.load()
        decoder = cpu_decode.Decoder(
            rms_norm=cpu_decode.address(ops.rms_norm), silu_and_mul=cpu_decode.address(ops.silu_and_mul),
            rotary_neox=cpu_decode.address(ops.rotary_neox),
            attention=cpu_decode.address(cpu_attention.load().paged_decode_attention),
            hidden=decoder_model.norm.weight.shape[0], num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, intermediate=self.layers[0][0].mlp.gate_up_proj.output_sizes[0],
            block_size=kv_caches[0].shape[2], num_layers=len(self.layers), eps=decoder_model.norm.eps,
            scale=attn.scale, dtype=DTYPES[self.dtype], layers=array,
            final_norm=_pointer(decoder_model.norm.weight, keep))
        keep.append(array)
        self._decoder, self._cache_key, self._keep = decoder, key, keep
        return decoder


def _pointer(tensor: torch.Tensor, keep: list) -> int:
    tensor = tensor.detach().contiguous()
    keep.append(tensor)
    return tensor.data_ptr()


def _fill_linear(entry: cpu_decode.Linear, linear: nn.Module, parts: list[NativeMatmul], keep: list) -> None:
    entry.num_parts, entry.in_features, entry.out_features = len(parts), linear.input_size, sum(linear.output_sizes)
    for slot, part in zip(entry.parts, parts):
        slot.fn, slot.kind, slot.isa, slot.weight = part.function, part.kind, part.isa, part.weight
        slot.rows, slot.column = part.rows, part.column
        keep.append(part.owner)
    entry.bias = _pointer(linear.bias, keep) if linear.bias is not None else None
