"""The OpenAI-compatible HTTP server: routes, errors in OpenAI's shape, API keys, CORS, request ids.

The server owns HTTP and nothing else: it decodes the JSON body, hands it to
:class:`OpenAIServing` and turns what comes back into a response. Every error a client can
see has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, FastAPI's own
404/405/422 included. A client that goes away cancels its handler, which aborts its engine
requests and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import socket
import threading
import uuid
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fw.core.engine.async_engine import EngineDeadError
from fw.entrypoints.openai.errors import APIError, error_body
from fw import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fw.core.config.frontend import FrontendConfig
    from fw.core.engine.async_engine import AsyncEngine
    from fw.entrypoints.openai.serving import OpenAIServing
    from fw.entrypoints.openai.metrics import LoggingStatLogger

logger = logging.getLogger(__name__)

#: Seconds that in-flight requests get to finish after SIGTERM/SIGINT before they are cancelled.
GRACEFUL_SHUTDOWN_SECONDS = 5

Handler = Callable[[Any, str], Awaitable["dict | AsyncIterator[str]"]]


def error_response(message: str, status_code: int, type: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error in OpenAI's shape; ``type`` defaults to the status name ("NotFoundError")."""
    type = type or "".join(HTTPStatus(status_code).phrase.split()) + "Error"
    return JSONResponse(error_body(message, status_code, type), status_code=status_code, headers=headers)


# ---------------------------------------------------------------- middleware (pure ASGI)
# Pure ASGI, not BaseHTTPMiddleware: that one runs the route in a separate task and gets in
# the way of streaming and of noticing disconnects.

