"""The HTTP connection: uvicorn's h11 protocol with read deadlines and errors in OpenAI's shape.

uvicorn bounds an idle keep-alive connection (``--timeout-keep-alive``) and the size of a
request head (``--h11-max-incomplete-event-size``), but not how long a client may take to send
its head or its body: a client that connects and sends nothing, or one header byte every 2 s,
holds its connection (and a file descriptor) forever. :class:`FwH11Protocol` arms one deadline
whenever the server waits for the client:

- ``--header-read-timeout`` from the connection (or from the next request's first byte) until
  the request's head is complete;
- ``--body-read-timeout`` from there until its body is complete.

While the app works on a complete request, no deadline runs; between requests uvicorn's
keep-alive timer does. A client that misses its deadline gets a 408 (when no response started)
and is disconnected. What h11 refuses before a request reaches the app (a malformed head, one
over the size limit) is answered in OpenAI's JSON shape as well, not uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fw.entrypoints.openai.errors import error_body

if TYPE_CHECKING:
    from fw.core.config.frontend import FrontendConfig

logger = logging.getLogger(__name__)

Waiting = Literal["head", "body"]


def raw_error_response(status: int, message: str, type: str) -> bytes:
    """A complete HTTP/1.1 error response in OpenAI's shape that closes the connection.

    Written straight to the transport: it answers a request h11 has not parsed (or not
    finished), and the connection closes right after it.
    """
    body = json.dumps(error_body(message, status, type)).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class FwH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read deadline for heads and bodies (see the module)."""

    #: Set by :func:`protocol_class`.
    header_read_timeout: float = 10.0
    body_read_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting: Waiting | None = None
        super().connection_made(transport)
        self._wait_for("head")  # a client that connects and sends nothing

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._wait_for(None)
        super().connection_lost(exc)

    def _update_deadline(self) -> None:
        if self.transport.is_closing():
            self._wait_for(None)
        elif self.conn.their_state is h11.IDLE:
            # Between requests uvicorn's keep-alive timer runs until a byte arrives; from the
            # first byte of a head on, the head has its deadline.
            self._wait_for("head" if self.conn.trailing_data[0] else None)
        elif self.conn.their_state is h11.SEND_BODY:
            self._wait_for("body")
        else:  # the request is complete (the app's turn), or the connection switched protocols
            self._wait_for(None)

    def _wait_for(self, waiting: Waiting | None) -> None:
        """Arm the deadline for what the client must send next; keep it while that does not change."""
        if waiting == self._waiting:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting = waiting
        if waiting is not None:
            timeout = self.header_read_timeout if waiting == "head" else self.body_read_timeout
            self._deadline = self.loop.call_later(timeout, self._timed_out, waiting, timeout)

    def _timed_out(self, waiting: Waiting, timeout: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        option = "header-read-timeout" if waiting == "head" else "body-read-timeout"
        logger.info("closing the connection from %s: its request %s took longer than %g s (--%s)",
                    _address(self.client), "head" if waiting == "head" else "body", timeout, option)
        # A head is awaited only between responses; a body may still be coming after its response.
        if waiting == "head" or (self.cycle is not None and not self.cycle.response_started):
            message = (f"the request's {'headers' if waiting == 'head' else 'body'} did not arrive within "
                       f"{timeout:g} s (--{option})")
            self.transport.write(raw_error_response(408, message, "RequestTimeoutError"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request's head: answer in OpenAI's shape, 431 when the head is too big."""
        limit = self.config.h11_max_incomplete_event_size
        if limit is not None and len(self.conn.trailing_data[0]) > limit:
            response = raw_error_response(431, f"the request's head (request line and headers) is larger than "
                                               f"{limit} bytes (--h11-max-incomplete-event-size)",
                                          "RequestHeaderFieldsTooLargeError")
        else:
            response = raw_error_response(400, "invalid HTTP request", "BadRequestError")
        self.transport.write(response)
        self.transport.close()


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def protocol_class(frontend: FrontendConfig) -> type[FwH11Protocol]:
    """The protocol class uvicorn should use, with ``frontend``'s timeouts."""
    return type("FwH11Protocol", (FwH11Protocol,), {
        "header_read_timeout": frontend.header_read_timeout,
        "body_read_timeout": frontend.body_read_timeout,
    })
