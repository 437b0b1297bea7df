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
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, AsyncIterator, Protocol, Sequence

from fw.core.engine.outputs import RequestOutput
from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams
from fw.core.errors import FwError

if TYPE_CHECKING:
    from fw.core.config.engine import EngineConfig
    from fw.core.engine.info import EngineInfo
    from fw.core.engine.llm_engine import LLMEngine
    from fw.core.plugins import Plugins

logger = logging.getLogger(__name__)


class EngineDeadError(FwError):
    """The engine loop stopped (it crashed, or it was shut down); no request can run any more."""


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
    def __init__(self, engine: LLMEngine, stat_loggers: Sequence[StatLogger] = ()) -> None:
        self.engine = engine
        self.stat_loggers = list(stat_loggers)
        self.dead_error: BaseException | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._progress: dict[str, _Progress] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._last_stats = engine.stats()

    @classmethod
    def from_config(cls, config: EngineConfig, plugins: Plugins | None = None,
                    stat_loggers: Sequence[StatLogger] = ()) -> AsyncEngine:
        from fw.core.engine.llm_engine import LLMEngine

        return cls(LLMEngine(config, plugins), stat_loggers)

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

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fw-engine", daemon=True)
                self._thread.start()

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as it progresses, as ``params.output_kind`` asks; the last one is
        finished. Deltas that queued up while the caller was busy come merged into one output.

        CUMULATIVE outputs share their lists, which keep growing (as the engine's own do).
        Leaving early (``break``, ``aclose()``, cancellation) aborts the request.
        """
        self._check_alive()
        self.start()
        kind = params.output_kind
        stream = _Stream(asyncio.get_running_loop())
        self._commands.put(("add", request_id, prompt, params.clone(output_kind=RequestOutputKind.DELTA),
                            priority, stream))
        merged: RequestOutput | None = None
        finished = False
        try:
            while True:
                item = await stream.queue.get()
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
            if not finished:
                self.abort(request_id)

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
        except BaseException as e:  # noqa: BLE001 - any failure of a step ends the engine
            logger.exception("the engine loop failed")
            reason = e
        self.dead_error = reason
        self._fail_all(reason)

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
                _, request_id, prompt, params, priority, stream = command
                try:
                    self.engine.add_request(request_id, prompt, params, priority)
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
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        for output in outputs:
            stream = self._streams.pop(output.request_id, None) if output.finished else self._streams.get(output.request_id)
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream, output))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)  # one wake-up per step, not per request
            except RuntimeError:
                for _, output in items:
                    if not output.finished:
                        self._commands.put(("abort", output.request_id))

    def _fail_all(self, error: BaseException) -> None:
        streams, self._streams = self._streams, {}
        dead = error if isinstance(error, EngineDeadError) else EngineDeadError(f"the engine stopped: {error}")
        for stream in streams.values():
            self._send(stream, dead)

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
                reason = next((o.finish_reason for o in output.outputs if o.finish_reason), "abort")
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


def _put_all(items: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, output in items:
        stream.queue.put_nowait(output)
