"""The LinearMethod seam: a quantization plugin's method computes every linear layer it claims.

A recording method (plain ``F.linear``, counting its calls), provided by a QuantizationMethod
that a plugin registers, runs a real tiny model through the engine: it must be asked for
every linear layer by prefix, create and process each layer's weights exactly once, and
compute each of them, while the model generates what it does without it.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch

from fw import LLM, SamplingParams
from fw.core.errors import FwError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import QuantizationMethod
from fw.core.layers.linear import LinearBase
from fw.core.layers.ops import UnquantizedLinearMethod
from fw.core.plugins import load_plugins


class RecordingLinearMethod(UnquantizedLinearMethod):
    def __init__(self, owner: RecordingQuantization, prefix: str) -> None:
        self.owner, self.prefix = owner, prefix

    def create_weights(self, layer, *args, **kwargs) -> None:
        self.owner.created.append(self.prefix)
        super().create_weights(layer, *args, **kwargs)

    def process_weights_after_loading(self, layer) -> None:
        self.owner.processed.append(self.prefix)

    def apply(self, layer, x, bias=None):
        self.owner.applied.add(self.prefix)
        return super().apply(layer, x, bias)


class RecordingQuantization(QuantizationMethod):
    name = "recording"

    def __init__(self, quant_config: dict) -> None:
        self.quant_config = quant_config
        self.asked: list[str] = []
        self.created: list[str] = []
        self.processed: list[str] = []
        self.applied: set[str] = set()

    @classmethod
    def from_config(cls, quant_config):
        return cls(quant_config)

    @classmethod
    def supported_act_dtypes(cls):
        return [torch.float32]

    def get_linear_method(self, prefix):
        self.asked.append(prefix)
        return None if prefix == "lm_head" else RecordingLinearMethod(self, prefix)


class RecordingPlugin:
    @hookimpl
    def fw_register_quantization_methods(self, registry):
        registry.register(RecordingQuantization.name, RecordingQuantization)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(env={"FW_PLUGINS": "recording"}, extra=[("recording", RecordingPlugin())])


OPTIONS = dict(dtype="float32", kv_cache_memory_bytes=2**24)
PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPTS = ["the quick brown", "to be or not"]


def recording_of(llm: LLM) -> RecordingQuantization:
    """The quantization method the engine built (each layer's recording method points back to it)."""
    methods = [m.linear_method for m in llm.engine.loaded.model.modules() if isinstance(m, LinearBase)]
    (owner,) = {method.owner for method in methods if isinstance(method, RecordingLinearMethod)}
    return owner


def test_every_linear_layer_computes_through_the_plugins_method(tiny_checkpoint, plugins):
    path = str(tiny_checkpoint("llama"))  # tied: the LM head shares the embedding
    expected = [o.outputs[0].token_ids for o in LLM(path, **OPTIONS).generate(PROMPTS, PARAMS, use_tqdm=False)]
    llm = LLM(path, plugins=plugins, quantization="recording", **OPTIONS)
    recording = recording_of(llm)
    layers = {name: m for name, m in llm.engine.loaded.model.named_modules() if isinstance(m, LinearBase)}
    quantized = sorted(name for name in layers if name != "lm_head")
    assert len(quantized) == 4 * llm.engine.loaded.hf_config.num_hidden_layers
    assert sorted(recording.asked) == sorted([*quantized, "lm_head"])
    assert sorted(recording.created) == quantized
    assert Counter(recording.processed) == Counter(quantized)  # once per layer
    for name in quantized:
        assert layers[name].linear_method.prefix == name
    # The method left alone (None) falls back to the platform's unquantized one.
    assert type(layers["lm_head"].linear_method) is UnquantizedLinearMethod

    outputs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert recording.applied == set(quantized)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert Counter(recording.processed) == Counter(quantized)  # not again while generating


def test_the_checkpoints_quantization_config_builds_the_method(tiny_checkpoint, plugins, tmp_path):
    path = tmp_path / "quantized"
    shutil.copytree(tiny_checkpoint("llama"), path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "recording", "bits": 4}
    (path / "config.json").write_text(json.dumps(config))
    recording = recording_of(LLM(str(path), plugins=plugins, **OPTIONS))
    assert recording.quant_config == {"quant_method": "recording", "bits": 4}


def test_a_dtype_the_method_does_not_compute_in_is_refused(tiny_checkpoint, plugins):
    with pytest.raises(FwError, match="quantization recording computes in float32, not bfloat16; give --dtype"):
        LLM(str(tiny_checkpoint("llama")), plugins=plugins, quantization="recording", dtype="bfloat16",
            kv_cache_memory_bytes=2**24)
