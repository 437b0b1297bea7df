"""Without fw's C kernels (no compiler on the machine) the torch paths give the same outputs."""

from __future__ import annotations

from fw import LLM, SamplingParams
from fw.kernels import cpu_attention, cpu_ops

PROMPTS = ["the quick brown", "to be or not to be that", "all"]


def run(path) -> tuple[list[list[int]], list[str]]:
    llm = LLM(str(path), dtype="float32", kv_cache_memory_bytes=2**24)
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, max_tokens=10, ignore_eos=True, seed=7)
    outputs = llm.generate(PROMPTS, greedy, use_tqdm=False) + llm.generate(PROMPTS, seeded, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs], [o.outputs[0].text for o in outputs]


def test_outputs_are_the_same_without_the_c_kernels(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("llama")
    with_kernels = run(path)
    monkeypatch.setenv("FW_CPU_OPS", "0")
    monkeypatch.setenv("FW_CPU_ATTENTION_KERNEL", "0")
    cpu_ops.load.cache_clear()
    cpu_attention.load.cache_clear()
    try:
        assert cpu_ops.load() is None and cpu_attention.load() is None
        assert run(path) == with_kernels
    finally:
        monkeypatch.undo()
        cpu_ops.load.cache_clear()
        cpu_attention.load.cache_clear()
