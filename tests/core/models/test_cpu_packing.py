"""oneDNN pre-packed bfloat16 weights on the CPU: same outputs, less memory for the unpacked copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fw import LLM, SamplingParams
from fw.core.layers.linear import LinearBase
from fw.plugins.platforms.cpu import ONEDNN_BF16_FLAGS, CpuPlatform, cpu_flags

pytestmark = [
    pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"),
    pytest.mark.skipif(not any(flags <= cpu_flags() for flags in ONEDNN_BF16_FLAGS),
                       reason="this CPU lacks the instructions oneDNN's bf16 packing needs"),
]


def greedy(llm: LLM) -> tuple[list[list[int]], list[float]]:
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    outputs = llm.generate(["the quick brown", "to be or not", "all"], params, use_tqdm=False)
    ids = [o.outputs[0].token_ids for o in outputs]
    logprobs = [lp[t].logprob for o in outputs for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
    return ids, logprobs


@pytest.mark.parametrize("tied", [False, True])
def test_packed_bf16_model_generates_exactly_what_the_unpacked_one_does(tiny_checkpoint, monkeypatch, tied):
    path = tiny_checkpoint("llama", tie_word_embeddings=tied)
    options = dict(dtype="bfloat16", kv_cache_memory_bytes=2**24)
    monkeypatch.setenv("FW_CPU_PACKED_WEIGHTS", "0")
    plain = LLM(str(path), **options)
    assert not any(hasattr(m, "packed_weight") for m in plain.engine.loaded.model.modules())
    expected = greedy(plain)
    monkeypatch.delenv("FW_CPU_PACKED_WEIGHTS")
    packed = LLM(str(path), **options)
    model = packed.engine.loaded.model
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert linears and all(hasattr(m, "packed_weight") for m in linears)
    assert greedy(packed) == expected
    # The unpacked copies are freed, except a weight the embedding still needs.
    embedding = model.model.embed_tokens.weight
    assert embedding.numel() > 0
    assert all(m.weight.numel() == 0 for m in linears if m.weight is not embedding)
    assert (model.lm_head.weight is embedding) == tied
    assert packed.engine.loaded.num_params == plain.engine.loaded.num_params


def test_float32_models_are_left_alone():
    method = CpuPlatform().unquantized_linear_method(torch.float32)
    layer = nn.Module()
    method.create_weights(layer, 8, [4], torch.float32, weight_loader=None)
    method.process_weights_after_loading(layer)
    assert not hasattr(layer, "packed_weight")
