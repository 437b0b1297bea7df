"""End to end: a tiny random Llama packed by each test case, loaded by the engine (format
detection, loaders, fused layers, kernels), against transformers in float32 on the weights
the packer dequantizes to.

Tolerance: logits within 1e-3 of the largest logit (the same effective weights; only the
summation order differs), and greedy continuations equal for at least 3 of 4 prompts (near-ties
may flip). Every case of conftest.all_cases() runs (about a second per method).
"""

from __future__ import annotations

import pytest
import torch

from fw import LLM

PROMPTS = [[5, 17, 33, 2, 90], [100, 7, 7, 250, 61, 3, 44], [12, 200, 150], [300, 301, 11, 4, 80, 9]]
NUM_STEPS = 6
METHODS = ("awq", "gptq", "compressed-tensors", "fp8")


def hf_logits_and_greedy(config, state_dict, prompts):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.load_state_dict(state_dict, strict=False)  # the tied head shares the embedding
    logits, outputs = [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            logits.append(model(ids).logits[0])
            generated = []
            for _ in range(NUM_STEPS):
                next_id = int(model(ids).logits[0, -1].argmax())
                generated.append(next_id)
                ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
            outputs.append(generated)
    return logits, outputs


def check_case(case, source, target, write_quantized, models_helpers) -> None:
    from transformers import AutoConfig

    from fw.core.engine.loading import text_config

    dequantized = write_quantized(source, target, case)
    llm = LLM(str(target), dtype="float32", kv_cache_memory_bytes=2**24,
              quantization=None if case.quant_config else case.method)
    assert llm.engine.loaded.quantization == case.method
    model, config = llm.engine.loaded.model, text_config(llm.engine.loaded.hf_config)
    ours = models_helpers.PagedRunner(model, config).step(list(enumerate(PROMPTS)))
    ours_greedy = models_helpers.PagedRunner(model, config).greedy(PROMPTS, NUM_STEPS)

    theirs, theirs_greedy = hf_logits_and_greedy(AutoConfig.from_pretrained(source), dequantized, PROMPTS)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-3 * reference.abs().max().item(), rtol=0,
                                   msg=lambda m: f"{case.method} {case.id}: {m}")
    same = sum(a == b for a, b in zip(ours_greedy, theirs_greedy))
    assert same >= 3, f"{case.method} {case.id}: {ours_greedy} against {theirs_greedy}"


@pytest.fixture(params=sorted(METHODS))
def method(request):
    return request.param


def test_every_case_matches_transformers(method, quant_cases, tiny_checkpoint, tmp_path, write_quantized_checkpoint,
                                         models_helpers):
    for index, case in enumerate(quant_cases[method]):
        check_case(case, tiny_checkpoint("llama"), tmp_path / f"quantized-{index}", write_quantized_checkpoint,
                   models_helpers)
