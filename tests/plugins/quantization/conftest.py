"""Test checkpoints for the quantization methods: packers written from each format's
description (not from fw's loading code), and the compressed-tensors package's own
compressors where they write the format on a CPU.

A packer takes one checkpoint module's float weight ``[out, in]`` and returns the tensors the
format stores under that module (``qweight``, ``scales``...) and the weight they dequantize
to, as the format defines it. ```all_cases()`` lists, per registered method, the variants its tests
cover: (the checkpoint's ``quantization_config``, the packer).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

FP8 = torch.float8_e4m3fn


@dataclass
class Packed:
    tensors: dict[str, torch.Tensor]  # suffix -> tensor, as the checkpoint names them under the module
    dequantized: torch.Tensor  # float32 [out, in]


@dataclass
class Case:
    method: str
    id: str
    quant_config: dict | None  # None: an unquantized checkpoint, quantized online
    pack: Callable[[torch.Tensor], Packed]


def to_int32(words: torch.Tensor) -> torch.Tensor:
    """Words computed in int64 (values in [0, 2**32)) as the int32 bit patterns a checkpoint holds."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def minmax_qparams(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max quantization of the rows of ``w: [..., n]``: (scale, zero), both [..., 1]."""
    maxq = 2**bits - 1
    low, high = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / maxq).clamp(min=1e-5).half().float()  # checkpoints store float16 scales
    return scale, torch.round(-low / scale).clamp(0, maxq)


# ---------------------------------------------------------------- AWQ (AutoAWQ GEMM)

