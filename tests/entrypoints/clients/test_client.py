"""``fw chat`` and ``fw complete`` against a real ``fw serve``: answers, history, errors."""

from __future__ import annotations

import io
import socket

import pytest

pytestmark = pytest.mark.slow  # a real fw serve process

MAX_TOKENS = 12
GREEDY = ["--temperature", "0", "--max-tokens", str(MAX_TOKENS)]


def chat_answer(server, messages: list[dict]) -> str:
    """The server's greedy answer, asked directly with the openai client (not streamed)."""
    response = server.client().chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=MAX_TOKENS
    )
    return response.choices[0].message.content


def completion(server, prompt: str) -> str:
    response = server.client().completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=MAX_TOKENS)
    return response.choices[0].text


def test_chat_quick_prints_the_greedy_answer(run_fw, server) -> None:
    result = run_fw("chat", "--url", server.api_url, *GREEDY, "-q", "the quick brown fox")
    assert (result.code, result.err) == (0, "")
    expected = chat_answer(server, [{"role": "user", "content": "the quick brown fox"}])
    assert expected  # a real answer, so that the comparison means something
    assert result.out == expected + "\n"


def test_chat_system_prompt_starts_the_conversation(run_fw, server) -> None:
    result = run_fw("chat", "--url", server.api_url, "--model", "tiny", "--system-prompt", "be brief", *GREEDY,
                    "-q", "all that glitters")
    assert result.code == 0
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "all that glitters"}]
    assert result.out == chat_answer(server, messages) + "\n"


def test_complete_quick_prints_the_greedy_completion(run_fw, server) -> None:
    result = run_fw("complete", "--url", server.api_url, *GREEDY, "-q", "to be or not")
    assert (result.code, result.err) == (0, "")
    assert result.out == completion(server, "to be or not") + "\n"


def test_interactive_chat_keeps_the_history(run_fw, server, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a journey of a thousand\n\nthe lazy dog\n"))
    result = run_fw("chat", "--url", server.api_url, *GREEDY)
    assert (result.code, result.err) == (0, "")
    first_turn = [{"role": "user", "content": "a journey of a thousand"}]
    first = chat_answer(server, first_turn)
    second_turn = [*first_turn, {"role": "assistant", "content": first}, {"role": "user", "content": "the lazy dog"}]
    second = chat_answer(server, second_turn)
    # Without the history the model answers differently, so equal answers prove the history was sent.
    assert second != chat_answer(server, [{"role": "user", "content": "the lazy dog"}])
    # One prompt per line read (the blank line is skipped, not sent), and one after end of input.
    assert result.out == f"> {first}\n> > {second}\n> \n"


def test_interactive_complete_streams_each_line(run_fw, server, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("to be or not\nall that glitters\n"))
    result = run_fw("complete", "--url", server.api_url, *GREEDY)
    assert result.code == 0
    assert result.out == f"> {completion(server, 'to be or not')}\n> {completion(server, 'all that glitters')}\n> \n"


class InterruptedStdin(io.StringIO):
    def readline(self, *args) -> str:
        raise KeyboardInterrupt


def test_ctrl_c_at_the_prompt_exits_cleanly(run_fw, server, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", InterruptedStdin())
    result = run_fw("chat", "--url", server.api_url)
    assert (result.code, result.err) == (0, "")


def test_unreachable_server_is_one_line_and_exit_1(run_fw) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    for command in ("chat", "complete"):
        result = run_fw(command, "--url", url, "-q", "hello")
        assert result.code == 1
        assert result.err.startswith(f"fw: error: cannot reach the server at {url}")
        assert result.err.count("\n") == 1 and "Traceback" not in result.err


@pytest.mark.parametrize("command", ["chat", "complete"])
def test_server_error_shows_the_servers_message(run_fw, server, command: str) -> None:
    result = run_fw(command, "--url", server.api_url, "--model", "no-such-model", "-q", "hello")
    assert result.code == 1
    assert result.err.startswith(f"fw: error: the server at {server.api_url} answered 404: ")
    assert "no-such-model" in result.err and "tiny" in result.err  # the server's own message names both
    assert result.err.count("\n") == 1
