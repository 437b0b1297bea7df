"""Vectorised sampling: penalties, logit processors, temperature, top-k/top-p/min-p, logprobs.

Every operation works on the whole ``[num_rows, vocab]`` batch at once; the only
per-row Python work is drawing noise for requests with their own seed, so that their
samples do not depend on what else is in the batch. The final draw (argmax or
inverse-CDF) is the platform's ``sample_rows`` op, chosen when the sampler is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fw.core.engine.sequence import Sequence
from fw.core.interfaces.ops import PlatformOps
from fw.core.layers.ops import TorchOps, inverse_cdf_sample


@dataclass
class SamplingBatch:
    """Per-row sampling parameters as tensors, built once per step from the sequences."""

    temperature: torch.Tensor  # [N] float, 1.0 for greedy rows (they use argmax)
    greedy: torch.Tensor  # [N] bool
    top_k: torch.Tensor  # [N] int, vocab size where disabled
    top_p: torch.Tensor  # [N] float
    min_p: torch.Tensor  # [N] float
    # Whether any row restricts the candidates (top-k, top-p or min-p): the sort is costly.
    truncates: bool
    generators: list[torch.Generator | None]
    num_logprobs: int  # the most top logprobs any row asked for; -1 for none
    # Sparse logit edits: (rows, token ids, values) added to the logits.
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    # Rows restricted to allowed tokens / not yet allowed to stop: (rows, token ids) of banned cells.
    banned: tuple[torch.Tensor, torch.Tensor] | None
    allowed: tuple[torch.Tensor, torch.Tensor] | None
    # Penalties, only when some row uses them.
    presence: torch.Tensor | None  # [N] float
    frequency: torch.Tensor | None  # [N] float
    repetition: torch.Tensor | None  # [N] float
    output_ids: torch.Tensor | None  # [N, max_out] int, padded with vocab_size
    seen_ids: torch.Tensor | None  # [N, max_seen] prompt+output, padded with vocab_size

    @classmethod
    def build(cls, seqs: list[Sequence], vocab_size: int, device: torch.device) -> SamplingBatch:
        params = [s.params for s in seqs]

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        bias_rows, bias_ids, bias_values, banned_rows, banned_ids, allowed_rows, allowed_ids = ([] for _ in range(7))
        for row, (seq, p) in enumerate(zip(seqs, params)):
            for token_id, value in (p.logit_bias or {}).items():  # ids checked by LLMEngine.add_request
                bias_rows.append(row), bias_ids.append(token_id), bias_values.append(value)
            if p.allowed_token_ids:
                allowed_rows += [row] * len(p.allowed_token_ids)
                allowed_ids += p.allowed_token_ids
            if seq.num_output_tokens < p.min_tokens:
                stops = [*p.stop_token_ids, *p._eos_token_ids]
                banned_rows += [row] * len(stops)
                banned_ids += stops

        penalized = any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0 for p in params)

        def padded(lists: list[list[int]]) -> torch.Tensor:
            width = max((len(x) for x in lists), default=0) or 1
            return tensor([x + [vocab_size] * (width - len(x)) for x in lists], torch.long)

        return cls(
            temperature=tensor([1.0 if p.greedy else p.temperature for p in params], torch.float32),
            greedy=tensor([p.greedy for p in params], torch.bool),
            top_k=tensor([p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params], torch.long),
            top_p=tensor([p.top_p for p in params], torch.float32),
            min_p=tensor([p.min_p for p in params], torch.float32),
            truncates=any(0 < p.top_k < vocab_size or p.top_p < 1 or p.min_p > 0 for p in params if not p.greedy),
            generators=[s.generator for s in seqs],
            num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=-1),
            bias=(tensor(bias_rows, torch.long), tensor(bias_ids, torch.long), tensor(bias_values, torch.float32))
            if bias_rows else None,
            banned=(tensor(banned_rows, torch.long), tensor(banned_ids, torch.long)) if banned_rows else None,
            allowed=(tensor(allowed_rows, torch.long), tensor(allowed_ids, torch.long)) if allowed_rows else None,
            presence=tensor([p.presence_penalty for p in params], torch.float32) if penalized else None,
            frequency=tensor([p.frequency_penalty for p in params], torch.float32) if penalized else None,
            repetition=tensor([p.repetition_penalty for p in params], torch.float32) if penalized else None,
            output_ids=padded([s.output_token_ids for s in seqs]) if penalized else None,
            seen_ids=padded([s.token_ids for s in seqs]) if penalized else None,
        )


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [N]
    # Raw-model logprobs (before penalties and temperature, as vLLM's default).
    sampled_logprobs: torch.Tensor | None = None  # [N]
    sampled_ranks: torch.Tensor | None = None  # [N], 1 = the most likely token
    top_ids: torch.Tensor | None = None  # [N, k]
    top_logprobs: torch.Tensor | None = None  # [N, k]


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    num_rows, vocab = logits.shape
    # Counts of each token in the output so far: [N, vocab + 1] (last column is padding).
    counts = torch.zeros(num_rows, vocab + 1, device=logits.device)
    counts.scatter_add_(1, batch.output_ids, torch.ones_like(batch.output_ids, dtype=counts.dtype))
    counts = counts[:, :vocab]
    seen = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, batch.seen_ids, True)
    seen = seen[:, :vocab]
    rep = batch.repetition.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    logits = logits - batch.frequency.unsqueeze(1) * counts
    return logits - batch.presence.unsqueeze(1) * (counts > 0).to(logits.dtype)


def apply_top_k_top_p_min_p(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    drop = ranks >= batch.top_k.unsqueeze(1)
    probs = sorted_logits.softmax(dim=-1)
    # top-p: drop a token when the tokens before it already cover top_p (the first always stays).
    drop |= (probs.cumsum(dim=-1) - probs) >= batch.top_p.unsqueeze(1)
    drop |= probs < batch.min_p.unsqueeze(1) * probs[:, :1]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


class Sampler:
    def __init__(self, ops: PlatformOps | None = None) -> None:
        """``ops``: the platform's ops for float32 (plain torch by default)."""
        self.ops = ops or TorchOps()

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """``logits: [N, vocab]`` -> one sampled token per row."""
        plain = (batch.num_logprobs < 0 and batch.bias is None and batch.allowed is None and batch.banned is None
                 and batch.presence is None and not batch.truncates)
        if plain and logits.dtype in self.ops.sample_rows_dtypes:
            # Nothing to edit: the op reads the model's logits as they are (even bfloat16 on the CPU).
            return SamplerOutput(token_ids=self._sample_rows(logits, batch))
        logits = logits.float()
        raw_logprobs = logits.log_softmax(dim=-1) if batch.num_logprobs >= 0 else None
        if batch.bias is not None:
            rows, ids, values = batch.bias
            logits = logits.index_put((rows, ids), values, accumulate=True)
        if batch.allowed is not None:
            rows, ids = batch.allowed
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep[rows, ids] = True
            restricted = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
            restricted[rows] = True
            logits = logits.masked_fill(restricted.unsqueeze(1) & ~keep, float("-inf"))
        if batch.banned is not None:
            rows, ids = batch.banned
            logits = logits.index_put((rows, ids), torch.tensor(float("-inf"), device=logits.device))
        if batch.presence is not None:
            logits = apply_penalties(logits, batch)

        if batch.truncates:
            token_ids = self._sample_truncated(logits, batch)
        else:
            token_ids = self._sample_rows(logits, batch)

        out = SamplerOutput(token_ids=token_ids)
        if raw_logprobs is not None:
            chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1))
            out.sampled_logprobs = chosen.squeeze(1)
            out.sampled_ranks = (raw_logprobs > chosen).sum(dim=1) + 1
            if batch.num_logprobs > 0:
                out.top_logprobs, out.top_ids = raw_logprobs.topk(batch.num_logprobs, dim=-1)
        return out

    def _sample_rows(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Argmax for greedy rows and the inverse-CDF draw for the others, by the platform's op."""
        all_greedy = bool(batch.greedy.all())
        uniform = torch.zeros(logits.shape[0], device=logits.device) if all_greedy \
            else self._uniforms(batch, logits.device)
        return self.ops.sample_rows(logits, batch.temperature.masked_fill(batch.greedy, 0.0), uniform)

    def _sample_truncated(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """``_sample_rows`` over the candidates top-k, top-p and min-p leave, in torch."""
        token_ids = logits.argmax(dim=-1)
        if bool(batch.greedy.all()):
            return token_ids
        scaled = apply_top_k_top_p_min_p(logits / batch.temperature.unsqueeze(1), batch)
        sampled = inverse_cdf_sample(scaled.softmax(dim=-1), self._uniforms(batch, logits.device))
        return torch.where(batch.greedy, token_ids, sampled)

    @staticmethod
    def _uniforms(batch: SamplingBatch, device: torch.device) -> torch.Tensor:
        """One uniform in [0, 1) per row; seeded rows draw theirs from their own generator,
        so their samples do not depend on the batch."""
        uniform = torch.rand(len(batch.generators), device=device)
        for row, generator in enumerate(batch.generators):
            if generator is not None:
                uniform[row] = torch.rand(1, generator=generator).to(device)
        return uniform


def compute_prompt_logprobs(logits: torch.Tensor, next_ids: torch.Tensor, k: int):
    """Logprobs of the actual next prompt tokens, their ranks, and the top ``k``."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen = logprobs.gather(1, next_ids.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=1) + 1
    top = logprobs.topk(k, dim=-1) if k > 0 else None
    return chosen.squeeze(1), ranks, top
