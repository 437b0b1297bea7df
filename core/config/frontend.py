"""FrontendConfig: the OpenAI-compatible HTTP server.

The limits a hostile-but-ordinary client meets (body size, read timeouts, head size, chat
template budgets, the shutdown grace) are here too; README.md's "Security and limits" lists
them with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fw.core.config.base import ConfigBase, ConfigError, option

#: --max-request-body-bytes' default: a 1M-token prompt fits as text (~4 MB) or as token ids
#: (~7 MB of JSON), while a request holds a bounded amount of memory (a few copies of its body).
DEFAULT_MAX_REQUEST_BODY_BYTES = 8 * 2**20


@dataclass(frozen=True)
class FrontendConfig(ConfigBase):
    """The OpenAI-compatible HTTP server: address, TLS, CORS, authentication, chat and tool calling."""

    host: str | None = option(None, help="Address to listen on. Defaults to every interface.")
    port: int = option(8000, help="Port to listen on.")
    uvicorn_log_level: Literal["debug", "info", "warning", "error", "critical", "trace"] = option(
        "info", help="Log level of the HTTP server (uvicorn)."
    )
    root_path: str | None = option(
        None, help="URL prefix the server is mounted under, when it sits behind a path-based proxy."
    )
    ssl_keyfile: str | None = option(None, help="TLS private key file; serve HTTPS with --ssl-certfile.")
    ssl_certfile: str | None = option(None, help="TLS certificate file; serve HTTPS with --ssl-keyfile.")
    allowed_origins: tuple[str, ...] = option(("*",), help="CORS: origins allowed to call the API.")
    allowed_methods: tuple[str, ...] = option(("*",), help="CORS: HTTP methods allowed.")
    allowed_headers: tuple[str, ...] = option(("*",), help="CORS: HTTP headers allowed.")
    allow_credentials: bool = option(False, help="CORS: allow credentials (cookies, authorization headers).")
    api_key: str | None = option(
        None, help="Require this key in each request's 'Authorization: Bearer <key>' header. Defaults to $FW_API_KEY."
    )
    chat_template: str | None = option(
        None, help="Chat template: a Jinja file, or the template itself on one line. Defaults to the tokenizer's."
    )
    chat_template_content_format: Literal["auto", "string", "openai"] = option(
        "auto",
        help="How message content reaches the chat template: 'string' as one text, 'openai' as a "
        "list of parts like [{'type': 'text', 'text': ...}], 'auto' detects it from the template.",
    )
    trust_request_chat_template: bool = option(
        False,
        help="Accept a chat_template sent in a request (a Jinja template from the client). It renders in a "
        "separate process under --request-chat-template-timeout and --request-chat-template-max-bytes.",
    )
    request_chat_template_timeout: float = option(
        2.0,
        help="Seconds a chat template sent in a request may take to render; a slower one is stopped and the "
        "request gets a 400. The model's own template and --chat-template are trusted and not limited.",
    )
    request_chat_template_max_bytes: int = option(
        DEFAULT_MAX_REQUEST_BODY_BYTES,
        unit="bytes",
        help="The largest prompt (UTF-8 bytes) a chat template sent in a request may render; the renderer "
        "process may use this much memory 16 times over, plus 256 MiB. More is a 400.",
    )
    max_request_body_bytes: int = option(
        DEFAULT_MAX_REQUEST_BODY_BYTES,
        unit="bytes",
        help="The largest request body (accepts 8MiB, 512KiB); a larger one is refused with 413 as soon as "
        "its Content-Length or the bytes read so far exceed it, never buffered whole.",
    )
    header_read_timeout: float = option(
        10.0,
        help="Seconds a client has to send a request's complete head (request line and headers), from "
        "connecting or from the request's first byte; a slower one gets 408 and is disconnected.",
    )
    body_read_timeout: float = option(
        60.0,
        help="Seconds a client has to send a request's whole body once its head arrived; a slower one gets "
        "408 and is disconnected.",
    )
    timeout_keep_alive: float = option(
        5.0, help="Seconds an idle keep-alive connection waits for its next request before it is closed."
    )
    h11_max_incomplete_event_size: int = option(
        64 * 2**10,
        unit="bytes",
        help="The largest request head (request line and headers) in bytes; a larger one gets 431. "
        "(vLLM's default is 4 MiB; no OpenAI request needs more than a few KiB.)",
    )
    h11_max_header_count: int = option(256, help="The most headers a request may have; more get 431.")
    shutdown_timeout: float = option(
        0.0,
        help="On SIGTERM or SIGINT, seconds the requests in flight get to finish while new ones get 503; "
        "those still running then end with an error (streams with an error event and [DONE]). 0, as "
        "vLLM's default, ends them at once. A second signal exits at once.",
    )
    response_role: str = option(
        "assistant", help="The role of generated messages when the request sets add_generation_prompt."
    )
    enable_request_id_headers: bool = option(False, help="Return each request's id in an X-Request-Id header.")
    disable_log_requests: bool = option(False, help="Do not log each request.")
    max_log_len: int | None = option(
        None, help="The most characters or token ids of a prompt shown in request logs. Defaults to all."
    )
    enable_auto_tool_choice: bool = option(
        False, help="Let the model decide when to call tools (tool_choice 'auto'); needs --tool-call-parser."
    )
    tool_call_parser: str | None = option(
        None,
        plugin_kind="tool_parsers",
        help="Parser that turns the model's output into OpenAI tool calls; pick the one for the model's format.",
    )
    reasoning_parser: str | None = option(
        None,
        plugin_kind="reasoning_parsers",
        help="Parser that splits the model's reasoning from its answer (into reasoning_content).",
    )

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ConfigError("ssl_keyfile and ssl_certfile must be given together to serve HTTPS")
        if self.max_log_len is not None and self.max_log_len < 0:
            raise ConfigError(f"max_log_len must be 0 or more, got {self.max_log_len}")
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ConfigError("enable_auto_tool_choice needs a tool_call_parser (--tool-call-parser)")
        if self.tool_call_parser is not None:
            # Refused rather than ignored: the server does not run tool parsers yet, so
            # every response would carry tool_calls: [].
            raise ConfigError(f"tool-call parsing is not available yet in fw (--tool-call-parser "
                              f"{self.tool_call_parser})")
        if not self.response_role.strip():
            raise ConfigError("response_role must not be empty")
        for name in ("request_chat_template_timeout", "header_read_timeout", "body_read_timeout",
                     "timeout_keep_alive"):
            if not 0 < getattr(self, name) < float("inf"):  # also refuses NaN
                raise ConfigError(f"{name} must be a number of seconds more than 0, got {getattr(self, name)}")
        if not 0 <= self.shutdown_timeout < float("inf"):
            raise ConfigError(f"shutdown_timeout must be a number of seconds, 0 or more, got {self.shutdown_timeout}")
        for name in ("request_chat_template_max_bytes", "max_request_body_bytes", "h11_max_incomplete_event_size",
                     "h11_max_header_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
