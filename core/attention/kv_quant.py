"""The fp8 KV cache (``--kv-cache-dtype fp8 | fp8_e4m3 | fp8_e5m2``): its dtypes, per-layer scales,
and the quantization every writer applies.

Storage: a key or value ``x`` is stored as ``fp8(x / scale)`` in ``torch.float8_e4m3fn`` or
``torch.float8_e5m2``, rounded to nearest even and saturated at the format's largest finite
value (448 or 57344), so that an outlier is clipped instead of turning into NaN or inf. It is
the same tensor layout as any other cache dtype, one byte per value: prefix caching, chunked
prefill and preemption see no difference.

Scales: one for keys and one for values per layer (vLLM's per-tensor ``k_scale``/``v_scale``),
held by the model's attention layer as :class:`KVScales`: the checkpoint's when it has them
(the names vLLM accepts, see :func:`kv_scale_target`), else 1.0; with ``--calculate-kv-scales``,
amax / fp8 max of the first batch's keys and values, then fixed (the cache must never hold
values written under two scales).

Readers convert the stored fp8 values exactly (every fp8 value is a bfloat16, float16 and
float32 value) and fold the scales into attention rather than scaling each element: the key
scale multiplies the softmax scale, the value scale multiplies the output.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

from fw.core.errors import FwError, ModelLoadError

if TYPE_CHECKING:
    from torch import nn

    from fw.core.interfaces import Platform

logger = logging.getLogger("fw")

#: --kv-cache-dtype -> torch's name of the storage dtype ("fp8" is e4m3, as in vLLM).
FP8_KV_CACHE_DTYPES: dict[str, str] = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn",
                                       "fp8_e5m2": "float8_e5m2"}


def fp8_dtypes() -> tuple[torch.dtype, ...]:
    """The fp8 cache dtypes this torch has (none before torch 2.1)."""
    names = dict.fromkeys(FP8_KV_CACHE_DTYPES.values())
    return tuple(dtype for name in names if (dtype := getattr(torch, name, None)) is not None)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize == 1


def kv_cache_dtype(name: str, model_dtype: torch.dtype, platform: Platform) -> torch.dtype:
    """The cache's storage dtype for ``--kv-cache-dtype name``; FwError (one line) where this torch
    or the platform cannot run it."""
    if name == "auto":
        return model_dtype
    dtype = getattr(torch, FP8_KV_CACHE_DTYPES[name], None)
    if dtype is None:
        raise FwError(f"--kv-cache-dtype {name} needs torch's float8 dtypes (torch 2.1 or newer); "
                      f"torch {torch.__version__} has none")
    supported = platform.kv_cache_dtypes()
    if dtype not in supported:
        names = [n for n, torch_name in FP8_KV_CACHE_DTYPES.items() if getattr(torch, torch_name) in supported]
        raise FwError(f"--kv-cache-dtype {name} is not supported on the {platform.name} platform; "
                      f"supported: {', '.join(['auto', *names])}")
    return dtype


def quantize_kv(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``fp8(x / scale)``, saturated: what a writer stores. The division is a multiplication by
    the float32 reciprocal, as in the Triton write kernel, so both store the same bytes."""
    limit = torch.finfo(dtype).max
    return (x.float() * (1.0 / scale)).clamp_(-limit, limit).to(dtype)


@dataclass
class KVScales:
    """One attention layer's fp8 KV-cache scales: stored = fp8(x / scale), read = stored * scale.

    Readers ignore them when the cache is not fp8 (a checkpoint's scales then go unused).
    """

    k: float = 1.0
    v: float = 1.0
    #: "default" (1.0), "checkpoint" or "calculated" (--calculate-kv-scales).
    source: str = "default"

    def load(self, which: str, tensor: torch.Tensor, name: str) -> None:
        """Take the checkpoint's ``which`` ("k", "v", or "kv" for the deprecated single ``kv_scale``)."""
        if tensor.numel() != 1:
            raise ModelLoadError(f"checkpoint tensor '{name}' holds {tensor.numel()} values; fw's fp8 KV cache "
                                 "takes one scale per layer (per-tensor)")
        value = float(tensor.float())
        if not (math.isfinite(value) and value > 0):
            raise ModelLoadError(f"checkpoint tensor '{name}' is {value}; a KV-cache scale must be positive and finite")
        if "k" in which:
            self.k = value
        if "v" in which:
            self.v = value
        self.source = "checkpoint"

    def calculate(self, key: torch.Tensor, value: torch.Tensor, cache_dtype: torch.dtype) -> None:
        """Scales that map this batch's largest |key| and |value| to the format's largest value."""
        limit = torch.finfo(cache_dtype).max
        self.k, self.v = _scale_for(key, limit), _scale_for(value, limit)
        self.source = "calculated"


