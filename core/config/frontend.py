"""FrontendConfig: the OpenAI-compatible HTTP server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fw.core.config.base import ConfigBase, ConfigError, option


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
        False, help="Accept a chat_template sent in a request (a Jinja template from the client)."
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
