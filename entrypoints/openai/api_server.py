"""The OpenAI-compatible HTTP server: routes, errors in OpenAI's shape, API keys, CORS, request ids,
limits and a graceful shutdown.

The server owns HTTP and nothing else: it reads the body (under ``--max-request-body-bytes``),
decodes the JSON, hands it to :class:`OpenAIServing` and turns what comes back into a response.
Every error a client can see has OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``: FastAPI's own 404/405, a failure before routing (a malformed or oversized head,
a timeout: connection.py), an unexpected exception (a JSON 500, never plain text). A client
that goes away cancels its handler, which aborts its engine requests and frees their KV blocks.

Where the pieces are: connection.py (read deadlines, errors before a request reaches the app),
limits.py (headers, body, JSON), middleware.py (request ids, the API key), responses.py (JSON,
event streams, disconnects), shutdown.py (the drain on SIGTERM/SIGINT, the engine's death).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fw import __version__
from fw.entrypoints.openai.errors import APIError, from_engine_error
from fw.entrypoints.openai.limits import (
    BodyTooLargeError,
    ClientDisconnected,
    RequestLimitsMiddleware,
    decode_json,
    json_error_response,
    read_body,
)
from fw.entrypoints.openai.middleware import ApiKeyMiddleware, RequestIdMiddleware
from fw.entrypoints.openai.responses import EventStreamResponse, ShutdownAbort, json_response, run_until_disconnected
from fw.entrypoints.openai.shutdown import DrainMiddleware, Lifecycle

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fw.core.config.frontend import FrontendConfig
    from fw.core.engine.async_engine import AsyncEngine
    from fw.entrypoints.openai.metrics import LoggingStatLogger
    from fw.entrypoints.openai.serving import OpenAIServing

logger = logging.getLogger(__name__)

#: After the drain, seconds uvicorn waits for connections to close before it cancels what is left.
UVICORN_GRACE_SECONDS = 5

Handler = Callable[[Any, str], Awaitable["dict | AsyncIterator[str]"]]


def error_response(message: str, status_code: int, type: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """A JSON error in OpenAI's shape; ``type`` defaults to the status name ("NotFoundError")."""
    from http import HTTPStatus

    type = type or "".join(HTTPStatus(status_code).phrase.split()) + "Error"
    return json_error_response(APIError(message, status_code, type), headers=headers)


# ---------------------------------------------------------------- the app

def build_app(engine: AsyncEngine, serving: OpenAIServing, frontend: FrontendConfig,
              served_names: Sequence[str], metrics_registry: CollectorRegistry,
              stat_logger: LoggingStatLogger | None = None, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The FastAPI app. Its lifespan starts the engine thread (and what serves beside it), logs
    ``stat_logger``'s line every interval, and shuts them down when the server stops.

    ``lifecycle`` tracks the requests in flight for the shutdown (``app.state.lifecycle``;
    ``fw serve`` makes it first, to hand the engine its ``engine_died``).
    """
    lifecycle = lifecycle or Lifecycle(frontend.shutdown_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle.attach(asyncio.get_running_loop())
        engine.start()
        _call(serving, "open")
        stats_task = asyncio.create_task(_log_stats(stat_logger)) if stat_logger is not None else None
        try:
            yield
        finally:
            if stats_task is not None:
                stats_task.cancel()
            _call(serving, "close")
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="fw", version=__version__, lifespan=lifespan)
    app.state.lifecycle = lifecycle
    _add_error_handlers(app)
    executor = getattr(serving, "executor", None)

    async def handle(request: Request, handler: Handler) -> Response:
        request_id = request.state.request_id
        try:
            body = await read_body(request, frontend.max_request_body_bytes)
            value = await decode_json(body, executor)
            result = await run_until_disconnected(request, handler(value, request_id), lifecycle.aborting)
        except BodyTooLargeError as e:  # the rest of the body is unread: the connection cannot be reused
            return json_error_response(e, headers={"Connection": "close"})
        except APIError as e:
            return json_error_response(e, headers=e.headers)
        except ClientDisconnected:
            logger.info("request %s cancelled: the client disconnected", request_id)
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except ShutdownAbort:
            return json_error_response(lifecycle.shutdown_error())
        except Exception as e:  # noqa: BLE001 - a bug in one request must not stop the server
            error = from_engine_error(e)
            if error is None:
                return _internal_error(request, e)
            return json_error_response(error, headers=error.headers)
        if isinstance(result, dict):
            return await json_response(result, executor)
        return EventStreamResponse(result, lifecycle.aborting, lifecycle.shutdown_error())

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
    # carries it; CORS answers preflights before the key is asked for, and its headers reach
    # 401s, 413s and the drain's 503s. The drain counts every request that gets past it.
    if frontend.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=frontend.api_key)
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=frontend.max_request_body_bytes,
                       max_head_bytes=frontend.h11_max_incomplete_event_size,
                       max_header_count=frontend.h11_max_header_count)
    app.add_middleware(DrainMiddleware, lifecycle=lifecycle)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(frontend.allowed_origins),
        allow_methods=list(frontend.allowed_methods),
        allow_headers=list(frontend.allowed_headers),
        allow_credentials=frontend.allow_credentials,
    )
    app.add_middleware(RequestIdMiddleware, send_header=frontend.enable_request_id_headers)
    return app


def _call(serving: Any, method: str) -> None:
    # The serving layer's open()/close(), where it has them (tests pass stand-ins without).
    function = getattr(serving, method, None)
    if function is not None:
        function()


def _internal_error(request: Request, error: Exception) -> Response:
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

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Starlette's last resort (uvicorn logs the traceback): JSON, not its plain-text 500.
        return error_response(f"internal server error: {type(exc).__name__}", 500, "InternalServerError")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


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
    """uvicorn's settings for serving ``app`` on ``sock``: log level, root path, TLS, the HTTP
    limits (fw's h11 protocol with read deadlines, head size, keep-alive)."""
    import uvicorn

    from fw.entrypoints.openai.connection import protocol_class

    host, port = sock.getsockname()[:2]
    return uvicorn.Config(
        app, host=host, port=port, log_level=frontend.uvicorn_log_level, root_path=frontend.root_path or "",
        ssl_keyfile=frontend.ssl_keyfile, ssl_certfile=frontend.ssl_certfile,
        http=protocol_class(frontend), h11_max_incomplete_event_size=frontend.h11_max_incomplete_event_size,
        timeout_keep_alive=frontend.timeout_keep_alive,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=UVICORN_GRACE_SECONDS,
    )


def run_server(app: FastAPI, frontend: FrontendConfig, sock: socket.socket) -> int:
    """Serve ``app`` on the bound ``sock`` until SIGINT or SIGTERM (or the engine's death) drains
    and stops it (shutdown.py); returns the exit code: 0, or 1 when the engine died."""
    from fw.entrypoints.openai.shutdown import Server

    lifecycle: Lifecycle = app.state.lifecycle
    Server(uvicorn_config(app, frontend, sock), lifecycle).run(sockets=[sock])
    return lifecycle.exit_code


if __name__ == "__main__":
    # `python -m fw.entrypoints.openai.api_server --model M [serve options]`, as tutorials start
    # vLLM with `python -m vllm.entrypoints.openai.api_server`: the same as `fw serve`.
    import sys

    from fw.entrypoints.cli import main

    raise SystemExit(main(["serve", *sys.argv[1:]]))
