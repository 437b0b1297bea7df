"""Admission control for servers: how many sequences and prompt tokens may be queued at once.

``AsyncEngine.generate`` asks :class:`Admission` before it hands a request to the engine
thread. Over ``--max-num-queued-reqs`` (sequences waiting or running; a request with ``n``
samples counts ``n``) or ``--max-num-queued-tokens`` (prompt tokens of requests that have not
finished their prefill), the request is refused with ``EngineOverloadedError`` and nothing is
queued. The counts live on the frontend's side, so a refusal is immediate even while a long
step runs, and requests on their way to the engine thread count too.
"""

from __future__ import annotations

import math
import threading
import time

from fw.core.config.scheduler import SchedulerConfig
from fw.core.errors import EngineOverloadedError

#: How fast the request-latency average follows new requests (weight of the newest).
_LATENCY_WEIGHT = 0.1


class Admission:
    """The queue's limits and what is admitted now. ``admit`` and the tickets' methods may be
    called from several event loops (threads) at once: the counts change under a lock."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.max_seqs = config.queued_seqs_limit
        self.max_tokens = config.max_num_queued_tokens
        self.max_num_seqs = config.max_num_seqs
        self.num_seqs = 0
        self.num_tokens = 0
        #: Seconds a request takes from admission to its end, a moving average (1 s before any ends).
        self.latency = 1.0
        self._lock = threading.Lock()

    def admit(self, num_seqs: int, num_tokens: int) -> Ticket:
        """Count a request in, or raise ``EngineOverloadedError`` (counting nothing).

        A request is admitted whatever its prompt's size when no prompt is queued, so a prompt
        longer than the token cap is never refused forever.
        """
        with self._lock:
            if self.num_seqs + num_seqs > self.max_seqs:
                raise self._overloaded(f"{self.num_seqs} sequences are queued or running and this request adds "
                                       f"{num_seqs}; the most this server holds is {self.max_seqs} "
                                       "(--max-num-queued-reqs)")
            if self.max_tokens is not None and self.num_tokens and self.num_tokens + num_tokens > self.max_tokens:
                raise self._overloaded(f"{self.num_tokens} prompt tokens wait for their prefill and this request "
                                       f"adds {num_tokens}; the most this server holds is {self.max_tokens} "
                                       "(--max-num-queued-tokens)")
            self.num_seqs += num_seqs
            self.num_tokens += num_tokens
        return Ticket(self, num_seqs, num_tokens, time.monotonic())

    def retry_after(self) -> float:
        """Whole seconds (at least 1) until the queue may have room: the sequences held, served
        ``max_num_seqs`` at a time, each batch taking the recent request latency."""
        return float(max(1, math.ceil(self.latency * self.num_seqs / self.max_num_seqs)))

    def _overloaded(self, reason: str) -> EngineOverloadedError:
        retry_after = self.retry_after()
        return EngineOverloadedError(f"the server is overloaded: {reason}; retry in {retry_after:.0f} s", retry_after)


class Ticket:
    """One admitted request's share of the counts, given back as it progresses."""

    def __init__(self, admission: Admission, num_seqs: int, num_tokens: int, admitted_at: float) -> None:
        self.admission = admission
        self.num_seqs = num_seqs
        self.num_tokens = num_tokens
        self.admitted_at = admitted_at

    def prefill_done(self) -> None:
        """The request's first output (or its error) arrived: its prompt no longer waits. Cheap
        to call for every output: only the first takes the lock."""
        if self.num_tokens:
            with self.admission._lock:
                self.admission.num_tokens -= self.num_tokens
            self.num_tokens = 0

    def release(self, completed: bool) -> None:
        """The request ended; ``completed``: it ran to its end (its latency feeds ``retry_after``)."""
        self.prefill_done()
        admission = self.admission
        with admission._lock:
            admission.num_seqs -= self.num_seqs
            if completed:
                latency = time.monotonic() - self.admitted_at
                admission.latency += _LATENCY_WEIGHT * (latency - admission.latency)
        self.num_seqs = 0
