"""Engine start-up: resolve the model, pick the platform and dtype, build and load the model,
and size the KV cache."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fw.core.attention.kv_quant import kv_cache_dtype, log_kv_cache_dtype
from fw.core.config.base import ConfigError
from fw.core.config.engine import EngineConfig
from fw.core.errors import FwError
from fw.core.interfaces import CausalLM, Platform, QuantizationMethod, ResolvedModel, WeightLoader
from fw.core.layers.build import ModelBuildContext, building_model
from fw.core.layers.linear import process_weights_after_loading
from fw.core.model_files import resolve_model, select_architecture, select_platform, select_weight_loader
from fw.core.plugins import Plugins
from fw.core.runner.model_runner import KVCacheSpec

logger = logging.getLogger("fw")


#: config.json keys that give a model's context length, as vLLM reads them.
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass
class LoadedModel:
    resolved: ResolvedModel
    hf_config: Any
    tokenizer: Any
    model: CausalLM
    platform: Platform
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    generation_defaults: dict[str, Any]
    eos_token_ids: tuple[int, ...]
    load_format: str
    quantization: str | None
    load_seconds: float
    num_params: int  # counted before the layers processed their weights (packing may free some)
    #: Bytes the weights take in memory once processed (packed codes, scales, repacked copies).
    weight_bytes: int | None = None


def checkpoint_dtype(hf_config: Any) -> torch.dtype | None:
    # vars(), not getattr: transformers 5 warns on every read of the deprecated torch_dtype.
    dtype = getattr(hf_config, "dtype", None) or vars(hf_config).get("torch_dtype")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def choose_dtype(config: EngineConfig, platform: Platform, hf_config: Any) -> torch.dtype:
    name = config.model.torch_dtype_name
    dtype = getattr(torch, name) if name else platform.default_dtype(checkpoint_dtype(hf_config))
    if dtype not in platform.supported_dtypes():
        supported = ", ".join(str(d).removeprefix("torch.") for d in platform.supported_dtypes())
        raise FwError(f"--dtype {name} is not supported on the {platform.name} platform; supported: {supported}")
    return dtype


def text_config(hf_config: Any) -> Any:
    return getattr(hf_config, "text_config", None) or hf_config


def derive_max_model_len(config: EngineConfig, hf_config: Any) -> int:
    """``--max-model-len``, or the model's own context length; never more than the model's."""
    cfg = text_config(hf_config)
    limit = next((v for k in CONTEXT_LENGTH_KEYS if isinstance(v := getattr(cfg, k, None), int) and v > 0), None)
    asked = config.model.max_model_len
    if asked is None:
        if limit is None:
            raise FwError("the model's config.json does not state its context length; give --max-model-len")
        return limit
    if limit is not None and asked > limit:
        raise ConfigError(f"max_model_len {asked} is larger than the model's context length {limit} (from its config)")
    return asked


def checkpoint_quant_config(hf_config: Any) -> dict[str, Any]:
    """The checkpoint's ``quantization_config`` as a dict (transformers may have made it an object)."""
    quant_config = getattr(hf_config, "quantization_config", None)
    if quant_config is None:
        return {}
    return dict(quant_config) if isinstance(quant_config, dict) else quant_config.to_dict()


