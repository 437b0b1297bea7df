"""Engine statistics for the server: Prometheus metrics and the periodic stats log line.

Both loggers implement the ``StatLogger`` protocol of :mod:`fw.core.engine.async_engine`:
the engine thread calls ``record(stats)`` after every step, so ``record`` is cheap and
thread-safe. Metric names are vLLM's with the ``fw:`` prefix, so dashboards built for
vLLM need only the prefix changed.

``prometheus_client`` is imported when a ``PrometheusStatLogger`` is built, not when this
module is, so that the stats log line works where it is not installed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fw.core.engine.async_engine import IterationStats

logger = logging.getLogger(__name__)

# vLLM's histogram buckets, so that the same dashboards and alerts fit.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                           60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class PrometheusStatLogger:
    """The engine's metrics in ``registry`` (one registry per app), labelled with ``model_name``."""

    def __init__(self, model_name: str, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["model_name"]

        def metric(kind: Any, name: str, documentation: str, **kwargs: Any) -> Any:
            # Bound to the label once: .labels() looks the child up under a lock on every call.
            return kind(f"fw:{name}", documentation, labelnames=labels, registry=registry,
                        **kwargs).labels(model_name)

        self.num_requests_running = metric(Gauge, "num_requests_running", "Requests running on the engine.")
        self.num_requests_waiting = metric(Gauge, "num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_cache_usage = metric(Gauge, "kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.")
        self.prefix_cache_queries = metric(Counter, "prefix_cache_queries",
                                           "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = metric(Counter, "prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.num_preemptions = metric(Counter, "num_preemptions", "Preemptions of running requests.")
        self.prompt_tokens = metric(Counter, "prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = metric(Counter, "generation_tokens", "Tokens generated.")
        self.time_to_first_token = metric(Histogram, "time_to_first_token_seconds",
                                          "Time from arrival to the first generated token.", buckets=TTFT_BUCKETS)
        self.inter_token_latency = metric(Histogram, "inter_token_latency_seconds",
                                          "Time between two generated tokens.", buckets=ITL_BUCKETS)
        self.e2e_request_latency = metric(Histogram, "e2e_request_latency_seconds",
                                          "Time from arrival to the last token.", buckets=REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = metric(Histogram, "request_queue_time_seconds",
                                         "Time from arrival to the first schedule.", buckets=REQUEST_LATENCY_BUCKETS)
        self.request_success = Counter("fw:request_success", "Finished requests, by finish reason.",
                                       labelnames=["model_name", "finished_reason"], registry=registry)
        self.model_name = model_name

    def record(self, stats: IterationStats) -> None:
        self.num_requests_running.set(stats.num_running)
        self.num_requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        self.prefix_cache_queries.inc(stats.prefix_cache_queries)
        self.prefix_cache_hits.inc(stats.prefix_cache_hits)
        self.num_preemptions.inc(stats.num_preemptions)
        self.prompt_tokens.inc(stats.num_prompt_tokens)
        self.generation_tokens.inc(stats.num_generation_tokens)
        for seconds in stats.time_to_first_tokens:
            self.time_to_first_token.observe(seconds)
        for seconds in stats.inter_token_latencies:
            self.inter_token_latency.observe(seconds)
        for finished in stats.finished_requests:
            self.e2e_request_latency.observe(finished.e2e_latency)
            self.request_queue_time.observe(finished.queue_time)
            self.request_success.labels(self.model_name, finished.finish_reason).inc()


class LoggingStatLogger:
    """Accumulates statistics; ``log()`` writes vLLM's periodic line about the last interval.

    The server calls ``log()`` every ``interval`` seconds. While nothing happens the line goes
    to the debug level, so an idle server does not fill its log.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last_log_time = time.monotonic()
        self._num_prompt_tokens = 0
        self._num_generation_tokens = 0
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._num_running = 0
        self._num_waiting = 0
        self._kv_cache_usage = 0.0
        self._was_idle = True

    def record(self, stats: IterationStats) -> None:
        with self._lock:
            self._num_prompt_tokens += stats.num_prompt_tokens
            self._num_generation_tokens += stats.num_generation_tokens
            self._prefix_queries += stats.prefix_cache_queries
            self._prefix_hits += stats.prefix_cache_hits
            self._num_running = stats.num_running
            self._num_waiting = stats.num_waiting
            self._kv_cache_usage = stats.kv_cache_usage

    def log(self, now: float | None = None) -> str:
        """Log (and return) the line for the time since the last call, and start a new interval."""
        now = time.monotonic() if now is None else now
        with self._lock:
            elapsed = max(now - self._last_log_time, 1e-9)
            prompt, generation = self._num_prompt_tokens, self._num_generation_tokens
            queries, hits = self._prefix_queries, self._prefix_hits
            running, waiting, usage = self._num_running, self._num_waiting, self._kv_cache_usage
            self._num_prompt_tokens = self._num_generation_tokens = 0
            self._prefix_queries = self._prefix_hits = 0
            self._last_log_time = now
        line = (f"Avg prompt throughput: {prompt / elapsed:.1f} tokens/s, "
                f"Avg generation throughput: {generation / elapsed:.1f} tokens/s, "
                f"Running: {running} reqs, Waiting: {waiting} reqs, "
                f"KV cache usage: {usage * 100:.1f}%, "
                f"Prefix cache hit rate: {hits / queries * 100 if queries else 0.0:.1f}%")
        idle = not (prompt or generation or running or waiting)
        # The first idle line after activity still goes out at info: it shows the drop to zero.
        logger.log(logging.DEBUG if idle and self._was_idle else logging.INFO, line)
        self._was_idle = idle
        return line
