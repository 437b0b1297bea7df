"""Responses: running a handler until its client leaves or the server ends it, JSON bodies
rendered off the event loop when large, and server-sent-event streams.

Both ways a request can end early are handled here, inside the request's own task: the client
disconnects (its work is cancelled, which aborts its engine requests and frees their KV blocks),
or the server's shutdown ends it (``aborting``): a response gets a 503 in OpenAI's shape, a
stream an error event and ``data: [DONE]``. Nothing is cancelled from outside, so nothing
reaches uvicorn as an error.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Awaitable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.limits import ClientDisconnected

#: Top-level lists longer than this make a response "large": rendered in a worker thread, in slices.
LARGE_LIST = 4096

SSE_DONE = b"data: [DONE]\n\n"


class ShutdownAbort(Exception):
    """The server's shutdown ended the request before it finished."""


async def _wait_for_disconnect(request: Request) -> None:
    # Only call after the body was read: from then on receive() returns only on disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnected(request: Request, work: Awaitable[Any], aborting: asyncio.Event) -> Any:
    """Await ``work``; cancel it (aborting its engine requests) if the client disconnects first
    (``ClientDisconnected``) or the server's shutdown sets ``aborting`` (``ShutdownAbort``)."""
    task = asyncio.ensure_future(work)
    watchers = [asyncio.ensure_future(_wait_for_disconnect(request)), asyncio.ensure_future(aborting.wait())]
    try:
        await asyncio.wait((task, *watchers), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside (a forced exit)
        task.cancel()
        raise
    finally:
        for watcher in watchers:
            watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not warn about it
        raise ShutdownAbort() if aborting.is_set() else ClientDisconnected()
    return task.result()


# ---------------------------------------------------------------- JSON

async def json_response(content: dict[str, Any], executor: Executor | None = None) -> Response:
    """``content`` as JSON. A large body (``/tokenize`` of megabytes: millions of ids) renders in
    ``executor``, slice by slice, so that no single call holds the GIL for long."""
    if any(isinstance(value, list) and len(value) > LARGE_LIST for value in content.values()):
        body = await asyncio.get_running_loop().run_in_executor(executor, render_large_json, content)
    else:
        body = _dumps(content).encode("utf-8")
    return Response(body, media_type="application/json")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def render_large_json(content: dict[str, Any]) -> bytes:
    """What ``json.dumps(content)`` gives (compact), with long top-level lists dumped in slices."""
    parts = []
    for key, value in content.items():
        if isinstance(value, list) and len(value) > LARGE_LIST:
            slices = (_dumps(value[i:i + LARGE_LIST])[1:-1] for i in range(0, len(value), LARGE_LIST))
            parts.append(f"{_dumps(key)}:[{','.join(slices)}]")
        else:
            parts.append(f"{_dumps(key)}:{_dumps(value)}")
    return ("{" + ",".join(parts) + "}").encode("utf-8")


# ---------------------------------------------------------------- server-sent events

class EventStreamResponse(Response):
    """Server-sent events from the serving layer's iterator of ``data: ...`` strings.

    One watcher per stream waits for the client to disconnect or for the shutdown's
    ``aborting``, and then cancels the streaming task where it waits (for the engine, mostly,
    or for the socket to drain; a chunk is written whole or not at all). The iterator is closed
    either way, which aborts the engine requests at once; after a shutdown the stream still
    ends well-formed: an error event, then ``data: [DONE]``.
    """

    def __init__(self, events: AsyncIterator[str], aborting: asyncio.Event, abort_error: APIError,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(media_type="text/event-stream")  # a Response, for FastAPI; __call__ streams
        self.events = events
        self.aborting = aborting
        self.abort_error = abort_error
        self.extra = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.extra.items()]
        task = asyncio.current_task()
        assert task is not None
        state = {"streaming": True, "started": False, "stop": ""}

        async def watch() -> None:
            aborted = asyncio.ensure_future(self.aborting.wait())
            disconnected = asyncio.ensure_future(_receive_disconnect(receive))
            try:
                done, _ = await asyncio.wait((aborted, disconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                aborted.cancel()
                disconnected.cancel()
            if state["streaming"]:  # the task is suspended inside the try below: the error lands there
                state["stop"] = "abort" if aborted in done else "disconnect"
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            state["started"] = True
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode("utf-8"), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["stop"]:
                raise  # not ours: a forced exit
            _uncancel(task)
            if state["stop"] == "abort":
                await self._end_with_error(send, state["started"], headers)
        finally:
            state["streaming"] = False
            watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]

    async def _end_with_error(self, send: Send, started: bool, headers: list[tuple[bytes, bytes]]) -> None:
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        error = json.dumps(self.abort_error.body()).encode()
        await send({"type": "http.response.body", "body": b"data: " + error + b"\n\n" + SSE_DONE, "more_body": False})


async def _receive_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _uncancel(task: asyncio.Task[Any]) -> None:
    """Undo our own cancellation's count (Python 3.11+), so that later timeouts work as usual."""
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
