"""What a request may send: its headers, its body's size, and the JSON in it.

- :class:`RequestLimitsMiddleware` refuses, before any route runs, a request whose head is
  larger than ``--h11-max-incomplete-event-size`` or has more than ``--h11-max-header-count``
  headers (431), or whose ``Content-Length`` is over ``--max-request-body-bytes`` (413, nothing
  read). (h11 itself refuses a head over the size only while it is incomplete: one that
  arrives in a single read, up to asyncio's 256 KiB, gets through to here.)
- :func:`read_body` reads a body, counting as it goes: a chunked body, or one whose
  ``Content-Length`` lies, is refused (413) once it passes the limit, so no more than the
  limit is ever held.
- :func:`decode_json` parses it in OpenAI's terms: not JSON, nested too deeply, or a string
  holding a lone UTF-16 surrogate (``"\\ud800"``, valid JSON but no text a tokenizer or a
  UTF-8 response can hold) is a 400; the last two name the field (``param``). Large bodies are
  parsed in a worker thread.

Each refusal is an ``APIError`` (or, in the middleware, a response) in OpenAI's JSON shape.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import Executor
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fw.core.config.human import format_bytes
from fw.entrypoints.openai.errors import APIError

#: The deepest nesting of arrays and objects a request may have: OpenAI's requests need about
#: six levels (tools' JSON schemas a few more); deeper ones only exhaust recursion somewhere.
MAX_JSON_DEPTH = 64

#: Bodies up to this size are parsed on the event loop (well under a millisecond).
INLINE_JSON_BYTES = 64 * 2**10

# JSON escapes of UTF-16 surrogates: where a lone one can come from (raw surrogate bytes are not UTF-8).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Lists made only of these need no walk (token-id prompts of millions of ints).
_FLAT_TYPES = {int, float, bool, type(None)}
_WALK_TYPES = (dict, list, str)


class BodyTooLargeError(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {format_bytes(limit)} (--max-request-body-bytes)",
                         413, "RequestEntityTooLargeError")


class RequestLimitsMiddleware:
    """Header count and declared body size, checked before routing (pure ASGI)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_head_bytes: int, max_header_count: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_header_count = max_header_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = self.check(scope)
        if error is None:
            return await self.app(scope, receive, send)
        # The body is not read: the connection closes rather than be reused with it in the way.
        response = JSONResponse(error.body(), status_code=error.status_code, headers={"Connection": "close"})
        await response(scope, receive, send)

    def check(self, scope: Scope) -> APIError | None:
        headers = scope["headers"]
        if len(headers) > self.max_header_count:
            return APIError(f"the request has {len(headers)} headers, more than {self.max_header_count} "
                            "(--h11-max-header-count)", 431, "RequestHeaderFieldsTooLargeError")
        # The head as sent: request line, then "name: value\r\n" per header.
        head_bytes = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + 16 + \
            sum(len(name) + len(value) + 4 for name, value in headers)
        if head_bytes > self.max_head_bytes:
            return APIError(f"the request's head (request line and headers) is larger than {self.max_head_bytes} "
                            "bytes (--h11-max-incomplete-event-size)", 431, "RequestHeaderFieldsTooLargeError")
        declared = Headers(scope=scope).get("content-length")
        if declared is None:
            return None
        if not declared.isdigit():  # h11 checks it too; this keeps int() from huge or odd values
            return APIError(f"the Content-Length header {declared[:40]!r} is not a number of bytes")
        if len(declared) > 20 or int(declared) > self.max_body_bytes:
            return BodyTooLargeError(self.max_body_bytes)
        return None


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; ``BodyTooLargeError`` once more than ``limit`` bytes arrived."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLargeError(limit)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    return bytes(body)


async def decode_json(body: bytes, executor: Executor | None = None) -> Any:
    """The body's JSON (see :func:`parse_json`); a large body is parsed in ``executor``."""
    if len(body) <= INLINE_JSON_BYTES:
        return parse_json(body)
    return await asyncio.get_running_loop().run_in_executor(executor, parse_json, body)


def parse_json(body: bytes) -> Any:
    """Parse a request body; ``APIError`` (400) for what is not JSON or cannot be processed."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise APIError(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise APIError(f"the request body is not valid JSON: {e}") from None
    check_json(value, check_text=_SURROGATE_ESCAPE.search(body) is not None)
    return value


def check_json(value: Any, check_text: bool = True) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH` and (``check_text``) strings or keys with
    a lone surrogate; the error names the field as ``messages[0].content``. Iterative, so that
    the check itself never runs out of stack."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if check_text and not item.isascii() and _SURROGATE.search(item):
                raise _surrogate_error(path)
            continue
        if depth >= MAX_JSON_DEPTH:
            raise APIError(f"the request nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
                           param=path or None)
        if isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else str(key)
                if check_text and not key.isascii() and _SURROGATE.search(key):
                    raise _surrogate_error(child_path)
                if isinstance(child, _WALK_TYPES):
                    stack.append((child, child_path, depth + 1))
        elif isinstance(item, list):
            if len(item) > 64 and set(map(type, item)) <= _FLAT_TYPES:
                continue
            for index in range(len(item) - 1, -1, -1):  # pushed backwards: the first problem is found first
                if isinstance(item[index], _WALK_TYPES):
                    stack.append((item[index], f"{path}[{index}]", depth + 1))


def _surrogate_error(path: str) -> APIError:
    shown = _printable(path)
    return APIError(f"'{shown}' contains a lone UTF-16 surrogate (such as \\ud800), which is not text",
                    param=shown or None)


def _printable(text: str) -> str:
    """``text`` with surrogates escaped, so that it can go into a UTF-8 response."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``error`` as a response; ASCII-only JSON, so that no message can fail to encode."""
    return _AsciiJSONResponse(error.body(), status_code=error.status_code, headers=headers)


class _AsciiJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")

