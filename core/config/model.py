"""ModelConfig: which model to run and how to interpret it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fw.core.config.base import ConfigBase, ConfigError, option, require_positive

ModelDType = Literal["auto", "half", "float16", "bfloat16", "float", "float32", "bf16"]

#: --dtype spellings -> the torch dtype name they mean ("auto" is left to the platform).
DTYPE_NAMES: dict[str, str] = {
    "half": "float16",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float": "float32",
    "float32": "float32",
}


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Which model to load, its tokenizer, dtype and context length."""

    model: str | None = option(
        None,
        help="Name or path of the model: a local directory, a Hugging Face repo id, a cache snapshot "
        "path or a .gguf file. Without one, fw serves its built-in default model.",
    )
    served_model_name: tuple[str, ...] | None = option(
        None,
        help="The model name(s) the API accepts. With several names, the first is the one "
        "responses report. Defaults to the model reference (org/name for a hub snapshot).",
    )
    tokenizer: str | None = option(
        None, help="Name or path of the tokenizer to use. Defaults to the model's own tokenizer."
    )
    tokenizer_mode: Literal["auto", "slow", "mistral", "custom"] = option(
        "auto", help="'auto' uses the model's fast tokenizer; vLLM's other modes are not available yet."
    )
    revision: str | None = option(
        None, help="The model version to use from a hub: a branch, a tag or a commit id. Defaults to main."
    )
    tokenizer_revision: str | None = option(
        None, help="The tokenizer version to use from a hub (branch, tag or commit id)."
    )
    trust_remote_code: bool = option(
        False, help="Allow running code shipped with the model on the hub (needed by some architectures)."
    )
    dtype: ModelDType = option(
        "auto",
        help="Data type of the weights and activations. 'auto' lets the platform choose from the "
        "checkpoint's dtype (e.g. bfloat16 stays bfloat16 on a GPU); 'half' is float16, "
        "'float' is float32.",
    )
    max_model_len: int | None = option(
        None,
        help="Context length: the most tokens (prompt plus output) a request may have. Accepts "
        "1k (1000) and 1K (1024) style suffixes. Defaults to the model's own limit.",
    )
    quantization: str | None = option(
        None,
        plugin_kind="quantization_methods",
        help="Quantization method of the weights. Defaults to the method named in the "
        "checkpoint's quantization_config, if any.",
    )
    seed: int = option(0, help="Random seed, so that sampling is reproducible.")
    generation_config: str = option(
        "auto",
        help="Default sampling parameters: 'auto' reads generation_config.json from the model, "
        "'vllm' uses fw's defaults, or give a directory holding a generation_config.json.",
    )
    max_logprobs: int = option(
        20, help="The most log-probabilities a request may ask for per token (logprobs and prompt_logprobs)."
    )
    enforce_eager: bool = option(
        False, help="Always run the model eagerly: no CUDA graphs and no torch.compile. fw runs every "
        "model eagerly today, so this is always in effect."
    )

    def validate(self) -> None:
        if self.model is not None and not self.model.strip():
            raise ConfigError("model must not be empty")
        if self.served_model_name is not None and not all(name.strip() for name in self.served_model_name):
            raise ConfigError("served_model_name must not contain empty names")
        require_positive("max_model_len", self.max_model_len)
        if self.seed < 0:
            raise ConfigError(f"seed must be 0 or more, got {self.seed}")
        if self.max_logprobs < 0:
            raise ConfigError(f"max_logprobs must be 0 or more, got {self.max_logprobs}")
        if not self.generation_config.strip():
            raise ConfigError("generation_config must be 'auto', 'vllm' or a directory")

    @property
    def torch_dtype_name(self) -> str | None:
        """The torch dtype name ``--dtype`` asks for (``"float16"``...), or None for ``auto``."""
        return DTYPE_NAMES.get(self.dtype)