#: AutoAWQ's WQLinear_GEMM.from_linear packs output ``8c + AWQ_ORDER[i]`` into nibble ``i`` of column c.
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack_columns(values: torch.Tensor) -> torch.Tensor:
    """``values: [rows, out]`` 4-bit -> int32 ``[rows, out / 8]`` in AWQ's nibble order."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for col in range(values.shape[1] // 8):
        for i in range(8):
            packed[:, col] |= values[:, col * 8 + AWQ_ORDER[i]].to(torch.int64) << (i * 4)
    return to_int32(packed)


def pack_awq(weight: torch.Tensor, group: int) -> Packed:
    out_features, in_features = weight.shape
    group = in_features if group == -1 else group
    grouped = weight.T.reshape(in_features // group, group, out_features)  # [G, g, out]
    scale, zero = minmax_qparams(grouped.transpose(1, 2), 4)  # [G, out, 1]
    scale, zero = scale.transpose(1, 2), zero.transpose(1, 2)  # [G, 1, out]
    codes = torch.round(grouped / scale + zero).clamp(0, 15)
    dequantized = ((codes - zero) * scale).reshape(in_features, out_features).T
    return Packed({"qweight": awq_pack_columns(codes.reshape(in_features, out_features)),
                   "qzeros": awq_pack_columns(zero.squeeze(1)), "scales": scale.squeeze(1).half()}, dequantized)


# ---------------------------------------------------------------- GPTQ (AutoGPTQ / GPTQModel)

def gptq_pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes: [in, out]`` -> int32 ``[in / P, out]``: input ``P r + i`` in bits ``[bits i, bits (i + 1))``."""
    per_word = 32 // bits
    packed = torch.zeros(codes.shape[0] // per_word, codes.shape[1], dtype=torch.int64)
    for i in range(per_word):
        packed |= codes[i::per_word].to(torch.int64) << (bits * i)
    return to_int32(packed)


def pack_gptq(weight: torch.Tensor, bits: int, group: int, sym: bool, desc_act: bool, v2: bool,
              seed: int = 0) -> Packed:
    out_features, in_features = weight.shape
    group = in_features if group == -1 else group
    maxq = 2**bits - 1
    order = torch.randperm(in_features, generator=torch.Generator().manual_seed(seed)) if desc_act \
        else torch.arange(in_features)
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // group).to(torch.int32)  # input order[j] is in group j // g
    scales = torch.empty(in_features // group, out_features)
    zeros = torch.empty(in_features // group, out_features)
    for g in range(in_features // group):
        members = weight[:, g_idx == g]  # [out, g]
        if sym:  # AutoGPTQ: scale from the largest magnitude, zero point in the middle
            scale = (2 * members.abs().amax(-1) / maxq).clamp(min=1e-5).half().float()
            zero = torch.full_like(scale, (maxq + 1) // 2)
        else:
            scale, zero = (t.squeeze(-1) for t in minmax_qparams(members, bits))
        scales[g], zeros[g] = scale, zero
    codes = torch.round(weight.T / scales[g_idx.long()] + zeros[g_idx.long()]).clamp(0, maxq)  # [in, out]
    dequantized = ((codes - zeros[g_idx.long()]) * scales[g_idx.long()]).T
    stored_zeros = zeros.to(torch.int64) if v2 else (zeros.to(torch.int64) - 1) & maxq  # v1: minus one
    packed_zeros = gptq_pack_rows(stored_zeros.T, bits).T.contiguous()  # along the outputs
    return Packed({"qweight": gptq_pack_rows(codes, bits), "qzeros": packed_zeros, "scales": scales.half(),
                   "g_idx": g_idx}, dequantized)


# ---------------------------------------------------------------- compressed-tensors

def ct_scheme(weights: dict, input_activations: dict | None = None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    acts = QuantizationArgs(**input_activations) if input_activations else None
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights), input_activations=acts)


def ct_config(fmt: str, weights: dict, input_activations: dict | None = None) -> dict:
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig(config_groups={"group_0": ct_scheme(weights, input_activations)}, format=fmt,
                                ignore=["lm_head"], quantization_status="compressed")
    return json.loads(json.dumps(config.model_dump(), default=str))


def pack_ct(weight: torch.Tensor, fmt: str, weights: dict, input_activations: dict | None = None) -> Packed:
    """Quantize and compress with the package's own qparams and compressor; its decompress is the reference."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = ct_scheme(weights, input_activations)
    args, (out_features, in_features) = scheme.weights, weight.shape
    if args.strategy == "group":
        view = weight.reshape(out_features, in_features // args.group_size, args.group_size)
    elif args.strategy == "channel":
        view = weight.unsqueeze(1)  # [out, 1, in]
    elif args.strategy == "block":
        rows, cols = args.block_structure
        view = weight.reshape(out_features // rows, rows, in_features // cols, cols).transpose(1, 2).flatten(2)
    else:
        view = weight.reshape(1, 1, -1)
    scale, zero_point = calculate_qparams(view.amin(-1), view.amax(-1), args)
    if args.strategy == "tensor":
        scale, zero_point = scale.reshape(1), zero_point.reshape(1)
    state = {"weight": weight, "weight_scale": scale.to(torch.bfloat16).float()}
    if not args.symmetric:
        state["weight_zero_point"] = zero_point
    compressor = BaseCompressor.get_value_from_registry(fmt)
    compressed = compressor.compress(state, scheme)
    dequantized = compressor.decompress(dict(compressed), scheme)["weight"].to(torch.float32)
    if input_activations and not input_activations.get("dynamic"):
        compressed["input_scale"] = torch.tensor([0.05])
    compressed["weight_scale"] = compressed["weight_scale"].to(torch.bfloat16)
    return Packed(dict(compressed), dequantized)


def pack_ct_actorder(weight: torch.Tensor, bits: int, group: int) -> Packed:
    """pack-quantized with ``actorder: group``, from the format's description: signed codes plus
    2**(bits-1), packed along the inputs; ``weight_g_idx`` the group of each input."""
    packed = pack_gptq(weight, bits, group, sym=True, desc_act=True, v2=True, seed=1)
    codes = torch.zeros(weight.shape[1], weight.shape[0], dtype=torch.int64)
    for i in range(32 // bits):  # unpack our GPTQ rows, to repack along the other dimension
        codes[i::32 // bits] = (packed.tensors["qweight"].to(torch.int64) >> (bits * i)) & (2**bits - 1)
    weight_packed = gptq_pack_rows(codes, bits).T.contiguous()  # [out, in / P]
    return Packed({"weight_packed": weight_packed, "weight_scale": packed.tensors["scales"].T.contiguous(),
                   "weight_g_idx": packed.tensors["g_idx"], "weight_shape": torch.tensor(weight.shape)},
                  packed.dequantized)


# ---------------------------------------------------------------- FP8

def pack_fp8_block(weight: torch.Tensor, block: int) -> Packed:
    """Hugging Face fine-grained FP8: per-block multipliers, ``weight_scale_inv``."""
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features // block, block, in_features // block, block)
    scale = blocks.abs().amax(dim=(1, 3), keepdim=True) / 448  # [out / b, 1, in / b, 1]
    stored = (blocks / scale).to(FP8)
    dequantized = (stored.float() * scale).reshape(out_features, in_features)
    return Packed({"weight": stored.reshape(out_features, in_features),
                   "weight_scale_inv": scale.reshape(out_features // block, in_features // block)}, dequantized)


def pack_fp8_tensor(weight: torch.Tensor) -> Packed:
    """vLLM/AutoFP8 per-tensor FP8 with a static ``input_scale``."""
    scale = weight.abs().amax() / 448
    stored = (weight / scale).to(FP8)
    return Packed({"weight": stored, "weight_scale": scale.reshape(()), "input_scale": torch.tensor(0.05)},
                  stored.float() * scale)


def quantize_online_fp8(weight: torch.Tensor) -> Packed:
    """Online --quantization fp8: the checkpoint is unquantized; fw rounds each output row to FP8."""
    scale = weight.abs().amax(dim=1, keepdim=True) / 448
    return Packed({"weight": weight}, (weight / scale).to(FP8).float() * scale)


GROUP = 32
INT4_GROUP = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)

#: compressed-tensors with ``actorder: group``, written by hand: the package (0.20) no longer
#: writes it, but checkpoints made with it are served.
CT_ACT_ORDER_CONFIG = {
    "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "weights": {
        "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": GROUP,
        "actorder": "group", "dynamic": False}}},
}


def fp8_ct(strategy: str, **extra) -> dict:
    return dict(num_bits=8, type="float", symmetric=True, strategy=strategy, **extra)


INT8_CHANNEL = dict(num_bits=8, type="int", symmetric=True, strategy="channel")
INT8_TOKEN = dict(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)


def library_cases() -> list[Case]:
    """compressed-tensors checkpoints written by the package itself (needs it installed)."""
    def case(id_: str, fmt: str, weights: dict, acts: dict | None = None) -> Case:
        return Case("compressed-tensors", id_, ct_config(fmt, weights, acts), lambda w: pack_ct(w, fmt, weights, acts))

    return [
        case("w4a16-group", "pack-quantized", INT4_GROUP),
        case("w4a16-asym", "pack-quantized", {**INT4_GROUP, "symmetric": False}),
        case("w8a16-channel", "pack-quantized", INT8_CHANNEL),
        case("w8a8-int8-dynamic", "int-quantized", INT8_CHANNEL, INT8_TOKEN),
        case("fp8-tensor-static", "float-quantized", fp8_ct("tensor"), fp8_ct("tensor", dynamic=False)),
        case("fp8-channel-dynamic", "float-quantized", fp8_ct("channel"), fp8_ct("token", dynamic=True)),
        case("fp8-block", "float-quantized", fp8_ct("block", block_structure=[GROUP, GROUP]),
             fp8_ct("group", group_size=GROUP, dynamic=True)),
    ]


def all_cases() -> dict[str, list[Case]]:
    """method -> its test cases; compressed-tensors' library-written ones where the package is installed."""
    has_library = importlib.util.find_spec("compressed_tensors") is not None
    return {
        "awq": [
            Case("awq", f"g{GROUP}", {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True,
                                      "version": "gemm"}, lambda w: pack_awq(w, GROUP)),
            Case("awq", "channel", {"quant_method": "awq", "w_bit": 4, "q_group_size": -1, "zero_point": True},
                 lambda w: pack_awq(w, -1)),
        ],
        "gptq": [
            Case("gptq", "4bit-sym", {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "sym": True,
                                      "desc_act": False}, lambda w: pack_gptq(w, 4, GROUP, True, False, False)),
            Case("gptq", "4bit-asym-act-order", {"quant_method": "gptq", "bits": 4, "group_size": GROUP,
                                                 "sym": False, "desc_act": True},
                 lambda w: pack_gptq(w, 4, GROUP, False, True, False)),
            Case("gptq", "8bit-asym-v2", {"quant_method": "gptq", "bits": 8, "group_size": -1, "sym": False,
                                          "checkpoint_format": "gptq_v2"},
                 lambda w: pack_gptq(w, 8, -1, False, False, True)),
        ],
        "compressed-tensors": [
            Case("compressed-tensors", "w4a16-act-order", CT_ACT_ORDER_CONFIG, lambda w: pack_ct_actorder(w, 4, GROUP)),
            *(library_cases() if has_library else []),
        ],
        "fp8": [
            Case("fp8", "block", {"quant_method": "fp8", "activation_scheme": "dynamic",
                                  "weight_block_size": [GROUP, GROUP]}, lambda w: pack_fp8_block(w, GROUP)),
            Case("fp8", "tensor-static", {"quant_method": "fp8", "activation_scheme": "static"}, pack_fp8_tensor),
            Case("fp8", "online", None, quantize_online_fp8),
        ],
    }


@pytest.fixture(scope="session")
def quant_cases() -> dict[str, list[Case]]:
    return all_cases()


# ---------------------------------------------------------------- quantized tiny checkpoints

LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_quantized(source: Path, target: Path, case: Case,
                    leave: Callable[[str], bool] = lambda module: False) -> dict[str, torch.Tensor]:
    """Copy the tiny checkpoint at ``source`` to ``target`` with its linear layers packed by
    ``case`` (except the modules ``leave`` names); returns the state dict transformers should
    run: the dequantized weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    state = load_file(str(target / "model.safetensors"))
    stored, dequantized = {}, {}
    for name, tensor in state.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in LINEAR_SUFFIXES and not leave(module):
            packed = case.pack(tensor.to(torch.float32))
            stored.update({f"{module}.{suffix}": t.contiguous() for suffix, t in packed.tensors.items()})
            dequantized[name] = packed.dequantized
        else:
            stored[name] = tensor
            dequantized[name] = tensor
    (target / "model.safetensors").unlink()
    save_file(stored, str(target / "model.safetensors"))
    if case.quant_config is not None:
        config = json.loads((target / "config.json").read_text())
        config["quantization_config"] = case.quant_config
        (target / "config.json").write_text(json.dumps(config))
    return dequantized


@pytest.fixture(scope="session")
def write_quantized_checkpoint():
    return write_quantized


@pytest.fixture(scope="session")
def models_helpers():
    """tests/core/models/conftest.py as a module (for PagedRunner; conftest files are not importable by name)."""
    path = Path(__file__).resolve().parents[2] / "core" / "models" / "conftest.py"
    spec = importlib.util.spec_from_file_location("fw_tests_models_conftest", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
