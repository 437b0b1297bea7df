"""What the engine tells its frontends about itself: the model it runs (``EngineInfo``) and
its load (``EngineStats``).

Frontends (``fw.LLM``, the OpenAI server, ``fw serve``'s start-up report, the benchmarks)
read the engine through these frozen values and the request API (``add_request``,
``step``, ``abort_request``), never through its scheduler, block manager or loaded model,
so the engine's insides can change without the frontends noticing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class EngineInfo:
    """The model the engine loaded, where from, how, and the limits every request meets."""

    #: The name to serve the model under when none is given (org/name for a hub snapshot).
    served_name: str
    #: The model as the user named it (``--model``), else the path of its files.
    model: str
    #: The model's files on disk, and the source plugin that found them.
    path: Path
    source: str
    #: The weight loader that read them ("safetensors", "gguf"...).
    load_format: str
    #: config.json's architectures, and fw's class implementing them ("module.QualName").
    architectures: tuple[str, ...]
    implementation: str
    #: The transformers config, for code that loads the same model elsewhere; do not change it.
    hf_config: Any
    tokenizer: Any
    platform: str
    device: torch.device
    dtype: torch.dtype
    quantization: str | None
    #: As the architecture counts them: a quantized layer's ``in x out`` weights, however packed.
    num_params: int
    num_tensors: int
    load_seconds: float
    #: The most tokens (prompt plus output) a request may have.
    max_model_len: int
    #: Token ids run from 0 to vocab_size - 1.
    vocab_size: int
    num_kv_blocks: int
    block_size: int
    #: The most sequences one request may ask for, all its prompts times n (``--max-num-seqs``):
    #: more could never run in one step. A server refuses a bigger request with a 400.
    max_sequences_per_request: int
    #: Bytes the weights take in memory once loaded and processed (quantized codes and scales,
    #: repacked copies); None where the engine did not measure it.
    weight_bytes: int | None = None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for metrics. The counters only grow: diff two snapshots."""

    #: Sequences running and waiting (a request with n samples counts n).
    num_running: int
    num_waiting: int
    #: Fraction of KV-cache blocks in use, 0 to 1.
    kv_cache_usage: float
    #: Prompt tokens looked up in the prefix cache, and found there.
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
