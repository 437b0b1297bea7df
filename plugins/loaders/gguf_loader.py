"""The ``gguf`` load format: llama.cpp's single-file checkpoints.

Handles a ``.gguf`` file, or a directory holding exactly one. The file's header is parsed
once per loader (see gguf_file.py; the engine asks one loader for the config, the
tokenizer and the weights). The config and tokenizer are what transformers makes of the
GGUF metadata (``AutoConfig`` / ``AutoTokenizer`` with ``gguf_file=``), built from the
parsed header where that gives the same result (see gguf_transformers.py), so the
architectures transformers reads from GGUF are the ones supported here (llama, mistral,
qwen2, qwen3...). Tensors are memory-mapped and renamed to Hugging Face parameter names.

Quantized weights stay packed: the config names the ``gguf`` quantization method
(``quantization_config = {"quant_method": "gguf"}``), which the engine then selects, and
block-quantized 2-D tensors are yielded as :class:`GGUFQuantizedTensor` (their stored
bytes and GGML type) for that method's CPU kernels (fw.plugins.quantization.gguf). With
``FW_GGUF_PACKED=0`` the config names no quantization and every tensor is dequantized at
load with numpy (gguf_dequant.py) to float32, as before the packed kernels existed (F16
stays float16, BF16 stays bfloat16): the reference the packed path is tested against.
llama.cpp permutes the rows of the Q and K projections of llama-architecture models (its
rotary embedding pairs adjacent elements, Hugging Face's pairs the two halves of a head);
that permutation is undone, on the packed rows as on the values (rows are whole blocks).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TypeVar

import numpy as np
import torch
from gguf import MODEL_ARCH_NAMES, GGMLQuantizationType, get_tensor_name_map
from tqdm import tqdm

from fw.core.errors import ModelLoadError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import WeightLoader
from fw.plugins.loaders.dummy_loader import meta_causal_lm
from fw.plugins.loaders.gguf_dequant import PLAIN_DTYPES, dequantize
from fw.plugins.loaders.gguf_file import GGUFFile, GGUFQuantizedTensor, GGUFTensorInfo, read_gguf_file
from fw.plugins.loaders.gguf_transformers import auto_tokenizer_class, config_from_dict, gguf_config_dict

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)
ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

Q = GGMLQuantizationType
# The types we dequantize, each covered by a test against transformers. The K-quants
# beyond Q4_K/Q6_K are here because llama.cpp's "Q4_K_M"-style mixes use them too.
SUPPORTED_TYPES = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
)
# llama.cpp's convert script permutes Q/K for its "llama" architecture, which it also
# writes for Mistral models; qwen2/qwen3 keep the Hugging Face row order.
PERMUTED_ARCHITECTURES = frozenset({"llama"})
# Tensors llama.cpp derives from the config (rope scaling factors); the Hugging Face
# model computes them itself.
DERIVED_TENSORS = frozenset({"rope_freqs.weight"})
#: The quantization method that computes on packed GGUF weights (plugins/quantization/gguf.py).
PACKED_QUANT_METHOD = "gguf"


def packed_by_default() -> bool:
    """Whether GGUF weights stay packed (``FW_GGUF_PACKED=0`` dequantizes them at load instead)."""
    return os.environ.get("FW_GGUF_PACKED", "1") != "0"


def runs_packed(hf_config: PretrainedConfig) -> bool:
    """Whether the config is one :meth:`GGUFLoader.load_hf_config` made to run packed."""
    quant_config = getattr(hf_config, "quantization_config", None)
    return isinstance(quant_config, dict) and quant_config.get("quant_method") == PACKED_QUANT_METHOD


def find_gguf_file(model_path: Path) -> Path | None:
    """The ``.gguf`` file ``model_path`` names, or the only one in that directory."""
    if model_path.is_file():
        return model_path if model_path.suffix == ".gguf" else None
    if model_path.is_dir():
        files = sorted(p for p in model_path.glob("*.gguf") if p.is_file())
        return files[0] if len(files) == 1 else None
    return None


def require_gguf_file(model_path: Path) -> Path:
    """Like :func:`find_gguf_file`, but raises ModelLoadError saying what is wrong."""
    if (file := find_gguf_file(model_path)) is not None:
        return file
    if model_path.is_dir():
        found = sorted(p.name for p in model_path.glob("*.gguf"))
        if found:
            raise ModelLoadError(
                f"{model_path} holds several .gguf files ({', '.join(found)}); give the path of the one to load"
            )
        raise ModelLoadError(f"no gguf weight files in {model_path} (looked for *.gguf)")
    if model_path.exists():
        raise ModelLoadError(f"{model_path} is not a .gguf file")
    raise ModelLoadError(f"{model_path} does not exist")


def open_gguf(file: Path) -> GGUFFile:
    """The parsed header; corrupt or truncated files become a ModelLoadError naming the file."""
    try:
        gguf = read_gguf_file(file)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ModelLoadError(f"cannot read {file}: {exc} (is it a complete GGUF file?)") from None
    if not isinstance(gguf.metadata.get("general.architecture"), str):
        raise ModelLoadError(f"{file} has no general.architecture metadata")
    return gguf


def gguf_to_hf_names(hf_config: PretrainedConfig, architecture: str) -> dict[str, str]:
    """Map GGUF tensor names (``blk.0.attn_q.weight``) to Hugging Face ones for this config.

    gguf's TensorNameMap knows, per architecture, every Hugging Face spelling of each
    tensor across model families, so it cannot be inverted on its own. Asking it about
    the exact parameter names of the transformers class for this config (a meta-device
    model: no memory, no initialisation) gives a one-to-one map, as vLLM does.
    """
    arch = next((key for key, name in MODEL_ARCH_NAMES.items() if name == architecture), None)
    if arch is None:
        raise ModelLoadError(f"GGUF architecture {architecture!r} is unknown to the installed gguf package")
    name_map = get_tensor_name_map(arch, hf_config.num_hidden_layers)
    mapping = {}
    for hf_name in meta_causal_lm(hf_config).state_dict():
        module, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(module)
        if gguf_name is not None:
            mapping[f"{gguf_name}.{suffix}"] = hf_name
    return mapping


def undo_rotary_permutation(weight: ArrayT, num_heads: int) -> ArrayT:
    """Inverse of llama.cpp's ``permute`` for Q/K projection weights and biases (torch or numpy).

    llama.cpp stores each head's rows in (pair, half) order where Hugging Face has
    (half, pair); swapping the two axes back restores the Hugging Face order.
    """
    # weight: [num_heads * head_dim, ...]: values, or the stored bytes of whole rows
    head_dim = weight.shape[0] // num_heads
    rest = weight.shape[1:]
    return weight.reshape(num_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def packed_tensor(gguf: GGUFFile, tensor: GGUFTensorInfo, num_heads: int | None = None) -> GGUFQuantizedTensor:
    """The tensor's stored blocks as ``[rows, row_bytes]`` (a view of the file unless the rows are
    permuted back, which copies them); ``num_heads`` undoes the rotary permutation."""
    rows = gguf.tensor_bytes(tensor).reshape(tensor.shape[0], -1)
    if num_heads is not None:
        rows = np.ascontiguousarray(undo_rotary_permutation(rows, num_heads))
    return GGUFQuantizedTensor.wrap(torch.from_numpy(rows), tensor.tensor_type, tensor.shape)


def dequantize_tensor(gguf: GGUFFile, tensor: GGUFTensorInfo, num_heads: int | None = None) -> torch.Tensor:
    """The tensor's values in a new tensor, in Hugging Face layout; ``num_heads`` undoes the rotary permutation."""
    data = gguf.tensor_bytes(tensor)
    if num_heads is None:
        return dequantize(data, tensor.tensor_type, tensor.shape)
    if len(tensor.shape) > 1 or tensor.tensor_type in PLAIN_DTYPES:
        # Each row is stored as whole blocks, so permuting the rows of the stored bytes is
        # the same as permuting the values after, and is a cheap single-threaded numpy copy.
        rows = undo_rotary_permutation(data.reshape(tensor.shape[0], -1), num_heads)
        return dequantize(rows.reshape(-1), tensor.tensor_type, tensor.shape)
    return undo_rotary_permutation(dequantize(data, tensor.tensor_type, tensor.shape), num_heads)


