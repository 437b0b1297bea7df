"""Qwen2 and Qwen3: the Llama decoder with Qwen's bias and normalisation choices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fw.core.models.llama import DecoderOptions, LlamaForCausalLM

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: bias on the q/k/v projections (not on o_proj or the MLP)."""

    @classmethod
    def decoder_options(cls, config: PretrainedConfig) -> DecoderOptions:
        return DecoderOptions(qkv_bias=True)


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3: RMSNorm on each q and k head before RoPE; explicit ``head_dim``; no q/k/v bias by default."""

    @classmethod
    def decoder_options(cls, config: PretrainedConfig) -> DecoderOptions:
        bias = bool(getattr(config, "attention_bias", False))
        return DecoderOptions(qkv_bias=bias, o_bias=bias, qk_norm=True)
