"""Stopping the server: a graceful drain on SIGTERM/SIGINT, and an exit when the engine dies.

On the first SIGTERM or SIGINT the server drains, and uvicorn's listener stays open meanwhile
so that clients and load balancers get an answer rather than a refused connection:

1. every new request, ``/health`` included, gets 503 in OpenAI's shape (``Connection: close``);
2. the requests in flight get ``--shutdown-timeout`` seconds to finish (0, vLLM's default,
   skips this);
3. those still running are ended: a stream with an error event and ``data: [DONE]``, any other
   request with a 503 error (their engine requests are aborted);
4. then uvicorn stops (listener, idle connections, the app's lifespan) and ``fw serve`` exits 0.

A second signal skips what is left of step 2. Nothing is cancelled from outside a handler,
so no ``CancelledError`` reaches uvicorn's log.

When the engine dies, the engine fails every request in flight; :meth:`Lifecycle.engine_died`
then drains the server at once and makes it exit 1, so that a supervisor restarts it rather
than leave it up answering 503.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.limits import json_error_response

if TYPE_CHECKING:
    from types import FrameType

logger = logging.getLogger(__name__)

#: Seconds the requests still running get to write their final error once they are told to end.
ABORT_GRACE_SECONDS = 5.0


class Lifecycle:
    """The requests in flight, and whether (and how) the server is stopping. Event-loop side,
    except :meth:`engine_died`, which the engine thread calls."""

    def __init__(self, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.num_in_flight = 0
        #: Set once new requests are refused.
        self.draining = False
        #: Set when the requests still running must end now; handlers wait on it.
        self.aborting = asyncio.Event()
        self.exit_code = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the server runs on (the app's lifespan calls this at start-up)."""
        self._loop = loop

    # ---------------------------------------------------------------- requests in flight

    def request_started(self) -> None:
        self.num_in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.num_in_flight -= 1
        if self.num_in_flight == 0:
            self._idle.set()

    def shutdown_error(self) -> APIError:
        """What a request that the shutdown ended gets."""
        return APIError("the server is shutting down; the request was ended before it finished", 503,
                        "ServiceUnavailableError")

    # ---------------------------------------------------------------- stopping

    @property
    def stopping(self) -> bool:
        return self._drain_task is not None

    @property
    def stopped(self) -> bool:
        return self._drain_task is not None and self._drain_task.done()

    def begin_shutdown(self, reason: str) -> None:
        """Start the drain (event loop); a second call ends the requests still running at once."""
        if self._drain_task is None:
            self.draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(reason))
        elif not self.aborting.is_set():
            logger.info("a second signal: ending the %d requests still running now", self.num_in_flight)
            self.aborting.set()

    def engine_died(self, error: BaseException) -> None:
        """``AsyncEngine``'s ``on_dead``: called on the engine thread once the engine failed every
        request in flight. Stops the server with exit code 1."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._stop_after_engine_death, error)
        except RuntimeError:
            pass  # the loop closed meanwhile: the server is stopping anyway

    def _stop_after_engine_death(self, error: BaseException) -> None:
        logger.error("the engine died (%s: %s); the server stops and exits 1, for its supervisor to restart it",
                     type(error).__name__, error)
        self.exit_code = 1
        self.shutdown_timeout = 0.0
        self.begin_shutdown("the engine died")

    async def _drain(self, reason: str) -> None:
        if self.num_in_flight and self.shutdown_timeout > 0:
            logger.info("%s: %d requests in flight get %g s to finish (--shutdown-timeout); new requests get 503",
                        reason, self.num_in_flight, self.shutdown_timeout)
            await _wait(self._idle, self.shutdown_timeout, self.aborting)
        if self.num_in_flight:
            logger.info("%s: ending the %d requests still running", reason, self.num_in_flight)
        else:
            logger.info("%s: no request in flight", reason)
        self.aborting.set()
        if not await _wait(self._idle, ABORT_GRACE_SECONDS):
            logger.warning("%d requests did not end within %g s of being told to", self.num_in_flight,
                           ABORT_GRACE_SECONDS)


async def _wait(event: asyncio.Event, timeout: float, *or_events: asyncio.Event) -> bool:
    """Wait until ``event`` (or any of ``or_events``) is set or ``timeout`` passes; whether ``event`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (event, *or_events)]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set()


class DrainMiddleware:
    """Counts the requests in flight; once the server drains, answers every new one with 503."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.lifecycle.draining:
            error = APIError("the server is shutting down and takes no new requests", 503, "ServiceUnavailableError")
            return await json_error_response(error, headers={"Connection": "close"})(scope, receive, send)
        self.lifecycle.request_started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.request_finished()


class Server(uvicorn.Server):
    """uvicorn's server with fw's shutdown: a signal starts :class:`Lifecycle`'s drain, and the
    server stops when the drain is over (uvicorn's own handling would close the listener and
    cancel what is still running after its timeout)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._signals: list[int] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only records the signal; on_tick acts on it in the event loop.
        self._signals.append(sig)

    async def on_tick(self, counter: int) -> bool:
        while self._signals:
            name = signal.Signals(self._signals.pop(0)).name
            self.lifecycle.begin_shutdown(f"{name} received")
        if self.lifecycle.stopped:
            self.should_exit = True
        return await super().on_tick(counter)

