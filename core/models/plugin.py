"""The built-in model architectures, registered like a third-party plugin registers its own."""

from __future__ import annotations

from fw.core.hookspecs import hookimpl
from fw.core.models.llama import LlamaForCausalLM, MistralForCausalLM
from fw.core.models.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM

ARCHITECTURES = (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)


@hookimpl
def fw_register_model_architectures(registry) -> None:
    for cls in ARCHITECTURES:
        registry.register(cls.__name__, cls)