def choose_quantization(config: EngineConfig, hf_config: Any, plugins: Plugins, dtype: torch.dtype,
                        platform: Platform | None = None) -> tuple[QuantizationMethod | None, torch.dtype]:
    """The quantization method, built from the checkpoint's config (``--quantization`` or the
    checkpoint's own; a plugin must provide it), and the dtype the model computes in with it.

    Names resolve through the registry, where a method is registered under its name and its
    aliases (vLLM's ``awq_marlin`` reads ``awq`` checkpoints); ``--quantization`` must name the
    checkpoint's method or an alias of it.
    """
    quant_config = checkpoint_quant_config(hf_config)
    in_checkpoint = str(quant_config["quant_method"]) if quant_config.get("quant_method") else None
    requested = config.model.quantization
    methods = plugins.quantization_methods
    if in_checkpoint is not None and in_checkpoint not in methods:
        available = ", ".join(sorted(methods.names())) or "none"
        broken = ", ".join(p.describe() for p in methods.broken_plugins)
        raise FwError(f"the checkpoint is quantized with '{in_checkpoint}' (quantization_config.quant_method), which "
                      f"no installed plugin provides; installed quantization methods: {available}. Install a plugin "
                      "package that provides it (`fw plugins list` shows what is loaded)"
                      + (f"; these plugins failed to load and may provide it: {broken}" if broken else ""))
    if requested and in_checkpoint and methods.get(requested) is not methods.get(in_checkpoint):
        raise ConfigError(f"--quantization {requested} was given, but the checkpoint is quantized with {in_checkpoint}")
    name = requested or in_checkpoint
    if name is None:
        return None, dtype
    method_cls = methods.get(name)  # raises, listing the available methods
    if name != method_cls.name:
        logger.info("quantization %s: fw's %s method reads these checkpoints (%s is another name for the same "
                    "format)", name, method_cls.name, name)
    if platform is not None:
        chosen, dtype = dtype, method_cls.act_dtype(dtype, platform)
        if dtype != chosen:
            logger.info("quantization %s on the %s platform computes in %s, not %s (%s)", method_cls.name,
                        platform.name, str(dtype).removeprefix("torch."), str(chosen).removeprefix("torch."),
                        "its kernels there are fast in this dtype only")
    if dtype not in method_cls.supported_act_dtypes():
        supported = ", ".join(str(d).removeprefix("torch.") for d in method_cls.supported_act_dtypes())
        raise FwError(f"quantization {name} computes in {supported}, not {str(dtype).removeprefix('torch.')}; "
                      "give --dtype with one of them")
    try:
        return method_cls.from_config(quant_config), dtype
    except ValueError as exc:
        raise FwError(f"quantization {name}: {exc}") from None


def count_parameters(model: torch.nn.Module) -> int:
    """The model's parameter count as the checkpoint's architecture has it: a linear layer counts
    its ``in x out`` weights however a quantization stores them (int4 codes pack 8 in an int32),
    and a tied LM head is the embedding's, counted once."""
    from fw.core.layers.linear import LinearBase

    total, seen = 0, set()
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        if isinstance(module, LinearBase) and not module.weight_shared:
            own = [module.bias] if module.bias is not None and id(module.bias) not in seen else []
            total += module.input_size * sum(module.output_sizes)
        seen.update(id(p) for p in own)
        total += sum(p.numel() for p in own)
    return total


def resident_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights in memory after processing: every parameter and buffer, and the
    tensors layers keep as attributes (oneDNN-packed copies), each storage once. The rotary
    tables are not weights."""
    from fw.core.layers.rotary import RotaryEmbedding

    counted, total = set(), 0
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            continue
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                   *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        for tensor in tensors:
            if tensor.is_mkldnn:  # opaque: no storage to look at; its values in its dtype
                key, size = id(tensor), tensor.numel() * tensor.element_size()
            else:
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
            if key not in counted:
                counted.add(key)
                total += size
    return total


def generation_defaults(config: EngineConfig, model_path: Path, hf_config: Any) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Default sampling values from generation_config.json (``--generation-config auto``), and eos ids."""
    eos = getattr(hf_config, "eos_token_id", None)
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    source = config.model.generation_config
    if source == "vllm":
        return {}, tuple(eos_ids)
    directory = model_path if source == "auto" else Path(source)
    if not (directory / "generation_config.json").is_file():
        return {}, tuple(eos_ids)
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s/generation_config.json: %s", directory, exc)
        return {}, tuple(eos_ids)
    defaults = {}
    for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        value = getattr(gen, key, None)
        if value is not None and key in gen.to_diff_dict():
            defaults[key] = value
    if getattr(gen, "max_new_tokens", None) is not None and "max_new_tokens" in gen.to_diff_dict():
        defaults["max_tokens"] = gen.max_new_tokens
    gen_eos = gen.eos_token_id
    for token_id in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
        if token_id not in eos_ids:
            eos_ids.append(token_id)
    return defaults, tuple(eos_ids)


@dataclass
class ModelFiles:
    """The model's files resolved and its config and tokenizer read: everything but the weights."""

    resolved: ResolvedModel
    platform: Platform
    loader: WeightLoader
    hf_config: Any
    tokenizer: Any


