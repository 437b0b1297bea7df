"""A tiny paged-cache runner for model tests, and the HF-twin builder.

``PagedRunner`` does what the engine's model runner does for one step, without a
scheduler: it appends chunks of tokens to sequences, hands out cache blocks from a
shuffled free list (so a sequence's blocks are scattered, as they are in the engine),
builds the flat batch and its AttentionMetadata, and runs the model in a forward
context with the CPU platform's attention backend. ``build_twins`` builds our models
with the CPU platform's ops, so the parity tests cover the kernels the engine runs here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from fw.core.forward_context import AttentionMetadata, ForwardContext, forward_context
from fw.core.interfaces.model import CausalLM
from fw.core.layers.build import ModelBuildContext, building_model
from fw.plugins.platforms.cpu import CpuPlatform


@dataclass
class _Sequence:
    block_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0


class PagedRunner:
    """Runs a CausalLM over flat batches through a paged KV cache (float32 by default)."""

    def __init__(self, model: CausalLM, config, block_size: int = 4, num_blocks: int = 256, dtype=torch.float32):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
        self.model = model
        self.block_size = block_size
        self.kv_caches = [torch.zeros(shape, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.free_block_ids = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
        self.sequences: dict[int, _Sequence] = {}
        self.backend = CpuPlatform().attention_backend()()

    def step(self, chunks: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        """Append each ``(seq_id, token_ids)`` chunk in one forward; logits ``[len(chunk), vocab]`` per chunk."""
        with torch.no_grad():
            logits = self.model.compute_logits(self.forward(chunks))
        return list(logits.split([len(ids) for _, ids in chunks]))

    def forward(self, chunks: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Append each ``(seq_id, token_ids)`` chunk in one forward; hidden states ``[num_tokens, hidden]``."""
        input_ids, positions, slots, seq_lens, tables = [], [], [], [], []
        query_start_loc = [0]
        for seq_id, token_ids in chunks:
            seq = self.sequences.setdefault(seq_id, _Sequence())
            start, end = seq.num_tokens, seq.num_tokens + len(token_ids)
            while len(seq.block_ids) * self.block_size < end:
                seq.block_ids.append(self.free_block_ids.pop())
            for pos in range(start, end):
                positions.append(pos)
                slots.append(seq.block_ids[pos // self.block_size] * self.block_size + pos % self.block_size)
            input_ids += token_ids
            seq.num_tokens = end
            query_start_loc.append(query_start_loc[-1] + len(token_ids))
            seq_lens.append(end)
            tables.append(seq.block_ids)
        width = max(len(t) for t in tables)
        metadata = AttentionMetadata(
            query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            max_query_len=max(len(ids) for _, ids in chunks),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
        )
        with torch.no_grad(), forward_context(ForwardContext(metadata, self.kv_caches, self.backend)):
            return self.model(torch.tensor(input_ids), torch.tensor(positions))

    def greedy(self, prompts: list[list[int]], num_steps: int) -> list[list[int]]:
        """Prefill every prompt in one step, then decode them together; the new token ids per prompt."""
        first = len(self.sequences)
        seq_ids = list(range(first, first + len(prompts)))
        logits = self.step(list(zip(seq_ids, prompts)))
        outputs = [[int(row[-1].argmax())] for row in logits]
        for _ in range(num_steps - 1):
            logits = self.step([(seq_id, out[-1:]) for seq_id, out in zip(seq_ids, outputs)])
            for out, row in zip(outputs, logits):
                out.append(int(row[-1].argmax()))
        return outputs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: extra threads only add overhead, and on a busy 2-core CI box spin-waiting
    threads made this folder 5x slower (50 s against 10 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def architectures():
    """The model-architecture registry, built through the real plugin manager."""
    from fw.core.plugins import load_plugins

    return load_plugins().model_architectures


@pytest.fixture(scope="session")
def build_twins(architectures):
    """``build_twins(config) -> (hf_model, our_model)``: same random weights, float32, eval mode.

    Ours is the class registered under the HF class name, loaded through
    ``load_weights`` from the HF state dict; every HF tensor must be consumed.
    """
    from transformers import AutoModelForCausalLM

    def build(config, seed: int = 0) -> tuple[torch.nn.Module, CausalLM]:
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        with building_model(ModelBuildContext.for_platform(CpuPlatform(), torch.float32)):
            model = architectures.get(type(hf_model).__name__)(config).eval()
        state_dict = hf_model.state_dict()
        loaded = model.load_weights(state_dict.items())
        assert loaded == set(state_dict), set(state_dict) ^ loaded
        return hf_model, model

    return build


@pytest.fixture(scope="session")
def paged_runner():
    """The :class:`PagedRunner` class (conftest modules cannot be imported by tests)."""
    return PagedRunner
