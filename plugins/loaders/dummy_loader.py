"""The ``dummy`` load format: random weights of the right shapes, for benchmarks.

Needs only ``config.json`` (no weight files). The parameter names and shapes come from
the transformers model class for the config, built on the meta device (no memory, no
initialisation); each tensor is filled from a seeded generator, uniform in
[-1e-3, 1e-3] as vLLM's dummy loader does, so runs are reproducible and activations
stay small. Norm weights are ones so that the network does not collapse to zeros.
Floating-point weights take the config's ``dtype`` (float32 when it names none).
Weights tied to another (``lm_head`` with ``tie_word_embeddings``) are yielded once,
under the first name. Never chosen by ``--load-format auto``.

Also home of :func:`meta_causal_lm`, which the ``gguf`` loader shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from fw.core.errors import ModelLoadError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import WeightLoader

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DUMMY_SEED = 0
DUMMY_LOW, DUMMY_HIGH = -1e-3, 1e-3


def meta_causal_lm(hf_config: PretrainedConfig) -> torch.nn.Module:
    """The transformers causal-LM for ``hf_config``, on the meta device (shapes only)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as exc:
        model_type = getattr(hf_config, "model_type", "unknown")
        message = f"transformers cannot build a model for model_type {model_type!r}: {exc}"
        raise ModelLoadError(message.splitlines()[0]) from None


def config_dtype(hf_config: PretrainedConfig) -> torch.dtype:
    """The floating-point dtype the config declares (``dtype``/``torch_dtype``), else float32."""
    # transformers >= 4.56 calls it `dtype`; older versions only `torch_dtype`.
    value = getattr(hf_config, "dtype", None) or vars(hf_config).get("torch_dtype")
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    return torch.float32


def _is_norm_weight(name: str, tensor: torch.Tensor) -> bool:
    module = name.rpartition(".")[0]
    return tensor.dim() == 1 and name.endswith(".weight") and "norm" in module.rpartition(".")[2]


class DummyLoader(WeightLoader):
    """Seeded random weights for the config's model, without reading any weight file."""

    name = "dummy"
    auto_priority = None  # only when asked for with --load-format dummy

    def can_load(self, model_path: Path) -> bool:
        return (model_path / "config.json").is_file()

    def iter_weights(self, model_path: Path, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        dtype = config_dtype(hf_config)
        generator = torch.Generator().manual_seed(DUMMY_SEED)
        seen: set[int] = set()
        # keep_vars=True returns the Parameter objects themselves, so tied weights
        # show up as the same object under two names.
        for name, meta_tensor in meta_causal_lm(hf_config).state_dict(keep_vars=True).items():
            if id(meta_tensor) in seen:
                continue
            seen.add(id(meta_tensor))
            shape = tuple(meta_tensor.shape)
            if not meta_tensor.is_floating_point():
                yield name, torch.zeros(shape, dtype=meta_tensor.dtype)
            elif _is_norm_weight(name, meta_tensor):
                yield name, torch.ones(shape, dtype=dtype)
            else:
                yield name, torch.empty(shape, dtype=dtype).uniform_(DUMMY_LOW, DUMMY_HIGH, generator=generator)


@hookimpl
def fw_register_weight_loaders(registry) -> None:
    registry.register(DummyLoader.name, DummyLoader)
