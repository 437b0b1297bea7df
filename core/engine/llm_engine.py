"""The engine: requests in, one ``step()`` at a time, outputs out.

A step reads as nano-vllm's: ``scheduler.schedule()`` -> ``runner.execute()`` ->
``self._postprocess()``. The serving layer and ``fw.LLM`` both drive this loop.

Each step returns, per request that progressed, what its ``output_kind`` asks for (see
:mod:`fw.core.engine.outputs`); no step copies a request's output, so a step costs the
same at the 4,000th token as at the first. Frontends read the engine through ``info``,
``stats()``, ``default_sampling_params()`` and the request methods only.

No request can stop the engine: ``add_request`` refuses invalid values before they take memory
(:mod:`fw.core.engine.validation`), and a request whose data still makes a step raise fails
alone, with finish reason "error" and ``RequestOutput.error`` (:mod:`fw.core.engine.isolation`;
the work on each sequence after the forward is guarded the same way). A step that does not fail
pays nothing for this.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time

from fw.core.config.engine import EngineConfig
from fw.core.config.scheduler import DEFAULT_CHUNKED_PREFILL_TOKENS
from fw.core.engine.detokenizer import IncrementalDetokenizer
from fw.core.engine.info import EngineInfo, EngineStats
from fw.core.engine.isolation import describe_error, execute_in_parts
from fw.core.engine.loading import check_fits, kv_cache_spec, load_model, num_kv_blocks, text_config
from fw.core.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams
from fw.core.engine.sequence import Logprob, Sequence
from fw.core.engine.validation import RequestLimits, check_request, prompt_token_ids
from fw.core.kv_cache import BlockManager
from fw.core.plugins import Plugins, load_plugins
from fw.core.runner.model_runner import ModelRunner, StepResult
from fw.core.scheduler import Scheduler

logger = logging.getLogger(__name__)

#: Per request: (sequence, new text, number of new tokens) for each of its sequences that progressed.
Progressed = dict[str, list[tuple[Sequence, str, int]]]


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
        peak = self._profile(max_batched, spec)
        num_blocks = num_kv_blocks(config, loaded, spec, peak)
        check_fits(num_blocks, spec.block_size, self.max_model_len)
        self.runner.allocate_kv_cache(num_blocks)
        self.block_manager = BlockManager(num_blocks, spec.block_size, config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, sched.max_num_seqs, max_batched,
                                   sched.enable_chunked_prefill, sched.scheduling_policy)
        self.requests: dict[str, list[Sequence]] = {}
        self._prompts: dict[str, str | None] = {}
        self._counter = itertools.count()

    def _profile(self, num_tokens: int, spec) -> int | None:
        """Peak device memory of a forward at the largest batch, with a cache just big enough for
        it, as the platform measures it (None where its KV budget does not depend on it)."""

        def run_forward() -> None:
            blocks = (num_tokens + spec.block_size - 1) // spec.block_size
            self.runner.allocate_kv_cache(blocks)
            try:
                self.runner.dummy_run(num_tokens, BlockManager(blocks, spec.block_size, False))
            finally:
                self.runner.kv_caches = []

        return self.loaded.platform.profile_peak_memory(run_forward)

    # ---------------------------------------------------------------- what frontends read

    @functools.cached_property
    def info(self) -> EngineInfo:
        """The model this engine runs and its limits (built on first use: none of it changes)."""
        loaded = self.loaded
        model_cls = type(loaded.model)
        return EngineInfo(
            served_name=self.served_name,
            model=self.config.model.model or str(loaded.resolved.path),
            path=loaded.resolved.path,
            source=loaded.resolved.source,
            load_format=loaded.load_format,
            architectures=tuple(loaded.hf_config.architectures or ()),
            implementation=f"{model_cls.__module__}.{model_cls.__qualname__}",
            hf_config=loaded.hf_config,
            tokenizer=self.tokenizer,
            platform=loaded.platform.name,
            device=loaded.device,
            dtype=loaded.dtype,
            quantization=loaded.quantization,
            num_params=loaded.num_params,
            weight_bytes=loaded.weight_bytes,
            num_tensors=sum(1 for _ in loaded.model.parameters()),
            load_seconds=loaded.load_seconds,
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            num_kv_blocks=self.block_manager.num_blocks,
            block_size=self.block_manager.block_size,
            max_sequences_per_request=self.config.scheduler.max_num_seqs,
        )

    def stats(self) -> EngineStats:
        """The engine's load now, for metrics and the stats log."""
        bm, scheduler = self.block_manager, self.scheduler
        return EngineStats(len(scheduler.running), len(scheduler.waiting), bm.usage, bm.num_prefix_queries,
                           bm.num_prefix_hits, scheduler.num_preemptions)

    def default_sampling_params(self) -> SamplingParams:
        """The model's defaults (its generation_config.json, unless ``--generation-config vllm``)."""
        return SamplingParams(**self.loaded.generation_defaults)

    # ---------------------------------------------------------------- requests

    def new_request_id(self) -> str:
        return str(next(self._counter))

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    priority: int = 0, prompt_text: str | None = None) -> None:
        """Queue a request, all its ``n`` samples or none. Invalid input raises
        ``InvalidRequestError`` (a ``ValueError`` naming the field in its ``param``) before it takes
        any memory (see :mod:`fw.core.engine.validation`).

        ``prompt_text``: the text token-id ``prompt`` was encoded from, echoed in the outputs.
        Without ``max_tokens`` the output may run to the end of the context, or to the model's
        generation_config ``max_new_tokens`` when it has one.
        """
        params = params or self.default_sampling_params()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            prompt_text, token_ids = prompt, self.encode(prompt)
        else:
            token_ids = prompt_token_ids(prompt)
        check_request(token_ids, params, priority, self._limits)
        room = self.max_model_len - len(token_ids)
        max_tokens = params.max_tokens or min(room, self.loaded.generation_defaults.get("max_tokens") or room)
        params = params.clone(max_tokens=max_tokens,
                              _eos_token_ids=() if params.ignore_eos else self.loaded.eos_token_ids)
        seqs: list[Sequence] = []
        for index in range(params.n):  # built whole before any is queued: a failure leaves nothing behind
            seq = Sequence(request_id, token_ids, params, index=index, priority=priority,
                           leader=seqs[0] if seqs else None)
            if params.detokenize:
                seq.detokenizer = IncrementalDetokenizer(
                    self.tokenizer, token_ids, params.skip_special_tokens, params.spaces_between_special_tokens,
                    params.stop, params.include_stop_str_in_output)
            seqs.append(seq)
        for seq in seqs:
            self.scheduler.add(seq)
        self.requests[request_id] = seqs
        self._prompts[request_id] = prompt_text

    def check_request(self, token_ids: list[int], params: SamplingParams, priority: int = 0) -> None:
        """Raise ``InvalidRequestError`` unless ``add_request`` would take this request (thread-safe:
        it reads only the engine's fixed limits)."""
        check_request(token_ids, params, priority, self._limits)

    def encode(self, prompt: str) -> list[int]:
        """The token ids of a text prompt, as ``add_request`` encodes it."""
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    @functools.cached_property
    def _limits(self) -> RequestLimits:
        return RequestLimits(self.vocab_size, self.max_model_len, self.config.scheduler.max_num_seqs,
                             self.config.model.max_logprobs)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free every block it holds.

        Returns its last output (finish reason "abort", in the request's output kind), or None
        when there is no such request (it finished already, or never was).
        """
        seqs = self.requests.get(request_id)
        if seqs is None:
            return None
        aborted: list[tuple[Sequence, str, int]] = []
        for seq in seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
                aborted.append((seq, seq.detokenizer.finish() if seq.detokenizer else "", 0))
        return self._output(request_id, aborted)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---------------------------------------------------------------- step

    def step(self) -> list[RequestOutput]:
        """Run one step; return an output for each request that sampled a token, as its
        ``output_kind`` asks (a FINAL_ONLY request has one, when it finishes), and the last output
        of each request that failed in the step (see ``RequestOutput.error``).

        A request whose data makes the step raise fails alone while the others go on (see
        :mod:`fw.core.engine.isolation`); the step raises ``EngineDeadError`` only when the model
        fails even on a probe of its own.
        """
        batch = self.scheduler.schedule()
        if not batch:
            return []
        now = time.monotonic()
        for seq in batch.seqs:
            seq.first_scheduled_time = seq.first_scheduled_time or now
        failed: dict[str, BaseException] = {}  # request id -> what it raised; filled only when one fails
        try:
            results = [self.runner.execute(batch, self.block_manager)]
        except Exception as error:  # noqa: BLE001 - find the requests at fault and fail them alone
            results = execute_in_parts(self.runner, self.block_manager, batch, error,
                                       functools.partial(self._fail_request, failed=failed))
        self.scheduler.postprocess(batch)
        progressed: Progressed = {}
        for result in results:
            self._postprocess(result, progressed, failed)
        return self._outputs(progressed, failed)

    # ---------------------------------------------------------------- after the forward

    def _fail_request(self, request_id: str, error: BaseException, failed: dict[str, BaseException]) -> None:
        """Finish every unfinished sample of the request with finish reason "error" and free its
        blocks now; ``_outputs`` then hands out its last output, carrying the error."""
        if request_id in failed:
            return
        failed[request_id] = error
        for seq in self.requests[request_id]:
            if not seq.is_finished:
                seq.finish_reason = "error"
                self.scheduler.finish(seq)

    def _postprocess(self, result: StepResult, progressed: Progressed, failed: dict[str, BaseException]) -> None:
        """Append the sampled tokens; per request, each sequence that got one: (sequence, new text, 1).

        The work on each sequence is guarded: if it raises, its request fails alone.
        """
        for seq, start, positions in result.prompt_logprobs:
            if seq.is_finished:
                continue
            try:
                # Index i of seq.prompt_logprobs is prompt token i (the first has none). After a
                # preemption the same positions are computed again: keep only the new ones.
                if not seq.prompt_logprobs:
                    seq.prompt_logprobs = [None]
                seq.prompt_logprobs += positions[len(seq.prompt_logprobs) - (start + 1):]
            except Exception as error:  # noqa: BLE001 - one request's data fails only that request
                self._fail_request(seq.request_id, error, failed)
        if result.sampled is None:
            return
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
            try:
                token = token_ids[row]
                seq.output_token_ids.append(token)
                seq.first_token_time = seq.first_token_time or now
                if seq.params.logprobs is not None:
                    entry = {token: Logprob(sampled_lp[row], ranks[row])}
                    for rank in range(seq.params.logprobs):
                        entry.setdefault(top_ids[row][rank], Logprob(top_lp[row][rank], rank + 1))
                    seq.logprobs.append(entry)
                    seq.cumulative_logprob += sampled_lp[row]
                text = self._check_stop(seq, token)
                if seq.finish_reason is not None:
                    self.scheduler.finish(seq)
                progressed.setdefault(seq.request_id, []).append((seq, text, 1))
            except Exception as error:  # noqa: BLE001 - one request's data fails only that request
                self._fail_request(seq.request_id, error, failed)

    def _outputs(self, progressed: Progressed, failed: dict[str, BaseException]) -> list[RequestOutput]:
        """The step's outputs: each request that progressed, then each that failed."""
        outputs = []
        for request_id, items in progressed.items():
            if request_id in failed:
                continue
            try:
                output = self._output(request_id, items)
            except Exception as error:  # noqa: BLE001 - one request's data fails only that request
                self._fail_request(request_id, error, failed)
                continue
            if output is not None:
                outputs.append(output)
        outputs += [self._failed_output(request_id, error) for request_id, error in failed.items()]
        return outputs

    def _check_stop(self, seq: Sequence, token: int) -> str:
        """Finish the sequence if ``token`` ends it; return the text the token releases.

        Stop strings are found (and the text cut) by the detokenizer, which never releases text
        a stop string could still cut.
        """
        params, detokenizer = seq.params, seq.detokenizer
        may_stop = seq.num_output_tokens > params.min_tokens
        is_stop_token = may_stop and (token in params._eos_token_ids or token in params.stop_token_ids)
        text = ""
        if detokenizer is not None and (not is_stop_token or params.include_stop_str_in_output):
            text = detokenizer.add_token(token, check_stop=may_stop)
            if detokenizer.stop_string is not None:
                seq.finish_reason, seq.stop_reason = "stop", detokenizer.stop_string
                return text
        if is_stop_token:
            seq.finish_reason = "stop"
            seq.stop_reason = None if token in params._eos_token_ids else token
        elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"
        if seq.finish_reason is not None and detokenizer is not None:
            text += detokenizer.finish()
        return text

    def _output(self, request_id: str, progressed: list[tuple[Sequence, str, int]]) -> RequestOutput | None:
        """The request's output after ``progressed`` (sequence, new text, number of new tokens), as
        its output kind asks; None for a FINAL_ONLY request that has not finished."""
        seqs = self.requests[request_id]
        leader = seqs[0]
        kind = leader.params.output_kind
        finished = all(s.is_finished for s in seqs)
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        prompt_logprobs = leader.prompt_logprobs if leader.params.prompt_logprobs is not None else None
        if kind is RequestOutputKind.DELTA:
            outputs = [_delta_output(seq, text, num_new) for seq, text, num_new in progressed]
            # Prompt logprobs go out once, with the first sampled token (the prompt is done by then).
            if not any(seq is leader and 0 < num_new == seq.num_output_tokens for seq, _, num_new in progressed):
                prompt_logprobs = None
        else:
            outputs = [_whole_output(seq) for seq in seqs]
        metrics = RequestMetrics(leader.arrival_time, leader.first_scheduled_time, leader.first_token_time,
                                 time.monotonic() if finished else None)
        output = RequestOutput(request_id, self._prompts[request_id], leader.prompt_token_ids, outputs, finished,
                               prompt_logprobs, leader.num_cached_tokens, metrics)
        if finished:
            del self.requests[request_id]
            del self._prompts[request_id]
        return output

    def _failed_output(self, request_id: str, error: BaseException) -> RequestOutput:
        """The last output of a request that failed in a step: no new tokens, whatever its output
        kind (its own data may be what raised); ``error`` says why. The traceback goes to the log,
        once."""
        logger.error("request %s failed in an engine step; the engine goes on without it", request_id,
                     exc_info=error)
        seqs = self.requests.pop(request_id)
        leader = seqs[0]
        outputs = [CompletionOutput(seq.index, "", [], seq.cumulative_logprob, None, seq.finish_reason, seq.stop_reason)
                   for seq in seqs]
        metrics = RequestMetrics(leader.arrival_time, leader.first_scheduled_time, leader.first_token_time,
                                 time.monotonic())
        return RequestOutput(request_id, self._prompts.pop(request_id), leader.prompt_token_ids, outputs, True,
                             metrics=metrics, error=f"the engine failed on this request: {describe_error(error)}")


def _whole_output(seq: Sequence) -> CompletionOutput:
    """Everything the sequence generated so far. The lists are the sequence's own (not copied)."""
    return CompletionOutput(
        index=seq.index,
        text=seq.detokenizer.output_text if seq.detokenizer is not None else "",
        token_ids=seq.output_token_ids,
        cumulative_logprob=seq.cumulative_logprob,
        logprobs=seq.logprobs if seq.params.logprobs is not None else None,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
    )


def _delta_output(seq: Sequence, text: str, num_new: int) -> CompletionOutput:
    """What the sequence added: its last ``num_new`` tokens and their logprobs, and ``text``."""
    new_logprobs = seq.logprobs[len(seq.logprobs) - num_new:] if seq.params.logprobs is not None else None
    return CompletionOutput(
        index=seq.index,
        text=text,
        token_ids=seq.output_token_ids[seq.num_output_tokens - num_new:],
        cumulative_logprob=seq.cumulative_logprob,
        logprobs=new_logprobs,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
    )

