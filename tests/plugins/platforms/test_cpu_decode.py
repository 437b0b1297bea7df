"""The CPU platform's fused decoder (plugins/platforms/cpu_decode.py) against the model's forward.

Tiny GGUF models run twice, with the fused path and with it switched off: both call the same
kernels with the same arguments, so tokens and logprobs must be equal exactly, for a batch of
decodes with different context lengths, greedy and seeded sampling, in float32 and bfloat16.
The mix of types (a Q6_K v projection, a Q4_0 down projection) gives the fused q/k/v layer
several native matmuls; the untied Qwen2 model has q/k/v biases and its own LM head.
"""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as Q

from fw import LLM, SamplingParams
from fw.kernels import cpu_decode
from fw.plugins.platforms import cpu_decode as fused

pytestmark = pytest.mark.skipif(cpu_decode.load() is None, reason="needs a C compiler")

MIX = {"blk.0.attn_v.weight": Q.Q6_K, "blk.1.ffn_down.weight": Q.Q4_0}
PROMPTS = ["the quick brown fox", "hello world, how are you today my friend", "models", "a tiny tokenizer reads"]


@pytest.fixture(scope="module", params=[("llama", True), ("qwen2", False)], ids=["llama-tied", "qwen2-bias"])
def gguf_file(request, ckpt, tiny_gguf_tokenizer, tmp_path_factory):
    arch, tie = request.param
    model = ckpt.make_model(arch, tie=tie)
    path = tmp_path_factory.mktemp("fused") / f"{arch}.gguf"
    return ckpt.write_gguf(path, model, Q.Q8_0, overrides=MIX, tokenizer=tiny_gguf_tokenizer)


class Counter:
    """Wraps the runner's fused decoder and counts the steps it ran."""

    def __init__(self, decoder) -> None:
        self.decoder, self.ran, self.declined = decoder, 0, 0

    def __call__(self, *args):
        hidden = self.decoder(*args)
        if hidden is None:
            self.declined += 1
        else:
            self.ran += 1
        return hidden


def generate(path, fused_on: bool, params: SamplingParams, prompts=PROMPTS, **options):
    llm = LLM(str(path), kv_cache_memory_bytes=2**24, max_model_len=128, **options)
    runner = llm.engine.runner
    counter = None
    if fused_on:
        assert isinstance(runner.fused_decoder, fused.CpuFusedDecoder)
        counter = runner.fused_decoder = Counter(runner.fused_decoder)
    else:
        runner.fused_decoder = None
    return llm.generate(prompts, params, use_tqdm=False), counter


def assert_identical(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        a, b = a.outputs[0], b.outputs[0]
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs  # every position's top tokens and their logprobs, exactly


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_decode_is_the_forward_bit_for_bit(gguf_file, dtype):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    ours, counter = generate(gguf_file, True, params, dtype=dtype)
    theirs, _ = generate(gguf_file, False, params, dtype=dtype)
    assert_identical(ours, theirs)
    assert counter.ran >= params.max_tokens - 1  # every step after the prefill ran fused


def test_seeded_sampling_draws_the_same_tokens(gguf_file):
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_tokens=10, ignore_eos=True, logprobs=2)
    ours, counter = generate(gguf_file, True, params, dtype="float32")
    theirs, _ = generate(gguf_file, False, params, dtype="float32")
    assert_identical(ours, theirs)
    assert counter.ran > 0


def test_steps_it_does_not_take_run_the_forward(gguf_file):
    """More decodes than MAX_TOKENS, and an fp8 cache: declined, and the outputs are the forward's."""
    many = [f"prompt number {i}" for i in range(fused.MAX_TOKENS + 2)]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    ours, counter = generate(gguf_file, True, params, prompts=many, dtype="float32")
    theirs, _ = generate(gguf_file, False, params, prompts=many, dtype="float32")
    assert_identical(ours, theirs)
    assert counter.ran == 0 and counter.declined > 0

    ours, counter = generate(gguf_file, True, params, dtype="float32", kv_cache_dtype="fp8")
    theirs, _ = generate(gguf_file, False, params, dtype="float32", kv_cache_dtype="fp8")
    assert_identical(ours, theirs)
    assert counter.ran == 0 and counter.declined > 0


def test_models_without_native_matmuls_get_no_fused_decoder(gguf_file, tiny_checkpoint, monkeypatch):
    llm = LLM(str(tiny_checkpoint()), dtype="float32", kv_cache_memory_bytes=2**24, max_model_len=128)
    assert llm.engine.runner.fused_decoder is None  # unquantized safetensors: F.linear, no native matmul
    monkeypatch.setenv("FW_GGUF_PACKED", "0")  # the GGUF dequantized at load: the same
    llm = LLM(str(gguf_file), dtype="float32", kv_cache_memory_bytes=2**24, max_model_len=128)
    assert llm.engine.runner.fused_decoder is None
    monkeypatch.setenv("FW_GGUF_PACKED", "1")
    monkeypatch.setenv("FW_CPU_FUSED_DECODE", "0")  # switched off
    llm = LLM(str(gguf_file), dtype="float32", kv_cache_memory_bytes=2**24, max_model_len=128)
    assert llm.engine.runner.fused_decoder is None