def open_model_files(config: EngineConfig, plugins: Plugins) -> ModelFiles:
    model_config, load_config = config.model, config.load
    resolved = resolve_model(plugins, model_config.model, revision=model_config.revision,
                             download_dir=load_config.download_dir)
    platform = select_platform(plugins, config.device.device)
    loader = select_weight_loader(plugins, load_config.load_format, resolved.path)
    hf_config = loader.load_hf_config(resolved.path, trust_remote_code=model_config.trust_remote_code)
    if model_config.tokenizer is not None:
        tokenizer_model = resolve_model(plugins, model_config.tokenizer, revision=model_config.tokenizer_revision,
                                        download_dir=load_config.download_dir)
        tokenizer = select_weight_loader(plugins, "auto", tokenizer_model.path).load_tokenizer(
            tokenizer_model.path, trust_remote_code=model_config.trust_remote_code)
    else:
        tokenizer = loader.load_tokenizer(resolved.path, trust_remote_code=model_config.trust_remote_code)
    return ModelFiles(resolved, platform, loader, hf_config, tokenizer)


def load_model(config: EngineConfig, plugins: Plugins) -> LoadedModel:
    model_config = config.model
    files = open_model_files(config, plugins)
    resolved, platform, loader, hf_config, tokenizer = (files.resolved, files.platform, files.loader, files.hf_config,
                                                        files.tokenizer)
    model_cls = select_architecture(plugins, hf_config)
    max_model_len = derive_max_model_len(config, hf_config)
    dtype = choose_dtype(config, platform, hf_config)
    quantization, dtype = choose_quantization(config, hf_config, plugins, dtype, platform)
    device = platform.torch_device()
    torch.manual_seed(model_config.seed)

    start = time.perf_counter()
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # The layers take their kernels from this context as they are constructed.
        with torch.device(device), building_model(ModelBuildContext.for_platform(platform, dtype, quantization)):
            model = model_cls(text_config(hf_config))
    finally:
        torch.set_default_dtype(previous_dtype)
    # Loaders show their own progress bars; the model raises if a weight is missing or misshapen.
    model.load_weights(loader.iter_weights(resolved.path, hf_config))
    model.eval()
    num_params = count_parameters(model)
    process_weights_after_loading(model)
    seconds = time.perf_counter() - start
    logger.info("Loaded %s (%s, %.1fM parameters, %s on %s) in %.1f s", resolved.served_name, model_cls.__name__,
                num_params / 1e6, str(dtype).removeprefix("torch."), platform.name, seconds)
    defaults, eos_ids = generation_defaults(config, resolved.path if resolved.path.is_dir() else resolved.path.parent,
                                            hf_config)
    weight_bytes = resident_weight_bytes(model)
    if quantization is not None:
        logger.info("Weights: %.1f MB in memory (%.2fx of bfloat16) with quantization %s", weight_bytes / 1e6,
                    weight_bytes / (2 * num_params), quantization.name)
    return LoadedModel(resolved, hf_config, tokenizer, model, platform, device, dtype, max_model_len, defaults,
                       eos_ids, loader.name, quantization.name if quantization else None, seconds, num_params,
                       weight_bytes)


def kv_cache_spec(config: EngineConfig, loaded: LoadedModel) -> KVCacheSpec:
    cfg = text_config(loaded.hf_config)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    # The model's dtype, or fp8 (refused in one line where torch or the platform cannot run it).
    dtype = kv_cache_dtype(config.cache.kv_cache_dtype, loaded.dtype, loaded.platform)
    log_kv_cache_dtype(loaded.model, dtype, config.cache.calculate_kv_scales)
    return KVCacheSpec(cfg.num_hidden_layers, num_kv_heads, head_dim, config.cache.block_size, dtype,
                       calculate_scales=config.cache.calculate_kv_scales)


def num_kv_blocks(config: EngineConfig, loaded: LoadedModel, spec: KVCacheSpec, profile_peak_bytes: int | None) -> int:
    """Blocks for the KV cache: the override, else what the platform's memory budget holds."""
    cache = config.cache
    if cache.num_gpu_blocks_override is not None:
        return cache.num_gpu_blocks_override
    return max(loaded.platform.kv_cache_budget(cache, profile_peak_bytes) // spec.block_bytes, 0)


def check_fits(num_blocks: int, block_size: int, max_model_len: int) -> None:
    capacity = num_blocks * block_size
    if capacity < max_model_len:
        raise FwError(
            f"--max-model-len {max_model_len} does not fit in the KV cache, which holds {capacity} tokens "
            f"({num_blocks} blocks); the largest value that fits is {capacity}. Lower --max-model-len or give the "
            "cache more memory (--kv-cache-memory-bytes, --gpu-memory-utilization)."
        )
    logger.info("KV cache: %d blocks of %d tokens = %d tokens; maximum concurrency at %d tokens per request: %.2fx",
                num_blocks, block_size, capacity, max_model_len, capacity / max_model_len)
