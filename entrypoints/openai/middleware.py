"""The server's pure-ASGI middleware: request ids and the API key.

Pure ASGI, not ``BaseHTTPMiddleware``: that one runs the route in a separate task and gets in
the way of streaming and of noticing disconnects. (The limits on headers and bodies are in
limits.py, the drain in shutdown.py.)
"""

from __future__ import annotations

import hmac
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.limits import json_error_response

#: What stays open when the server needs an API key, as in vLLM: probes, metrics and the
#: version, plus the index and the API docs, which list routes and nothing else. Every other
#: route (``/v1/*``, ``/tokenize``, ``/detokenize``, and any added later) needs the key.
OPEN_PATHS = frozenset({"/health", "/metrics", "/version", "/", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json"})


def route_path(scope: Scope) -> str:
    """The path the routes see: without the ``--root-path`` prefix a proxy may leave on it."""
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
    """``Authorization: Bearer <key>`` on every route but :data:`OPEN_PATHS`; CORS preflights
    pass (they carry no credentials). Keys are compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or route_path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.expected):
            return await self.app(scope, receive, send)
        message = ("the API key is wrong" if token else "this server needs an API key") + \
            "; send it as 'Authorization: Bearer <key>'"
        error = APIError(message, 401, "AuthenticationError")
        await json_error_response(error, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
