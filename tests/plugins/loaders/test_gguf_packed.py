"""GGUF weights kept packed: what the loader yields, and the engine on them end to end.

The loader names the ``gguf`` quantization method in the config and yields block-quantized
tensors as their stored bytes (un-permuted rows); ``FW_GGUF_PACKED=0`` (or
``GGUFLoader(packed=False)``) gives the dequantize-at-load path, the reference here.
End to end, the same tiny file runs packed and dequantized: the packed kernels quantize
activations to int8 blocks as llama.cpp does, so logprobs differ slightly (``LOGPROB_ATOL``)
and greedy tokens agree except at near-ties.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from fw import LLM, SamplingParams
from fw.entrypoints.serve import _stored_format
from fw.plugins.loaders.gguf_dequant import dequantize
from fw.plugins.loaders.gguf_file import GGUFQuantizedTensor
from fw.plugins.loaders.gguf_loader import GGUFLoader

#: Packed vs dequantized, the chosen tokens' logprobs on a tiny 2-layer model (int8 activations).
LOGPROB_ATOL = 0.15
#: A Q4_K_M-like mix: Q4_0 and Q8_0 (quantized from the model by gguf-py), a Q6_K v projection.
MIX = {"blk.0.attn_v.weight": Q.Q6_K, "blk.1.ffn_gate.weight": Q.Q4_0, "blk.1.ffn_down.weight": Q.Q4_0}


@pytest.fixture(scope="module")
def tiny_file(ckpt, tiny_gguf_tokenizer, tmp_path_factory):
    model = ckpt.make_model("llama", tie=True)
    path = tmp_path_factory.mktemp("packed") / "tiny.gguf"
    return ckpt.write_gguf(path, model, Q.Q8_0, overrides=MIX, tokenizer=tiny_gguf_tokenizer)


def test_config_names_the_gguf_method_unless_turned_off(tiny_file, monkeypatch):
    assert GGUFLoader().load_hf_config(tiny_file).quantization_config == {"quant_method": "gguf"}
    assert getattr(GGUFLoader(packed=False).load_hf_config(tiny_file), "quantization_config", None) is None
    monkeypatch.setenv("FW_GGUF_PACKED", "0")
    assert getattr(GGUFLoader().load_hf_config(tiny_file), "quantization_config", None) is None


def test_packed_tensors_are_the_stored_rows_unpermuted(tiny_file):
    loader = GGUFLoader()
    packed = dict(loader.iter_weights(tiny_file, loader.load_hf_config(tiny_file)))
    reference_loader = GGUFLoader(packed=False)
    dequantized = dict(reference_loader.iter_weights(tiny_file, reference_loader.load_hf_config(tiny_file)))

    assert sorted(packed) == sorted(dequantized)
    kinds = {}
    for name, tensor in packed.items():
        if isinstance(tensor, GGUFQuantizedTensor):
            kinds[name] = tensor.ggml_type
            values = dequantize(tensor.as_subclass(torch.Tensor).numpy().reshape(-1), tensor.ggml_type,
                                tensor.logical_shape)
            assert torch.equal(values, dequantized[name]), name  # q/k rows un-permuted as whole blocks
        else:
            assert tensor.dim() == 1 and torch.equal(tensor, dequantized[name]), name  # norms stay F32
    assert kinds["model.layers.0.self_attn.v_proj.weight"] == Q.Q6_K
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == kinds["model.embed_tokens.weight"] == Q.Q8_0


def test_the_startup_summary_says_packed():
    from types import SimpleNamespace

    packed = SimpleNamespace(gguf_file_type="Q4_1", quantization_config={"quant_method": "gguf"})
    assert _stored_format(None, packed) == "GGUF Q4_1 (packed)"
    assert _stored_format(None, SimpleNamespace(gguf_file_type="Q4_1")) == "GGUF Q4_1 (dequantized at load)"


def run(path, monkeypatch, packed: bool):
    monkeypatch.setenv("FW_GGUF_PACKED", "1" if packed else "0")
    llm = LLM(str(path), dtype="float32", kv_cache_memory_bytes=2**24, max_model_len=128)
    prompts = ["the quick brown fox", "hello world, how are", "models read their config", "a tiny tokenizer"]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=3)
    return llm, llm.generate(prompts, params, use_tqdm=False)


def test_the_engine_runs_packed_by_default_close_to_the_dequantized_path(tiny_file, monkeypatch):
    llm, packed = run(tiny_file, monkeypatch, packed=True)
    assert llm.engine.info.quantization == "gguf"
    reference_llm, dequantized = run(tiny_file, monkeypatch, packed=False)
    assert reference_llm.engine.info.quantization is None
    exact = 0
    for ours, theirs in zip(packed, dequantized):
        ours, theirs = ours.outputs[0], theirs.outputs[0]
        exact += ours.token_ids == theirs.token_ids
        same = next((i for i, (a, b) in enumerate(zip(ours.token_ids, theirs.token_ids)) if a != b),
                    len(ours.token_ids))
        for position in range(same):  # the same prefix: the same model state on both sides
            token = ours.token_ids[position]
            assert ours.logprobs[position][token].logprob == pytest.approx(
                theirs.logprobs[position][token].logprob, abs=LOGPROB_ATOL)
        if same < len(ours.token_ids):  # a near-tie: each side's token is in the other's top 3
            assert theirs.token_ids[same] in ours.logprobs[same] and ours.token_ids[same] in theirs.logprobs[same]
    assert exact >= len(packed) - 1
