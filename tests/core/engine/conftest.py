"""Engine-test helpers: fw and Hugging Face transformers side by side on tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

PROMPTS = [
    "the quick brown",
    "to be or not to be that",
    "all",
    "a journey of a thousand miles begins with a single step and",
    "def main(): return",
    "ünïcödé wörds",
]


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)


class HFReference:
    """Greedy generation and logprobs from transformers in float32: the correctness reference."""

    def __init__(self, path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))

    @torch.inference_mode()
    def greedy(self, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
        """Token ids and the log-softmax at each generated position (EOS is not special here,
        as with fw's ignore_eos, so this is a plain argmax loop rather than ``generate``)."""
        return hf_greedy(self.model, prompt_ids, max_tokens)

    @torch.inference_mode()
    def prompt_logprobs(self, prompt_ids: list[int]) -> torch.Tensor:
        logits = self.model(torch.tensor([prompt_ids])).logits[0]
        return logits.float().log_softmax(-1)


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    ids = torch.tensor([prompt_ids])
    out = model(ids, use_cache=True)
    tokens, logprobs = [], []
    for _ in range(max_tokens):
        logprob = out.logits[0, -1].float().log_softmax(-1)
        token = int(logprob.argmax())
        tokens.append(token)
        logprobs.append(logprob)
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, logprobs


@pytest.fixture(scope="session")
def greedy_reference():
    return hf_greedy


@pytest.fixture(scope="session")
def hf_reference():
    cache = {}

    def get(path):
        if path not in cache:
            cache[path] = HFReference(path)
        return cache[path]

    return get


@pytest.fixture(scope="session")
def make_llm():
    """``make_llm(path, **options)``: an fw.LLM in float32 with a small CPU KV cache."""
    from fw import LLM

    def make(path, **options):
        options = {"dtype": "float32", "kv_cache_memory_bytes": 2**24, **options}
        return LLM(str(path), **options)

    return make
