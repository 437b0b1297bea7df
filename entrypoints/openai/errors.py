"""Errors a request can end in, in OpenAI's (and vLLM's) JSON shape.

``APIError`` is what request handling raises for anything the client got wrong; the
server turns it into an HTTP response with ``status_code`` and ``body()``. Anything else
that escapes a handler is a real internal error (HTTP 500).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fw.core.errors import EngineDeadError, EngineOverloadedError, RequestFailedError

if TYPE_CHECKING:
    from fw.entrypoints.openai.protocol import SamplingRequest


def error_body(message: str, status_code: int, type: str, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``: the body of every error response."""
    return {"error": {"message": message, "type": type, "param": param, "code": status_code}}


class APIError(Exception):
    """A request the server refuses: 400 (``BadRequestError``) unless told otherwise; ``headers``
    go on the response (``Retry-After``)."""

    def __init__(self, message: str, status_code: int = 400, type: str = "BadRequestError",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status_code, self.type, self.param)


class NotFoundError(APIError):
    """404: the request names something the server does not have (a model)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, status_code=404, type="NotFoundError", param=param)


def from_engine_error(error: BaseException) -> APIError | None:
    """What a client sees when the engine failed its request, or None for any other exception.

    Overloaded: 503 with ``Retry-After`` (whole seconds, at least 1), nothing was queued. Failed
    in a step: 500 with the engine's message (the engine served the others and logged the
    traceback). Dead: 503 (the server is about to exit for its supervisor to restart it).
    """
    if isinstance(error, EngineOverloadedError):
        retry_after = max(1, math.ceil(error.retry_after)) if math.isfinite(error.retry_after) else 1
        return APIError(str(error), 503, "ServiceUnavailableError", headers={"Retry-After": str(retry_after)})
    if isinstance(error, RequestFailedError):
        return APIError(str(error), 500, "InternalServerError")
    if isinstance(error, EngineDeadError):
        return APIError(str(error), 503, "ServiceUnavailableError")
    return None


def refused(request: SamplingRequest, error: ValueError) -> APIError:
    """The 400 for a request that SamplingParams or the engine refused, naming the field the client sent.

    Their messages start with their name for the field (``logprobs is 21, ...``); where the
    request spells it differently (chat's ``top_logprobs``) the message takes the request's name.
    """
    param = getattr(error, "param", None)
    field = request.request_field(param)
    message = str(error)
    if param is not None and field is not None and field != param and message.startswith(f"{param} "):
        message = field + message[len(param):]
    return APIError(message, param=field)


# Pydantic names the member of a union it tried ("str", "list[int]", "function-after[...]")
# inside an error's location; those are not part of the field path the client wrote.
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal", "typed-dict"}


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS and "[" not in part:
            path += f".{part}" if path else part
    return path


def from_validation_error(error: ValidationError) -> APIError:
    """One readable 400 for a pydantic error: the first problem, naming the field as ``param``."""
    first = error.errors(include_url=False)[0]
    param = _field_path(first["loc"]) or None
    # Our own validators raise ValueError; pydantic prefixes their message with "Value error, ".
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        return APIError(f"the request is missing the required field '{param}'", param=param)
    if first["type"] == "extra_forbidden":
        return APIError(f"unknown field '{param}': this server does not implement it, so it refuses it rather "
                        "than ignore it", param=param)
    if first["type"] == "json_invalid" or param is None:
        return APIError(f"invalid request: {reason}", param=param)
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or first["type"].startswith("value_error") else f" (got {got!r})"
    return APIError(f"invalid value for '{param}': {reason}{shown}", param=param)
