"""Rotary position embedding (RoPE) for the Llama family, with HF's scaling types.

The frequencies come from transformers' own RoPE init functions
(``ROPE_INIT_FUNCTIONS``: linear, dynamic, llama3, yarn), so scaled checkpoints get
exactly the numbers Hugging Face uses; the cos/sin table and the rotation are ours.
The rotation is the "neox" half-split (HF Llama's ``rotate_half``): GGUF weights arrive
already un-permuted, so one rotation serves every checkpoint format. ``apply_rotary`` is
its torch form; attention layers rotate through the platform's ``rotary_neox`` op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fw.core.forward_context import get_forward_context

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from fw.core.forward_context import AttentionMetadata

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
DEFAULT_ROPE_THETA = 10000.0


def rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """The config's RoPE settings as one dict holding at least ``rope_type`` and ``rope_theta``.

    transformers 5 keeps them in ``config.rope_parameters``; 4.x in ``config.rope_theta``
    plus an optional ``config.rope_scaling`` (whose type key is ``type`` in old checkpoints).
    """
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(config, "rope_theta", None) or DEFAULT_ROPE_THETA
    if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope type {params['rope_type']!r} is not supported by fw's Llama-family models; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    return params


def inv_freq_and_attention_factor(
    config: PretrainedConfig, head_dim: int, params: dict[str, Any], seq_len: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """``inv_freq: [head_dim // 2]`` (float32) and the factor that scales cos/sin (yarn's mscale, else 1)."""
    if params["rope_type"] == "default":
        # transformers computes this one inside each model class, not in ROPE_INIT_FUNCTIONS.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
        return 1.0 / (params["rope_theta"] ** exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kwargs = {} if seq_len is None else {"seq_len": seq_len}
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, torch.device("cpu"), **kwargs)
    return inv_freq.float(), float(attention_factor)


def max_rope_positions(config: PretrainedConfig, params: dict[str, Any]) -> int:
    """How many positions the cos/sin table covers: the context the scaled RoPE is meant for.

    linear and dynamic stretch ``max_position_embeddings`` by ``factor``; yarn stretches
    the original pre-training length (vLLM sizes its tables the same way); llama3
    checkpoints already declare the extended length.
    """
    max_positions = int(config.max_position_embeddings)
    factor = float(params.get("factor") or 1.0)
    if params["rope_type"] in ("linear", "dynamic"):
        return int(max_positions * factor)
    if params["rope_type"] == "yarn":
        original = int(params.get("original_max_position_embeddings") or max_positions)
        return max(max_positions, int(original * factor))
    return max_positions


def cos_sin_table(positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float) -> torch.Tensor:
    """``positions: [N]``, ``inv_freq: [D/2]`` -> ``[N, D]`` float32: cos in the first half, sin in the second."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]  # [N, D/2]
    return torch.cat((freqs.cos() * attention_factor, freqs.sin() * attention_factor), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each head's halves: ``x: [T, H, D]``, ``cos, sin: [T, D/2]`` -> ``[T, H, D]``.

    Equal, operation for operation, to HF's ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)``.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [T, 1, D/2]
    x1, x2 = x.chunk(2, dim=-1)  # [T, H, D/2] each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RotaryEmbedding(nn.Module):
    """A cos/sin table over every position the model supports, indexed by token position.

    The table is computed in float32 and stored in the default dtype at construction;
    ``model.to(dtype)`` casts it like HF casts its cos/sin to the activations' dtype.
    A step whose ``max_seq_len`` passes the end of the table (``--max-model-len`` above
    what the config declares) extends it, as HF would compute those positions; the
    check reads a Python int of the metadata, so it costs no device sync.

    ``dynamic`` (NTK) scaling follows Hugging Face: a sequence whose context is longer
    than ``max_position_embeddings`` has its frequencies recomputed from that context
    length (``seq_lens`` of the step), and the new tokens of the step are rotated with
    them; shorter sequences use the unscaled frequencies. HF keeps one growing length
    for the whole (padded) batch and does not shrink it until a sequence is shorter
    than ``max_position_embeddings`` again, so the two agree for a single sequence
    generated from scratch, and we differ from HF only where HF's result depends on
    what else was in the batch or ran before.
    """

    def __init__(self, config: PretrainedConfig, head_dim: int) -> None:
        super().__init__()
        params = rope_parameters(config)
        self.rope_type: str = params["rope_type"]
        self.head_dim = head_dim
        # Plain attributes, not buffers: model.to(bfloat16) must not round the frequencies.
        self._inv_freq, self._attention_factor = inv_freq_and_attention_factor(config, head_dim, params)
        table = cos_sin_table(torch.arange(max_rope_positions(config, params)), self._inv_freq, self._attention_factor)
        self.register_buffer("cos_sin_cache", table.to(torch.get_default_dtype()), persistent=False)
        # Only dynamic NTK recomputes frequencies after construction.
        self._config = config if self.rope_type == "dynamic" else None
        self._params = params
        self._original_max_positions = int(config.max_position_embeddings)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions: [T]`` -> ``cos, sin: [T, head_dim // 2]`` each."""
        metadata = get_forward_context().metadata
        if metadata.max_seq_len > self.cos_sin_cache.shape[0]:
            self._extend_table(metadata.max_seq_len)
        cos_sin = self.cos_sin_cache[positions]  # [T, D]
        if self._config is not None:
            cos_sin = self._rescale_long_sequences(positions, cos_sin, metadata)
        cos, sin = cos_sin.chunk(2, dim=-1)
        return cos, sin

    def _extend_table(self, num_positions: int) -> None:
        num_positions = max(num_positions, 2 * self.cos_sin_cache.shape[0])
        positions = torch.arange(num_positions, device=self.cos_sin_cache.device)
        table = cos_sin_table(positions, self._inv_freq, self._attention_factor)
        self.cos_sin_cache = table.to(self.cos_sin_cache.dtype)

    def _rescale_long_sequences(
        self, positions: torch.Tensor, cos_sin: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        """Dynamic NTK: recompute the rows of sequences whose context outgrew the original length."""
        seq_lens = metadata.seq_lens_cpu or metadata.seq_lens.tolist()
        if max(seq_lens) <= self._original_max_positions:
            return cos_sin
        starts = metadata.query_start_loc_cpu or metadata.query_start_loc.tolist()
        cos_sin = cos_sin.clone()
        for s, seq_len in enumerate(seq_lens):
            if seq_len <= self._original_max_positions:
                continue
            # A tensor length, as HF passes it, so the base is computed in the same precision.
            seq_len_tensor = torch.tensor(seq_len)
            inv_freq, _ = inv_freq_and_attention_factor(self._config, self.head_dim, self._params, seq_len_tensor)
            rows = slice(starts[s], starts[s + 1])
            cos_sin[rows] = cos_sin_table(positions[rows], inv_freq, 1.0).to(cos_sin.dtype)
        return cos_sin
