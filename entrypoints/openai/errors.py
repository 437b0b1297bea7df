"""Errors a request can end in, in OpenAI's (and vLLM's) JSON shape.

``APIError`` is what request handling raises for anything the client got wrong; the
server turns it into an HTTP response with ``status_code`` and ``body()``. Anything else
that escapes a handler is a real internal error (HTTP 500).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def error_body(message: str, status_code: int, type: str, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``: the body of every error response."""
    return {"error": {"message": message, "type": type, "param": param, "code": status_code}}


class APIError(Exception):
    """A request the server refuses: 400 (``BadRequestError``) unless told otherwise."""

    def __init__(self, message: str, status_code: int = 400, type: str = "BadRequestError",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status_code, self.type, self.param)


class NotFoundError(APIError):
    """404: the request names something the server does not have (a model)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, status_code=404, type="NotFoundError", param=param)


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
    if first["type"] == "json_invalid" or param is None:
        return APIError(f"invalid request: {reason}", param=param)
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or first["type"].startswith("value_error") else f" (got {got!r})"
    return APIError(f"invalid value for '{param}': {reason}{shown}", param=param)
