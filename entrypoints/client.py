"""``fw chat`` and ``fw complete``: terminal clients of a running OpenAI-compatible server.

Both talk to the server through the official ``openai`` package, as any application would,
so they work against ``fw serve``, ``vllm serve`` or any other compatible server. Answers are
streamed to stdout as they arrive. A server that cannot be reached or that answers with an
error ends the command with one line on stderr (exit code 1), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any, Generator, Iterator

from fw.core.errors import FwError

if TYPE_CHECKING:
    import openai

    from fw.core.plugins import Plugins

PROMPT = "> "


class ClientError(FwError):
    """The server could not be reached, or it answered a request with an error."""


def describe_api_error(error: openai.APIError, url: str) -> str:
    """One sentence for an ``openai`` error: what went wrong, with the server's own message."""
    import openai

    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error.__context__
        reason = f" ({_one_line(str(cause))})" if cause is not None and str(cause) else ""
        return f"cannot reach the server at {url}{reason}"
    message = error.body.get("message") if isinstance(error.body, dict) else None
    message = _one_line(message if isinstance(message, str) and message else error.message)
    if isinstance(error, openai.APIStatusError):
        return f"the server at {url} answered {error.status_code}: {message}"
    return f"the server at {url} reported an error: {message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def api_key(given: str | None) -> str:
    """The key to send: --api-key, else $OPENAI_API_KEY, else a placeholder (the client insists on one)."""
    return given or os.environ.get("OPENAI_API_KEY") or "EMPTY"


class ServerSession:
    """An ``openai`` client bound to one server and one model, with errors turned into :class:`ClientError`."""

    def __init__(self, url: str, key: str | None, model: str | None) -> None:
        import openai

        self.url = url
        # No retries: a person at a terminal wants the error now, not after backing off.
        self.client = openai.OpenAI(base_url=url, api_key=api_key(key), max_retries=0)
        self.model = model if model is not None else self._first_model()

    def _first_model(self) -> str:
        with api_errors(self.url):
            models = self.client.models.list()
            first = next(iter(models), None)
        if first is None:
            raise ClientError(f"the server at {self.url} lists no models; pass --model")
        return first.id

    def stream_chat(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Generator[str, None, None]:
        """The pieces of the assistant's answer as the server streams them."""
        with api_errors(self.url):
            stream = self.client.chat.completions.create(model=self.model, messages=messages, stream=True, **options)
            # Closing the stream (also when the user presses Ctrl-C) ends the HTTP request,
            # which makes the server abort the generation.
            with stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content

    def stream_completion(self, prompt: str, options: dict[str, Any]) -> Generator[str, None, None]:
        """The pieces of the completion as the server streams them."""
        with api_errors(self.url):
            stream = self.client.completions.create(model=self.model, prompt=prompt, stream=True, **options)
            with stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].text:
                        yield chunk.choices[0].text


@contextmanager
def api_errors(url: str) -> Iterator[None]:
    """An ``openai.APIError`` raised inside becomes a one-line :class:`ClientError`."""
    import openai

    try:
        yield
    except openai.APIError as exc:
        raise ClientError(describe_api_error(exc, url)) from exc


def print_streamed(pieces: Generator[str, None, None]) -> str:
    """Print each piece as it arrives, then a newline; return the whole text."""
    text = []
    # closing(): on Ctrl-C the stream is closed now, not whenever the generator is collected.
    with closing(pieces) as stream:
        for piece in stream:
            print(piece, end="", flush=True)
            text.append(piece)
    print(flush=True)
    return "".join(text)


def read_lines() -> Iterator[str]:
    """Lines typed at the prompt, until end of input; blank lines are skipped."""
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print()
            return
        if line.strip():
            yield line


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields the user set; the rest are left to the server's defaults."""
    options: dict[str, Any] = {}
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    return options


def _greet(session: ServerSession, what: str) -> None:
    # Only for a person at a terminal: piped input gets a clean stdout.
    if sys.stdin.isatty():
        print(f"{what} {session.model} at {session.url}; Ctrl-D or Ctrl-C quits.", file=sys.stderr)


def run_chat(args: argparse.Namespace, plugins: Plugins | None = None) -> int:
    """``fw chat``: a multi-turn conversation that keeps its history, or one question with ``-q``."""
    session = ServerSession(args.url, args.api_key, args.model_name)
    options = sampling_options(args)
    messages: list[dict[str, str]] = []
    if args.system_prompt is not None:
        messages.append({"role": "system", "content": args.system_prompt})
    if args.quick is not None:
        print_streamed(session.stream_chat([*messages, {"role": "user", "content": args.quick}], options))
        return 0
    _greet(session, "Chatting with")
    try:
        for line in read_lines():
            messages.append({"role": "user", "content": line})
            answer = print_streamed(session.stream_chat(messages, options))
            messages.append({"role": "assistant", "content": answer})
    except KeyboardInterrupt:
        print()
    return 0


def run_complete(args: argparse.Namespace, plugins: Plugins | None = None) -> int:
    """``fw complete``: each line typed is a prompt whose completion is streamed, or one prompt with ``-q``."""
    session = ServerSession(args.url, args.api_key, args.model_name)
    options = sampling_options(args)
    if args.quick is not None:
        print_streamed(session.stream_completion(args.quick, options))
        return 0
    _greet(session, "Completing with")
    try:
        for line in read_lines():
            print_streamed(session.stream_completion(line, options))
    except KeyboardInterrupt:
        print()
    return 0
