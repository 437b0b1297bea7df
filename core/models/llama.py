"""Llama, the decoder every other architecture here is a variant of (Mistral, Qwen2, Qwen3).

A flat batch of tokens (sequences concatenated, no padding) goes through embedding ->
N x (RMSNorm, attention, residual, RMSNorm, gated MLP, residual) -> RMSNorm. Attention
projects q/k/v with one matmul, rotates q and k, and hands them to the attention backend
of the forward context, which writes k/v into the paged cache and attends. Logits are
computed only for the rows the runner passes to ``compute_logits``.

Module names mirror Hugging Face's, so checkpoint names map one to one except for the
fused projections (``q_proj``/``k_proj``/``v_proj`` -> ``qkv_proj``, ``gate_proj``/
``up_proj`` -> ``gate_up_proj``), whose parts ``load_weights`` hands to the fused layer's
``weight_loader`` with their shard id. Every layer takes its kernels from the build context
the engine sets around the constructor (``fw.core.layers.build``); each linear layer's
prefix (its name in the model) is how a quantization method tells the layers apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from fw.core.attention.kv_quant import KVScales, load_kv_scale
from fw.core.distributed import divide, tensor_parallel_size
from fw.core.errors import ModelLoadError
from fw.core.forward_context import get_forward_context
from fw.core.interfaces.model import CausalLM
from fw.core.layers.activation import act_and_mul
from fw.core.layers.build import current_build_context
from fw.core.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from fw.core.layers.layernorm import RMSNorm
from fw.core.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from fw.core.layers.rotary import RotaryEmbedding
from fw.core.layers.weights import WeightShapeError, default_weight_loader

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# Checkpoint module -> (our fused module, the part's shard id in its weight_loader).
STACKED_PARAMS: dict[str, tuple[str, str | int]] = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
# Buffers some checkpoints saved; we compute our own.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


@dataclass(frozen=True)
class DecoderOptions:
    """What differs between the Llama-family architectures (each reads it from its config)."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # Qwen3: RMSNorm over each q and k head before RoPE.
    qk_norm: bool = False


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_window_of(config: PretrainedConfig, layer_idx: int) -> int | None:
    """The layer's attention window, as transformers decides it, or None for full attention."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if layer_types[layer_idx] == "sliding_attention" else None
    # Qwen2/Qwen3 configs from before `layer_types`: the layers from max_window_layers on slide.
    max_window_layers = getattr(config, "max_window_layers", None)
    if max_window_layers is not None and layer_idx < max_window_layers:
        return None
    return int(window)


class Attention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_idx: int, options: DecoderOptions, prefix: str) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        total_num_heads = config.num_attention_heads
        total_num_kv_heads = getattr(config, "num_key_value_heads", None) or total_num_heads
        # This rank's heads: tensor parallelism splits them over the ranks.
        self.num_heads = divide(total_num_heads, tensor_parallel_size())
        self.num_kv_heads = divide(total_num_kv_heads, tensor_parallel_size())
        self.head_dim = head_dim_of(config)
        self.scale = self.head_dim**-0.5
        self.sliding_window = sliding_window_of(config, layer_idx)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_num_heads, total_num_kv_heads,
                                          bias=options.qkv_bias, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(total_num_heads * self.head_dim, config.hidden_size, bias=options.o_bias,
                                        prefix=f"{prefix}.o_proj")
        self.ops = current_build_context().ops
        # The fp8 KV cache's scales: the checkpoint's k_scale/v_scale (load_weights), else 1.0.
        self.kv_scales = KVScales()
        if options.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden]; cos, sin: [T, head_dim / 2]
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.output_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.ops.rotary_neox(q, k, cos, sin)
        ctx = get_forward_context()
        kv_cache = ctx.kv_caches[self.layer_idx]
        if ctx.calculate_kv_scales:
            self.kv_scales.calculate(k, v, kv_cache.dtype)
        out = ctx.backend.forward(
            q, k, v, kv_cache, ctx.metadata, self.scale, self.sliding_window, kv_scales=self.kv_scales
        )  # [T, H, D]
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: PretrainedConfig, options: DecoderOptions, prefix: str) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [size, size], bias=options.mlp_bias,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(size, config.hidden_size, bias=options.mlp_bias,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = act_and_mul(getattr(config, "hidden_act", "silu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden] -> gate_up: [T, 2 * intermediate] -> [T, intermediate] -> [T, hidden]
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_idx: int, options: DecoderOptions, prefix: str) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx, options, prefix=f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, options, prefix=f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` is the previous sublayer's output, not yet added to the ``residual`` stream (None
        before the first layer, where ``x`` is the stream): each norm adds then normalises."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, cos, sin)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    def __init__(self, config: PretrainedConfig, options: DecoderOptions, prefix: str) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, options, prefix=f"{prefix}.layers.{i}") for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # One table for all layers; cos/sin are looked up once per step, not per layer.
        self.rotary_emb = RotaryEmbedding(config, head_dim_of(config))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.rotary_emb(positions)  # [T, head_dim / 2] each
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin)
        return self.norm(x) if residual is None else self.norm(x, residual)[0]


class LlamaForCausalLM(CausalLM):
    """Llama: GQA, optional attention/MLP bias, explicit ``head_dim``, tied or separate LM head."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.config = config
        self.model = DecoderModel(config, self.decoder_options(config), prefix="model")
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        if self.tied:  # the LM head multiplies by the embedding matrix itself (one shared parameter)
            self.lm_head.tie_to(self.model.embed_tokens)

    @classmethod
    def decoder_options(cls, config: PretrainedConfig) -> DecoderOptions:
        """The architecture's variant switches for ``config`` (overridden by Qwen2/Qwen3)."""
        bias = bool(getattr(config, "attention_bias", False))
        return DecoderOptions(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(config, "mlp_bias", False)))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # hidden_states: [N, hidden] -> [N, vocab]
        return self.lm_head(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Hand each HF-named tensor to its parameter's ``weight_loader`` (fused ones part by part).

        Raises ModelLoadError for a tensor no parameter takes, a shape that does not
        match the config, or parameters the checkpoint left unset.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        filled: set[tuple[str, str | int | None]] = set()
        for name, tensor in weights:
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if load_kv_scale(self, name, tensor):  # an fp8 KV-cache scale (k_scale, v_scale, ...)
                loaded.add(name)
                continue
            target, shard_id = self._param_for(name)
            param = params.get(target)
            if param is None:
                raise ModelLoadError(f"checkpoint tensor '{name}' matches no parameter of {type(self).__name__}")
            weight_loader = getattr(param, "weight_loader", default_weight_loader)
            try:
                weight_loader(param, tensor, shard_id)
            except WeightShapeError as exc:
                raise ModelLoadError(
                    f"checkpoint tensor '{name}' has shape {tuple(tensor.shape)} but {type(self).__name__} "
                    f"expects {exc.expected}; the weights do not match the config"
                ) from None
            loaded.add(name)
            filled.add((target, shard_id))
        self._check_all_filled(params, filled)
        return loaded

    def _param_for(self, hf_name: str) -> tuple[str, str | int | None]:
        """Our parameter for a checkpoint name, and the part's shard id when it is fused."""
        if hf_name == "lm_head.weight" and self.tied:
            # Tied: the LM head is the embedding (some checkpoints store both copies).
            return "model.embed_tokens.weight", None
        parts = hf_name.split(".")
        if len(parts) >= 2 and parts[-2] in STACKED_PARAMS:
            fused, shard_id = STACKED_PARAMS[parts[-2]]
            return ".".join([*parts[:-2], fused, parts[-1]]), shard_id
        return hf_name, None

    def _check_all_filled(self, params: dict[str, nn.Parameter], filled: set[tuple[str, str | int | None]]) -> None:
        """Raise ModelLoadError naming (in checkpoint terms) the weights that never arrived."""
        parts_of: dict[str, list[tuple[str, str | int]]] = {}
        for hf_module, (fused, shard_id) in STACKED_PARAMS.items():
            parts_of.setdefault(fused, []).append((hf_module, shard_id))
        missing = []
        for name, param in params.items():
            if getattr(param, "optional", False):  # e.g. GPTQ's g_idx without act-order
                continue
            module_path, _, kind = name.rpartition(".")
            parent, _, module_name = module_path.rpartition(".")
            if module_name not in parts_of:
                if (name, None) not in filled:
                    missing.append(name)
                continue
            for hf_module, shard_id in parts_of[module_name]:
                if (name, shard_id) not in filled:
                    missing.append(f"{parent}.{hf_module}.{kind}")
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(f"the checkpoint has no weights for {shown}")


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: Llama's shape; its ``sliding_window`` (when set) limits every layer's attention."""