class GGUFLoader(WeightLoader):
    """Reads llama.cpp GGUF files: metadata as transformers reads it, quantized tensors packed."""

    name = "gguf"
    # Below safetensors and pt: a Hugging Face directory that also carries a .gguf is
    # read from its native weights.
    auto_priority = 30

    def __init__(self, packed: bool | None = None) -> None:
        # The last file parsed, keyed by (path, mtime, size): the engine asks one loader for
        # the config, the tokenizer and the weights, and the header is read once for all three.
        self._parsed: tuple[tuple[Path, int, int], GGUFFile] | None = None
        #: Whether quantized tensors stay packed (None: unless FW_GGUF_PACKED=0); False is the
        #: dequantize-at-load reference path.
        self.packed = packed

    def can_load(self, model_path: Path) -> bool:
        return find_gguf_file(model_path) is not None

    def parse(self, file: Path) -> GGUFFile:
        """``file``'s parsed header, read again only when the file changed."""
        try:
            stat = file.stat()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {file}: {exc.strerror}") from None
        key = (file.resolve(), stat.st_mtime_ns, stat.st_size)
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, open_gguf(file))
        return self._parsed[1]

    def load_hf_config(self, model_path: Path, *, trust_remote_code: bool = False) -> PretrainedConfig:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        file = require_gguf_file(model_path)
        gguf = self.parse(file)
        config_dict = gguf_config_dict(gguf.metadata, gguf.tensor_names)
        try:
            if config_dict is not None:
                config = config_from_dict(config_dict, file.parent)
            else:
                config = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)
        except Exception as exc:  # transformers rejects the metadata; any failure means a bad file
            raise ModelLoadError(f"cannot read the config from {file}: {exc}".splitlines()[0]) from None
        file_type = gguf_file_type(gguf.metadata)
        if file_type is not None:  # how the weights were stored, for fw serve's summary
            config.gguf_file_type = file_type
        if self.packed if self.packed is not None else packed_by_default():
            # The engine selects the method that computes on packed weights (plugins/quantization/gguf.py).
            config.quantization_config = {"quant_method": PACKED_QUANT_METHOD}
        # GGUF metadata names no `architectures`; fw picks the model class from it.
        if not getattr(config, "architectures", None):
            class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            config.architectures = [class_name] if class_name else []
        return config

    def load_tokenizer(self, model_path: Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        file = require_gguf_file(model_path)
        gguf = self.parse(file)
        config_dict = gguf_config_dict(gguf.metadata, gguf.tensor_names)
        try:
            # AutoTokenizer would rebuild the config with gguf's slow reader only to choose the class.
            chosen = config_dict and auto_tokenizer_class(config_from_dict(config_dict, file.parent), file.parent)
            # transformers reads the vocabulary here: the one full read of the file's metadata.
            return (chosen or AutoTokenizer).from_pretrained(str(file.parent), gguf_file=file.name)
        except Exception as exc:  # as above: transformers' GGUF parsing failed
            raise ModelLoadError(f"cannot read the tokenizer from {file}: {exc}".splitlines()[0]) from None

    def iter_weights(self, model_path: Path, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        file = require_gguf_file(model_path)
        gguf = self.parse(file)
        names = gguf_to_hf_names(hf_config, gguf.architecture)
        tensors = [t for t in gguf.tensors if t.name in names]
        unknown = [t.name for t in gguf.tensors if t.name not in names and t.name not in DERIVED_TENSORS]
        if unknown:
            logger.warning(
                "%s: ignoring %d tensors the %s model has no parameter for: %s",
                file, len(unknown), hf_config.model_type, ", ".join(unknown[:8]),
            )  # fmt: skip
        # Checked up front so that an unsupported file fails before any work is done.
        for tensor in tensors:
            if tensor.tensor_type not in SUPPORTED_TYPES:
                supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
                raise ModelLoadError(
                    f"{file}: tensor {tensor.name} uses the quantization type {tensor.tensor_type.name}, "
                    f"which fw cannot dequantize (supported: {supported})"
                )
        permuted = gguf.architecture in PERMUTED_ARCHITECTURES
        packed = runs_packed(hf_config)
        heads = {"attn_q": hf_config.num_attention_heads, "attn_k": hf_config.num_key_value_heads}
        for tensor in tqdm(tensors, desc="Loading GGUF tensors", unit="tensor", file=sys.stderr):
            kind = tensor.name.split(".")[-2]  # blk.N.<kind>.weight
            num_heads = heads.get(kind) if permuted else None
            if packed and tensor.tensor_type not in PLAIN_DTYPES and len(tensor.shape) == 2:
                yield names[tensor.name], packed_tensor(gguf, tensor, num_heads)
            else:
                yield names[tensor.name], dequantize_tensor(gguf, tensor, num_heads)


@hookimpl
def fw_register_weight_loaders(registry) -> None:
    registry.register(GGUFLoader.name, GGUFLoader)


def gguf_file_type(metadata: dict) -> str | None:
    """llama.cpp's name for how the file's weights are stored (``Q4_1``, ``Q4_K_M``, ``F16``...)."""
    import gguf

    value = metadata.get("general.file_type")
    try:
        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_") if value is not None else None
    except ValueError:
        return None
