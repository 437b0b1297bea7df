"""Which method a checkpoint gets, the dtype it computes in, and the one-line errors for what fw
cannot read: an unknown method, a contradicting flag, missing or misshapen tensors, unsupported
bits, group sizes and formats."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from fw import LLM
from fw.core.config.base import ConfigError
from fw.core.errors import FwError, ModelLoadError

OPTIONS = dict(kv_cache_memory_bytes=2**24)


@pytest.fixture(scope="module")
def checkpoints(quant_cases, tiny_checkpoint, tmp_path_factory, write_quantized_checkpoint):
    """``checkpoints(method, case_id)`` -> a quantized tiny checkpoint (built once each)."""
    built = {}

    def make(method: str, case_id: str):
        if (method, case_id) not in built:
            case = next(c for c in quant_cases[method] if c.id == case_id)
            target = tmp_path_factory.mktemp(f"{method}-{case_id}") / "model"
            write_quantized_checkpoint(tiny_checkpoint("llama"), target, case)
            built[method, case_id] = target
        return built[method, case_id]

    return make


def edited(source, tmp_path, config=None, tensors=None):
    """A copy of the checkpoint at ``source`` with ``config(dict)`` and ``tensors(dict)`` applied."""
    import shutil

    target = tmp_path / "edited"
    shutil.copytree(source, target)
    if config is not None:
        data = json.loads((target / "config.json").read_text())
        config(data)
        (target / "config.json").write_text(json.dumps(data))
    if tensors is not None:
        state = load_file(str(target / "model.safetensors"))
        tensors(state)
        save_file(state, str(target / "model.safetensors"))
    return str(target)


def test_the_checkpoints_method_is_chosen_without_a_flag(checkpoints):
    llm = LLM(str(checkpoints("awq", "g32")), dtype="float32", **OPTIONS)
    assert llm.engine.loaded.quantization == "awq"


def test_vllms_alias_selects_the_same_method_with_a_log_line(checkpoints, caplog):
    with caplog.at_level(logging.INFO, logger="fw"):
        llm = LLM(str(checkpoints("awq", "g32")), dtype="float32", quantization="awq_marlin", **OPTIONS)
    assert llm.engine.loaded.quantization == "awq"
    assert any("awq_marlin" in r.getMessage() and "awq method" in r.getMessage() for r in caplog.records)


def test_a_flag_contradicting_the_checkpoint_is_one_error(checkpoints):
    with pytest.raises(ConfigError, match="--quantization gptq was given, but the checkpoint is quantized with awq"):
        LLM(str(checkpoints("awq", "g32")), dtype="float32", quantization="gptq", **OPTIONS)


def test_a_method_no_plugin_provides_lists_the_installed_ones(checkpoints, tmp_path):
    path = edited(checkpoints("awq", "g32"), tmp_path, config=lambda c: c["quantization_config"].update(
        quant_method="hqq"))
    with pytest.raises(FwError) as error:
        LLM(path, dtype="float32", **OPTIONS)
    message = str(error.value)
    assert "'hqq'" in message and "awq, awq_marlin, compressed-tensors, fp8" in message
    assert "Install a plugin package" in message and "\n" not in message


def test_half_on_a_cpu_computes_in_the_dtype_its_kernels_are_fast_in(checkpoints, caplog):
    from fw.plugins.platforms.cpu import cpu_has_fast_bf16

    with caplog.at_level(logging.INFO, logger="fw"):
        llm = LLM(str(checkpoints("awq", "g32")), dtype="half", **OPTIONS)
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert llm.engine.loaded.dtype == expected
    name = str(expected).removeprefix("torch.")
    assert any(f"computes in {name}, not float16" in r.getMessage() for r in caplog.records)
    out = llm.generate(["the quick"], use_tqdm=False)[0].outputs[0]
    assert out.token_ids


def test_a_missing_scale_is_named_in_checkpoint_terms(checkpoints, tmp_path):
    path = edited(checkpoints("gptq", "4bit-sym"), tmp_path,
                  tensors=lambda s: s.pop("model.layers.1.self_attn.k_proj.scales"))
    with pytest.raises(ModelLoadError, match="model.layers.1.self_attn.k_proj.scales"):
        LLM(path, dtype="float32", **OPTIONS)


def test_a_misshapen_tensor_is_named_with_the_shape_expected(checkpoints, tmp_path):
    def cut(state):
        name = "model.layers.0.mlp.down_proj.qweight"
        state[name] = state[name][:, :4].contiguous()

    path = edited(checkpoints("awq", "g32"), tmp_path, tensors=cut)
    with pytest.raises(ModelLoadError, match=r"'model.layers.0.mlp.down_proj.qweight' has shape \(128, 4\)"):
        LLM(path, dtype="float32", **OPTIONS)


@pytest.mark.parametrize("method,case_id,change,message", [
    ("gptq", "4bit-sym", {"bits": 3}, "quantization_config.bits is 3; fw reads 4- and 8-bit"),
    ("awq", "g32", {"bits": 8}, "quantization_config.bits is 8"),
    ("awq", "g32", {"version": "gemv"}, "version is 'gemv'"),
    ("awq", "g32", {"group_size": 48}, "group_size 48 does not divide its 64 inputs"),
    ("gptq", "4bit-sym", {"checkpoint_format": "marlin"}, "checkpoint_format is 'marlin'"),
    ("fp8", "block", {"weight_block_size": [128]}, "weight_block_size is \\[128\\]"),
    ("fp8", "block", {"activation_scheme": "nope"}, "activation_scheme is 'nope'"),
    ("compressed-tensors", "w4a16-act-order", {"format": "nvfp4-pack-quantized"},
     "format 'nvfp4-pack-quantized' is not supported"),
])
def test_unsupported_config_fields_are_one_line_errors(checkpoints, tmp_path, method, case_id, change, message):
    path = edited(checkpoints(method, case_id), tmp_path, config=lambda c: c["quantization_config"].update(change))
    with pytest.raises(FwError, match=message) as error:
        LLM(path, dtype="float32", **OPTIONS)
    assert "\n" not in str(error.value)


def test_compressed_tensors_bit_width_is_named_by_its_field(checkpoints, tmp_path):
    def three_bits(config):
        config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 3

    path = edited(checkpoints("compressed-tensors", "w4a16-act-order"), tmp_path, config=three_bits)
    with pytest.raises(FwError, match="config_groups.group_0.weights.num_bits is 3"):
        LLM(path, dtype="float32", **OPTIONS)


def test_ignored_layers_stay_unquantized(quant_cases, tiny_checkpoint, tmp_path, write_quantized_checkpoint):
    from dataclasses import replace

    from fw.core.layers.linear import LinearBase
    from fw.core.layers.ops import UnquantizedLinearMethod

    case = next(c for c in quant_cases["compressed-tensors"] if c.id == "w4a16-act-order")
    config = json.loads(json.dumps(case.quant_config))
    config["ignore"] = ["lm_head", "re:.*down_proj$"]
    target = tmp_path / "model"
    write_quantized_checkpoint(tiny_checkpoint("llama"), target, replace(case, quant_config=config),
                               leave=lambda module: module.endswith("down_proj"))
    llm = LLM(str(target), dtype="float32", **OPTIONS)
    methods = {name: type(m.linear_method) for name, m in llm.engine.loaded.model.named_modules()
               if isinstance(m, LinearBase)}
    assert all(issubclass(cls, UnquantizedLinearMethod) for name, cls in methods.items() if "down_proj" in name)
    assert all(cls.__name__ == "CompressedTensorsIntLinearMethod" for name, cls in methods.items()
               if "down_proj" not in name and name != "lm_head")
    assert llm.generate(["the quick"], use_tqdm=False)[0].outputs[0].token_ids