def _scale_for(x: torch.Tensor, limit: float) -> float:
    amax = float(x.abs().amax()) if x.numel() else 0.0
    return amax / limit if math.isfinite(amax) and amax > 0 else 1.0


# ---------------------------------------------------------------- checkpoint names

# The names vLLM accepts (its maybe_remap_kv_scale_name and the compressed-tensors / ModelOpt
# get_cache_scale): self_attn.k_scale, self_attn.attn.k_scale, self_attn.k_proj.output_scale
# (compressed-tensors), self_attn.k_proj.k_scale (ModelOpt), and the deprecated
# self_attn.kv_scale (one scale for both). q_scale and prob_scale quantize the attention's own
# inputs, which fw computes in the model's dtype: they are accepted and ignored.
_KV_SCALE_NAME = re.compile(
    r"^(?P<attention>.+\.self_attn)\."
    r"(?:(?:attn\.)?(?P<which>k|v|kv|q|prob)_scale|(?P<proj>k|v)_proj\.(?:output_scale|(?P=proj)_scale))$"
)


def kv_scale_target(name: str) -> tuple[str, str | None] | None:
    """For a checkpoint tensor that is a KV-cache scale: (its attention module's name, "k", "v",
    "kv", or None for one fw ignores). None for any other tensor."""
    match = _KV_SCALE_NAME.match(name)
    if match is None:
        return None
    which = match["which"] or match["proj"]
    return match["attention"], which if which in ("k", "v", "kv") else None


def load_kv_scale(model: nn.Module, name: str, tensor: torch.Tensor) -> bool:
    """Load ``tensor`` into its attention layer's :class:`KVScales` if ``name`` is a KV-cache
    scale (True), else do nothing (False). Raises ModelLoadError for a scale no layer takes."""
    target = kv_scale_target(name)
    if target is None:
        return False
    attention_name, which = target
    try:
        scales = model.get_submodule(attention_name).kv_scales
    except AttributeError:
        raise ModelLoadError(f"checkpoint tensor '{name}' matches no attention layer of {type(model).__name__}") \
            from None
    if which is not None:
        scales.load(which, tensor, name)
    return True


def log_kv_cache_dtype(model: nn.Module, dtype: torch.dtype, calculate: bool) -> None:
    """One start-up line on the cache dtype and where its scales come from."""
    layers = list(iter_kv_scales(model))
    from_checkpoint = sum(scales.source == "checkpoint" for scales in layers)
    name = str(dtype).removeprefix("torch.")
    if not is_fp8(dtype):
        if from_checkpoint:
            logger.info("KV cache in %s: the checkpoint's k_scale/v_scale (%d layers) are not used; they apply to "
                        "--kv-cache-dtype fp8", name, from_checkpoint)
        return
    if calculate:
        source = "calculated from the first batch (--calculate-kv-scales)"
    elif from_checkpoint:
        rest = ", 1.0 for the others" if from_checkpoint < len(layers) else ""
        source = f"from the checkpoint for {from_checkpoint} of {len(layers)} layers{rest}"
    else:
        source = "1.0 (the checkpoint has no k_scale/v_scale; --calculate-kv-scales computes them)"
    logger.info("KV cache in %s, 1 byte per value; scales %s", name, source)


def iter_kv_scales(model: nn.Module) -> Iterable[KVScales]:
    """Every attention layer's scales, in module order."""
    for module in model.modules():
        scales = getattr(module, "kv_scales", None)
        if isinstance(scales, KVScales):
            yield scales
