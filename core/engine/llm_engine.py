"""The engine: requests in, one ``step()`` at a time, outputs out.

A step reads as nano-vllm's: ``scheduler.schedule()`` -> ``runner.execute()`` ->
``self._postprocess()``. The serving layer and ``fw.LLM`` both drive this loop.
"""

from __future__ import annotations

import itertools
import time

import torch

from fw.core.config.engine import EngineConfig
from fw.core.config.scheduler import DEFAULT_CHUNKED_PREFILL_TOKENS
from fw.core.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from fw.core.engine.loading import check_fits, kv_cache_spec, load_model, num_kv_blocks, text_config
from fw.core.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from fw.core.engine.sampling_params import SamplingParams
from fw.core.engine.sequence import Logprob, Sequence
from fw.core.kv_cache import BlockManager
from fw.core.plugins import Plugins, load_plugins
from fw.core.runner.model_runner import ModelRunner, StepResult
from fw.core.scheduler import Scheduler

class LLMEngine:
    def __init__(self, config: EngineConfig, plugins: Plugins | None = None) -> None:
        self.config = config
        self.plugins = plugins or load_plugins()
        self.plugins.check()
        loaded = load_model(config, self.plugins)
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.max_model_len = loaded.max_model_len
        self.served_name = loaded.resolved.served_name
        self.vocab_size = int(text_config(loaded.hf_config).vocab_size)

        spec = kv_cache_spec(config, loaded)
        self.runner = ModelRunner(loaded.model, loaded.platform, loaded.device, self.vocab_size, spec)
        sched = config.scheduler
        max_batched = sched.max_num_batched_tokens or (
            DEFAULT_CHUNKED_PREFILL_TOKENS if sched.enable_chunked_prefill else self.max_model_len)
        peak = self._profile(max_batched, spec) if loaded.device.type == "cuda" else None
        num_blocks = num_kv_blocks(config, loaded, spec, peak)
        check_fits(num_blocks, spec.block_size, self.max_model_len)
        self.runner.allocate_kv_cache(num_blocks)
        self.block_manager = BlockManager(num_blocks, spec.block_size, config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, sched.max_num_seqs, max_batched,
                                   sched.enable_chunked_prefill, sched.scheduling_policy)
        self.requests: dict[str, list[Sequence]] = {}
        self._prompts: dict[str, str | None] = {}
        self._counter = itertools.count()

    def _profile(self, num_tokens: int, spec) -> int:
        """Peak memory of a forward at the largest batch, with a cache just big enough for it."""
        blocks = (num_tokens + spec.block_size - 1) // spec.block_size
        self.runner.allocate_kv_cache(blocks)
        torch.cuda.reset_peak_memory_stats()
        self.runner.dummy_run(num_tokens, BlockManager(blocks, spec.block_size, False))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        self.runner.kv_caches = []
        torch.cuda.empty_cache()
        return peak

    # ---------------------------------------------------------------- requests

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.loaded.generation_defaults)

    def new_request_id(self) -> str:
        return str(next(self._counter))

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    priority: int = 0) -> None:
        """Queue a request. Invalid input raises ``ValueError`` before it takes any memory."""
        params = params or self.default_sampling_params()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            prompt_text, token_ids = prompt, self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            prompt_text, token_ids = None, list(prompt)
        self._validate(token_ids, params)
        max_tokens = params.max_tokens or self.max_model_len - len(token_ids)
        params = params.clone(max_tokens=max_tokens,
                              _eos_token_ids=() if params.ignore_eos else self.loaded.eos_token_ids)
        leader = None
        seqs = []
        for index in range(params.n):
            seq = Sequence(request_id, token_ids, params, index=index, priority=priority, leader=leader)
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens,
                                                     params.spaces_between_special_tokens)
            leader = leader or seq
            seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = seqs
        self._prompts[request_id] = prompt_text

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise ValueError("the prompt is empty")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of vocabulary (0 to {self.vocab_size - 1})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(token_ids)} tokens, but the model's context length is "
                             f"{self.max_model_len}; shorten the prompt")
        if params.max_tokens is not None and len(token_ids) + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request asks for "
                f"{len(token_ids) + params.max_tokens} ({len(token_ids)} in the prompt, {params.max_tokens} "
                "to generate); reduce the prompt or max_tokens")
        limit = self.config.model.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > limit:
                raise ValueError(f"{name} is {value}, more than the maximum of {limit} (--max-logprobs)")

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free every block it holds."""
        for seq in self.requests.pop(request_id, []):
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        self._prompts.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---------------------------------------------------------------- step

    def step(self) -> list[RequestOutput]:
        """Run one step; return an output for every request that progressed (finished ones last time)."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        now = time.monotonic()
        for seq in batch.seqs:
            seq.first_scheduled_time = seq.first_scheduled_time or now
        result = self.runner.execute(batch, self.block_manager)
        self.scheduler.postprocess(batch)
        touched = self._postprocess(result)
        return [self._output(request_id) for request_id in touched]

    def _postprocess(self, result: StepResult) -> list[str]:
        touched: dict[str, None] = {}
        for seq, start, positions in result.prompt_logprobs:
            # Index i of seq.prompt_logprobs is prompt token i (the first has none). After a
            # preemption the same positions are computed again: keep only the new ones.
            if not seq.prompt_logprobs:
                seq.prompt_logprobs = [None]
            seq.prompt_logprobs += positions[len(seq.prompt_logprobs) - (start + 1):]
            touched[seq.request_id] = None
        if result.sampled is None:
            return list(touched)
        sampled = result.sampled
        token_ids = sampled.token_ids.tolist()
        sampled_lp = sampled.sampled_logprobs.tolist() if sampled.sampled_logprobs is not None else None
        ranks = sampled.sampled_ranks.tolist() if sampled.sampled_ranks is not None else None
        top_ids = sampled.top_ids.tolist() if sampled.top_ids is not None else None
        top_lp = sampled.top_logprobs.tolist() if sampled.top_logprobs is not None else None
        now = time.monotonic()
        for row, seq in enumerate(result.seqs):
            if seq.is_finished:
                continue
            token = token_ids[row]
            seq.output_token_ids.append(token)
            seq.first_token_time = seq.first_token_time or now
            if seq.params.logprobs is not None:
                entry = {token: Logprob(sampled_lp[row], ranks[row])}
                for rank in range(seq.params.logprobs):
                    entry.setdefault(top_ids[row][rank], Logprob(top_lp[row][rank], rank + 1))
                seq.logprobs.append(entry)
            self._check_stop(seq, token)
            if seq.finish_reason is not None:
                self.scheduler.finish(seq)
            touched[seq.request_id] = None
        return list(touched)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        params = seq.params
        may_stop = seq.num_output_tokens > params.min_tokens
        is_stop_token = may_stop and (token in params._eos_token_ids or token in params.stop_token_ids)
        if params.detokenize and (not is_stop_token or params.include_stop_str_in_output):
            delta = seq.detokenizer.add_token(token)
            if delta and params.stop and may_stop:
                found = find_stop_string(seq.detokenizer.text, len(delta), params.stop)
                if found:
                    stop, index = found
                    end = index + len(stop) if params.include_stop_str_in_output else index
                    seq.detokenizer.text = seq.detokenizer.text[:end]
                    seq.finish_reason, seq.stop_reason = "stop", stop
                    return
        if is_stop_token:
            seq.finish_reason = "stop"
            seq.stop_reason = None if token in params._eos_token_ids else token
        elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"
        if seq.finish_reason is not None and params.detokenize:
            seq.detokenizer.flush()

    def _output(self, request_id: str) -> RequestOutput:
        seqs = self.requests[request_id]
        leader = seqs[0]
        finished = all(s.is_finished for s in seqs)
        outputs = [
            CompletionOutput(
                index=s.index,
                text=s.detokenizer.text,
                token_ids=list(s.output_token_ids),
                cumulative_logprob=sum(next(iter(p.values())).logprob for p in s.logprobs) if s.logprobs else None,
                logprobs=list(s.logprobs) if s.params.logprobs is not None else None,
                finish_reason=s.finish_reason,
                stop_reason=s.stop_reason,
            )
            for s in seqs
        ]
        metrics = RequestMetrics(leader.arrival_time, leader.first_scheduled_time, leader.first_token_time,
                                 time.monotonic() if finished else None)
        output = RequestOutput(
            request_id=request_id,
            prompt=self._prompts.get(request_id),
            prompt_token_ids=leader.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            prompt_logprobs=list(leader.prompt_logprobs) if leader.params.prompt_logprobs is not None else None,
            num_cached_tokens=leader.num_cached_tokens,
            metrics=metrics,
        )
        if finished:
            del self.requests[request_id]
            self._prompts.pop(request_id, None)
        return output