def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class RequestIdMiddleware:
    """Gives each HTTP request a fresh id (``request.state.request_id``, unique even when
    clients resend an ``X-Request-Id``) and, when enabled, answers with an ``X-Request-Id``
    header: the client's own if it sent one, else the fresh id."""

    def __init__(self, app: ASGIApp, send_header: bool) -> None:
        self.app = app
        self.send_header = send_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        if not self.send_header:
            return await self.app(scope, receive, send)
        header_value = Headers(scope=scope).get("x-request-id") or request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = header_value
            await send(message)

        await self.app(scope, receive, send_with_id)


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on the ``/v1`` routes, as vLLM: /health, /version and
    /metrics stay open. Keys are compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] == "OPTIONS"
                or not (_route_path(scope) + "/").startswith("/v1/")):
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.expected):
            return await self.app(scope, receive, send)
        message = ("the API key is wrong" if token else "this server needs an API key") + \
            "; send it as 'Authorization: Bearer <key>'"
        response = error_response(message, 401, "AuthenticationError", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


# ---------------------------------------------------------------- responses

class EventStreamResponse(StreamingResponse):
    """Server-sent events from the serving layer's iterator.

    Starlette stops iterating when the client disconnects, but only an iterator suspended
    inside ``__anext__`` sees that cancellation; closing it here as well means the engine
    request is aborted at once, wherever the stream was when the client left.
    """

    def __init__(self, events: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    # Only call after the body was read: from then on receive() returns only on disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; cancel it (aborting its engine requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside: the server is shutting down
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not warn about it
        raise ClientDisconnected()
    return task.result()


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise APIError(f"the request body is not valid JSON: {e}") from None


# ---------------------------------------------------------------- the app

def build_app(engine: AsyncEngine, serving: OpenAIServing, frontend: FrontendConfig,
              served_names: Sequence[str], metrics_registry: CollectorRegistry,
              stat_logger: LoggingStatLogger | None = None) -> FastAPI:
    """The FastAPI app. Its lifespan starts the engine thread, logs ``stat_logger``'s line every
    interval, and shuts the engine down when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        stats_task = asyncio.create_task(_log_stats(stat_logger)) if stat_logger is not None else None
        try:
            yield
        finally:
            if stats_task is not None:
                stats_task.cancel()
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="fw", version=__version__, lifespan=lifespan)
    _add_error_handlers(app)

    async def handle(request: Request, handler: Handler) -> Response:
        request_id = request.state.request_id
        try:
            body = await read_json(request)
            result = await run_until_disconnected(request, handler(body, request_id))
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status_code)
        except ClientDisconnected:
            logger.info("request %s cancelled: the client disconnected", request_id)
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except EngineDeadError as e:
            return error_response(str(e), 503, "ServiceUnavailableError")
        except Exception as e:  # noqa: BLE001 - a bug in one request must not stop the server
            return _internal_error(request, e)
        if isinstance(result, dict):
            return JSONResponse(result)
        return EventStreamResponse(result)

    @app.get("/health")
    async def health() -> Response:
        if engine.is_dead:
            return error_response(f"the engine is not running: {engine.dead_error}", 503, "ServiceUnavailableError")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": __version__})

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            return JSONResponse(serving.models())
        except Exception as e:  # noqa: BLE001
            return _internal_error(request, e)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, serving.completions)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, serving.chat_completions)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return await handle(request, lambda body, _: serving.tokenize(body))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return await handle(request, lambda body, _: serving.detokenize(body))

    @app.get("/")
    async def index() -> JSONResponse:
        endpoints = [f"{method} {route.path}" for route in app.routes if route.path not in ("/", "")
                     and getattr(route, "include_in_schema", False) for method in sorted(route.methods)]
        return JSONResponse({"name": "fw", "version": __version__, "models": list(served_names),
                             "endpoints": endpoints, "docs": "/docs"})

    # The last one added is the outermost. The request id comes first, so that every response
    # carries it; CORS answers preflights before the key is asked for, and its headers reach 401s.
    if frontend.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=frontend.api_key)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(frontend.allowed_origins),
        allow_methods=list(frontend.allowed_methods),
        allow_headers=list(frontend.allowed_headers),
        allow_credentials=frontend.allow_credentials,
    )
    app.add_middleware(RequestIdMiddleware, send_header=frontend.enable_request_id_headers)
    return app


def _internal_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("internal error in %s %s (request %s)", request.method, request.url.path,
                     getattr(request.state, "request_id", "?"))
    return error_response(f"internal server error: {type(error).__name__}: {error}", 500, "InternalServerError")


def _add_error_handlers(app: FastAPI) -> None:
    """FastAPI's own errors (unknown path, wrong method, validation) in OpenAI's shape."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            message = f"{request.method} {request.url.path} is not an endpoint of this server; GET / lists them"
        elif status == 405:
            message = f"{request.url.path} does not accept {request.method}"
        else:
            message = str(exc.detail)
        return error_response(message, status, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> Response:
        return error_response(str(exc), 400, "BadRequestError")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


async def _log_stats(stat_logger: LoggingStatLogger) -> None:
    while True:
        await asyncio.sleep(stat_logger.interval)
        try:
            stat_logger.log()
        except Exception:  # noqa: BLE001 - the stats line must never stop the server
            logger.exception("the stats log failed")


# ---------------------------------------------------------------- running it

def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` now, so that a busy port fails before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: FastAPI, frontend: FrontendConfig, sock: socket.socket) -> Any:
    """uvicorn's settings for serving ``app`` on ``sock``: log level, root path, TLS, shutdown."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Config(
        app, host=host, port=port, log_level=frontend.uvicorn_log_level, root_path=frontend.root_path or "",
        ssl_keyfile=frontend.ssl_keyfile, ssl_certfile=frontend.ssl_certfile,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def run_server(app: FastAPI, frontend: FrontendConfig, sock: socket.socket) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGINT or SIGTERM, then shut down gracefully.

    In-flight requests get :data:`GRACEFUL_SHUTDOWN_SECONDS` to finish and are cancelled (their
    engine requests aborted) after that; the app's lifespan then stops the engine. Returns
    normally after either signal, so ``fw serve`` exits 0.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, frontend, sock))
    # uvicorn restores the previous handlers after its graceful shutdown and raises the signal
    # again; these no-op handlers take it, instead of SIGTERM killing the process (exit -15)
    # or SIGINT raising KeyboardInterrupt (exit 130).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if in_main_thread else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_signal(signum: int, frame: Any) -> None:
    logger.debug("signal %d after the graceful shutdown", signum)


if __name__ == "__main__":
    # `python -m fw.entrypoints.openai.api_server --model M [serve options]`, as tutorials start
    # vLLM with `python -m vllm.entrypoints.openai.api_server`: the same as `fw serve`.
    import sys

    from fw.entrypoints.cli import main

    raise SystemExit(main(["serve", *sys.argv[1:]]))
