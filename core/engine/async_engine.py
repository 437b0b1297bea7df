"""The engine for servers: ``LLMEngine`` stepping in a background thread, requests as async streams.

The event loop never waits for a step. It hands commands (add, abort, stop) to the engine
thread through a queue; the thread drains the queue between steps, runs ``LLMEngine.step()``
and hands each request's output back to the event loop that asked for it. Torch releases the
GIL inside its kernels, so the event loop keeps answering (``/health``, new requests) while a
step runs.

Between the threads every request's outputs travel as deltas (``RequestOutputKind.DELTA``):
each is a fresh object the engine thread never touches again, the metrics count new tokens
from them, and on the event loop ``generate`` merges them into what the caller's
``output_kind`` asks for.

Admission control lives here, in the serving frontend, not in ``LLMEngine``: ``generate``
refuses a request with ``EngineOverloadedError`` before it is queued when the server holds
``--max-num-queued-reqs`` sequences or ``--max-num-queued-tokens`` prompt tokens already.
``fw.LLM`` drives ``LLMEngine`` directly, and its offline batches (thousands of prompts the
caller chose to queue) are never refused.

Failures: a request that fails inside a step ends its stream with ``RequestFailedError``
while the others go on; when the engine itself dies, every request in flight gets
``EngineDeadError`` and ``on_dead(error)`` is called once (a server exits non-zero from it,
so that its supervisor restarts it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, AsyncIterator, Callable, Protocol, Sequence

from fw.core.engine.admission import Admission
from fw.core.engine.outputs import RequestOutput
from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams
from fw.core.errors import EngineDeadError, InvalidRequestError, RequestFailedError

if TYPE_CHECKING:
    from fw.core.config.engine import EngineConfig
    from fw.core.engine.info import EngineInfo
    from fw.core.engine.llm_engine import LLMEngine
    from fw.core.plugins import Plugins

logger = logging.getLogger(__name__)


@dataclass
class FinishedRequestStats:
    finish_reason: str
    e2e_latency: float
    queue_time: float
    num_prompt_tokens: int
    num_generation_tokens: int


@dataclass
class IterationStats:
    """What one engine step (or one batch of aborts) changed, for metrics and the stats log."""

    time: float
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)


class StatLogger(Protocol):
    def record(self, stats: IterationStats) -> None: ...


class _Stream:
    """Where one request's outputs go: a queue on the event loop that awaits them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()


@dataclass
class _Progress:
    """Per-request bookkeeping for token-latency stats."""

    num_tokens: int = 0
    last_token_time: float = 0.0


_STOP = object()


