"""Greedy parity with Hugging Face transformers (float32) for every native architecture."""

from __future__ import annotations

import pytest

from fw import SamplingParams


def assert_same_greedy(fw_ids, hf_ids, fw_logprobs, hf_logprobs):
    """Exact match, or where float noise makes a near-tie, each side's token in the other's top-5."""
    if fw_ids == hf_ids:
        return True
    i = next(k for k, (a, b) in enumerate(zip(fw_ids, hf_ids)) if a != b)
    assert hf_ids[i] in fw_logprobs[i], f"diverged at {i}: fw {fw_ids[i]}, hf {hf_ids[i]}"
    assert fw_ids[i] in hf_logprobs[i].topk(5).indices.tolist()
    return False


@pytest.mark.parametrize("arch,overrides", [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": False, "num_key_value_heads": 1}),
    ("qwen2", {}),
    ("qwen3", {}),
    ("mistral", {}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
])
def test_greedy_matches_transformers(tiny_checkpoint, hf_reference, make_llm, prompts, arch, overrides):
    path = tiny_checkpoint(arch, **overrides)
    hf = hf_reference(path)
    llm = make_llm(path)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=5)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    exact = 0
    for prompt, output in zip(prompts, outputs):
        prompt_ids = hf.tokenizer(prompt).input_ids
        assert output.prompt_token_ids == prompt_ids
        hf_ids, hf_logprobs = hf.greedy(prompt_ids, 16)
        completion = output.outputs[0]
        exact += assert_same_greedy(completion.token_ids, hf_ids, completion.logprobs, hf_logprobs)
        # The reported logprob of each chosen token is the model's (raw) log-softmax.
        for position, token in enumerate(completion.token_ids[:4]):
            assert completion.logprobs[position][token].logprob == pytest.approx(
                hf_logprobs[position][token].item(), abs=1e-3)
    assert exact >= len(prompts) - 1


def test_prompt_logprobs_match_transformers(tiny_checkpoint, hf_reference, make_llm, prompts):
    path = tiny_checkpoint("qwen3")
    hf = hf_reference(path)
    llm = make_llm(path, max_num_batched_tokens=8, max_num_seqs=4)  # chunked: prompt logprobs span several steps
    prompt = prompts[3]
    (output,) = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2),
                             use_tqdm=False)
    ids = output.prompt_token_ids
    reference = hf.prompt_logprobs(ids)
    assert output.prompt_logprobs[0] is None
    assert len(output.prompt_logprobs) == len(ids)
    for i in range(1, len(ids)):
        entry = output.prompt_logprobs[i]
        assert entry[ids[i]].logprob == pytest.approx(reference[i - 1][ids[i]].item(), abs=1e-3)
        top = reference[i - 1].topk(2).indices.tolist()
        assert set(top) <= set(entry)


@pytest.mark.slow
def test_embedded_default_model_matches_transformers_on_the_same_gguf(greedy_reference, monkeypatch):
    """The real SmolLM2-135M-Instruct GGUF: fw's greedy ids equal transformers' (float32), both
    on the weights dequantized at load (packed vs dequantized: tests/core/models/test_default_model.py)."""
    import functools
    from unittest import mock

    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from fw import LLM
    from fw.plugins.loaders.default_model import ensure_default_model

    path = ensure_default_model()
    monkeypatch.setenv("FW_GGUF_PACKED", "0")
    llm = LLM(dtype="float32", kv_cache_memory_bytes=2**28, max_model_len=2048)
    tokenizer = llm.get_tokenizer()
    # transformers rebuilds the same gguf tensor-name map for every submodule (most of its
    # load time); the map is a pure function of its arguments, so caching it changes only time.
    with mock.patch.object(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)):
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "1, 2, 3, 4,"]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5),
                           use_tqdm=False)
    exact = 0
    with torch.inference_mode():
        for prompt, output in zip(prompts, outputs):
            ids = tokenizer(prompt).input_ids
            hf_ids, hf_logprobs = greedy_reference(hf, ids, 12)
            completion = output.outputs[0]
            exact += assert_same_greedy(completion.token_ids, hf_ids, completion.logprobs, hf_logprobs)
    assert exact >= len(prompts) - 1
    assert "Paris" in outputs[0].outputs[0].text