class AsyncEngine:
    def __init__(self, engine: LLMEngine, stat_loggers: Sequence[StatLogger] = (),
                 on_dead: Callable[[BaseException], None] | None = None) -> None:
        """``on_dead(error)`` is called once, on the engine thread, when the engine dies (a step
        raised ``EngineDeadError``, or anything else it cannot isolate), after every request in
        flight got ``EngineDeadError``; never on ``shutdown()``."""
        self.engine = engine
        self.stat_loggers = list(stat_loggers)
        self.on_dead = on_dead
        self.dead_error: BaseException | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._progress: dict[str, _Progress] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._last_stats = engine.stats()
        self._admission = Admission(engine.config.scheduler)

    @classmethod
    def from_config(cls, config: EngineConfig, plugins: Plugins | None = None,
                    stat_loggers: Sequence[StatLogger] = (),
                    on_dead: Callable[[BaseException], None] | None = None) -> AsyncEngine:
        from fw.core.engine.llm_engine import LLMEngine

        return cls(LLMEngine(config, plugins), stat_loggers, on_dead)

    # ---------------------------------------------------------------- event-loop side

    @property
    def info(self) -> EngineInfo:
        """The engine's model and limits (:attr:`LLMEngine.info`)."""
        return self.engine.info

    def default_sampling_params(self) -> SamplingParams:
        """The model's default sampling parameters (:meth:`LLMEngine.default_sampling_params`)."""
        return self.engine.default_sampling_params()

    @property
    def is_dead(self) -> bool:
        return self.dead_error is not None

    def num_unfinished(self) -> int:
        return len(self._streams)

    @property
    def num_queued_sequences(self) -> int:
        """Sequences admitted and not finished (waiting, running, or on their way to the engine)."""
        return self._admission.num_seqs

    def check_request_size(self, num_prompts: int, n: int) -> None:
        """Refuse (``InvalidRequestError``, a 400) a request whose prompts times ``n`` are more
        sequences than one step runs (``info.max_sequences_per_request``, ``--max-num-seqs``).
        The server calls ``generate`` once per prompt; this checks the request as a whole."""
        limit = self.info.max_sequences_per_request
        if num_prompts * n <= limit:
            return
        if num_prompts == 1:
            raise InvalidRequestError(f"n is {n}, more than the maximum of {limit} (--max-num-seqs)", "n")
        raise InvalidRequestError(f"the request asks for {num_prompts * n} sequences ({num_prompts} prompts x n={n}), "
                                  f"more than the maximum of {limit} (--max-num-seqs)", "n" if n > 1 else "prompt")

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fw-engine", daemon=True)
                self._thread.start()

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as it progresses, as ``params.output_kind`` asks; the last one is
        finished. Deltas that queued up while the caller was busy come merged into one output.

        Raises, from the first iteration, ``EngineOverloadedError`` when the queue is full (nothing
        was queued), ``InvalidRequestError`` for a request the engine refuses; later
        ``RequestFailedError`` when the request fails inside a step, ``EngineDeadError`` when the
        engine dies. A text prompt is tokenized in a worker thread, never on the event loop or the
        engine thread. CUMULATIVE outputs share their lists, which keep growing (as the engine's
        own do). Leaving early (``break``, ``aclose()``, cancellation) aborts the request.
        """
        self._check_alive()
        self.check_request_size(1, params.n)  # a 400 for a request too big ever to run, never a 503
        prompt_text = prompt if isinstance(prompt, str) else None
        # An invalid request is a 400 however busy the engine is: checked before admission, in a
        # worker thread (a long prompt's ids take a while to encode and to check).
        prompt = await asyncio.to_thread(self._checked_prompt, prompt, params, priority)
        admitted = self._admission.admit(params.n, len(prompt))  # raises EngineOverloadedError
        kind = params.output_kind
        merged: RequestOutput | None = None
        finished = False
        try:
            self.start()
            stream = _Stream(asyncio.get_running_loop())
            self._commands.put(("add", request_id, prompt, prompt_text,
                                params.clone(output_kind=RequestOutputKind.DELTA), priority, stream))
            self._check_alive()  # the engine may have died after the first check, before the command got in
            while True:
                item = await stream.queue.get()
                admitted.prefill_done()
                if isinstance(item, BaseException):
                    finished = True  # the engine already dropped it
                    raise item
                if merged is None:
                    merged = item
                else:
                    merged.add(item)
                finished = merged.finished
                if not stream.queue.empty() or (kind is RequestOutputKind.FINAL_ONLY and not finished):
                    continue  # take in what else arrived first, so nothing waits behind a stale output
                if kind is RequestOutputKind.CUMULATIVE:
                    yield replace(merged, outputs=[replace(o) for o in merged.outputs])
                else:
                    yield merged
                if finished:
                    return
                if kind is RequestOutputKind.DELTA:
                    merged = None
        finally:
            admitted.release(completed=merged is not None and merged.finished)
            if not finished:
                self.abort(request_id)

    def _checked_prompt(self, prompt: str | list[int], params: SamplingParams, priority: int) -> list[int]:
        """The prompt's token ids, once the engine would take the request (else InvalidRequestError)."""
        token_ids = self.engine.encode(prompt) if isinstance(prompt, str) else prompt
        self.engine.check_request(token_ids, params, priority)
        return token_ids

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks; safe from any thread, a no-op once it finished."""
        if self._thread is not None and self.dead_error is None:
            self._commands.put(("abort", request_id))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Abort every unfinished request and stop the engine thread."""
        if self._thread is None:
            return
        self._commands.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the engine thread did not stop within %.1f s", timeout)

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine is not running: {self.dead_error}")

    # ---------------------------------------------------------------- engine thread

    def _run(self) -> None:
        try:
            while True:
                if not self._drain_commands(block=not self.engine.has_unfinished_requests()):
                    break
                if not self.engine.has_unfinished_requests():
                    continue
                outputs = self.engine.step()
                self._record(outputs)
                self._deliver(outputs)
            for request_id in list(self._streams):
                self.engine.abort_request(request_id)
            reason: BaseException = EngineDeadError("the engine was shut down")
            died = False
        except BaseException as e:  # noqa: BLE001 - what a step cannot isolate ends the engine
            logger.exception("the engine died")
            reason, died = e, True
        self.dead_error = reason
        self._fail_all(reason)
        if died and self.on_dead is not None:
            try:
                self.on_dead(reason)
            except Exception:  # noqa: BLE001 - the engine thread ends either way
                logger.exception("the on_dead callback failed")

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands; wait for one when idle. False when asked to stop."""
        aborted: list[FinishedRequestStats] = []
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                break
            block = False
            if command is _STOP:
                return False
            if command[0] == "add":
                _, request_id, prompt, prompt_text, params, priority, stream = command
                try:
                    self.engine.add_request(request_id, prompt, params, priority, prompt_text)
                except Exception as e:  # noqa: BLE001 - a bad request fails alone
                    self._send(stream, e)
                    continue
                self._streams[request_id] = stream
                if self.stat_loggers:
                    self._progress[request_id] = _Progress()
            else:
                request_id = command[1]
                if self._streams.pop(request_id, None) is not None:
                    progress = self._progress.pop(request_id, None)
                    last = self.engine.abort_request(request_id)
                    if progress is not None and last is not None:
                        aborted.append(_finished_stats(last, "abort", progress.num_tokens, time.monotonic()))
        if aborted:
            self._record([], aborted)
        return True

    def _send(self, stream: _Stream, item: RequestOutput | BaseException) -> None:
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        except RuntimeError:
            pass  # that event loop is closed: nobody is waiting any more

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand each output to its stream; a request that failed in the step gets ``RequestFailedError``."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput | BaseException]]] = {}
        for output in outputs:
            stream = self._streams.pop(output.request_id, None) if output.finished else self._streams.get(output.request_id)
            if stream is not None:
                item = output if output.error is None else RequestFailedError(output.error, output.request_id)
                by_loop.setdefault(stream.loop, []).append((stream, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)  # one wake-up per step, not per request
            except RuntimeError:
                for _, item in items:
                    if isinstance(item, RequestOutput) and not item.finished:
                        self._commands.put(("abort", item.request_id))

    def _fail_all(self, error: BaseException) -> None:
        """End every stream with ``EngineDeadError``: the engine's, and those of adds still queued."""
        dead = error if isinstance(error, EngineDeadError) else EngineDeadError(f"the engine stopped: {error}")
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._send(stream, dead)
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command is not _STOP and command[0] == "add":
                self._send(command[-1], dead)

    def _record(self, outputs: list[RequestOutput], aborted: Sequence[FinishedRequestStats] = ()) -> None:
        """Hand the stat loggers what this step changed; ``outputs`` are the step's deltas."""
        if not self.stat_loggers:
            return
        now_stats, last = self.engine.stats(), self._last_stats
        self._last_stats = now_stats
        now = time.monotonic()
        stats = IterationStats(now, now_stats.num_running, now_stats.num_waiting, now_stats.kv_cache_usage,
                               now_stats.prefix_cache_queries - last.prefix_cache_queries,
                               now_stats.prefix_cache_hits - last.prefix_cache_hits,
                               now_stats.num_preemptions - last.num_preemptions, finished_requests=list(aborted))
        for output in outputs:
            progress = self._progress.get(output.request_id)
            if progress is None:
                continue
            new_tokens = sum(len(o.token_ids) for o in output.outputs)
            if new_tokens > 0:
                if progress.num_tokens == 0:
                    stats.num_prompt_tokens += len(output.prompt_token_ids)
                    stats.time_to_first_tokens.append(now - output.metrics.arrival_time)
                else:
                    stats.inter_token_latencies.append(now - progress.last_token_time)
                stats.num_generation_tokens += new_tokens
                progress.num_tokens += new_tokens
                progress.last_token_time = now
            if output.finished:
                del self._progress[output.request_id]
                # The samples that finished last are in this delta; the first with a reason names it.
                reason = "error" if output.error is not None else next(
                    (o.finish_reason for o in output.outputs if o.finish_reason), "abort")
                stats.finished_requests.append(_finished_stats(output, reason, progress.num_tokens, now))
        for stat_logger in self.stat_loggers:
            try:
                stat_logger.record(stats)
            except Exception:  # noqa: BLE001 - metrics must never stop the engine
                logger.exception("stat logger %r failed", stat_logger)


def _finished_stats(output: RequestOutput, finish_reason: str, num_generation_tokens: int,
                    now: float) -> FinishedRequestStats:
    metrics = output.metrics
    return FinishedRequestStats(finish_reason, now - metrics.arrival_time,
                                (metrics.first_scheduled_time or now) - metrics.arrival_time,
                                len(output.prompt_token_ids), num_generation_tokens)


def _put_all(items: list[tuple[_Stream, RequestOutput | BaseException]]) -> None:
    for stream, output in items:
        stream.queue.put_nowait(output)
