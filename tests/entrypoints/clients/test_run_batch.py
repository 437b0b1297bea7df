"""``fw run-batch``: good and bad lines through one in-process engine, one output line each, in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fw.entrypoints.run_batch import parse_line

ENGINE_OPTIONS = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", "64MiB"]
MAX_TOKENS = 8


def request(custom_id: str, url: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def chat_body(content: str, **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": MAX_TOKENS, **extra}


def completion_body(prompt: str, **extra) -> dict:
    return {"model": "tiny", "prompt": prompt, "temperature": 0, "max_tokens": MAX_TOKENS, **extra}


@pytest.fixture(scope="module")
def batch_run(tiny_checkpoint, tmp_path_factory, plugins):
    """One run-batch over a file mixing good and bad lines; returns (model path, output lines, stderr, output path)."""
    import contextlib
    import io

    from fw.entrypoints.cli import main

    model = Path(tiny_checkpoint())
    folder = tmp_path_factory.mktemp("batch")
    lines = [
        request("chat-1", "/v1/chat/completions", chat_body("the quick brown fox")),
        request("comp-1", "/v1/completions", completion_body("to be or not")),
        "{this is not json",
        request("bad-url", "/v1/embeddings", {"model": "tiny", "input": "x"}),
        "",
        request("rejected", "/v1/completions", completion_body("x", max_tokens=-3)),
        request("chat-2", "/v1/chat/completions", chat_body("all that glitters", stream=True,
                                                              stream_options={"include_usage": True})),
        "   ",
        request("comp-2", "/v1/completions", completion_body("a journey of")),
        json.dumps(["not", "an", "object"]),
        json.dumps({"custom_id": "get", "method": "GET", "url": "/v1/completions", "body": {}}),
    ]
    (folder / "in.jsonl").write_text("\n".join(lines) + "\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run-batch", "-i", str(folder / "in.jsonl"), "-o", str(folder / "out.jsonl"),
                     "--model", str(model), "--served-model-name", "tiny", *ENGINE_OPTIONS], plugins=plugins)
    assert code == 0, err.getvalue()
    output = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    return model, output, err.getvalue(), folder / "out.jsonl"


def test_one_output_line_per_request_in_input_order(batch_run) -> None:
    _, output, err, out_path = batch_run
    custom_ids = [line["custom_id"] for line in output]
    assert custom_ids == ["chat-1", "comp-1", None, "bad-url", "rejected", "chat-2", "comp-2", None, "get"]
    assert len({line["id"] for line in output}) == len(output)
    assert all(line["id"].startswith("batch_req_") for line in output)
    assert err.rstrip().splitlines()[-1] == f"fw run-batch: 4 ok, 5 failed; 9 responses written to {out_path}"


def test_good_lines_equal_the_offline_engines_greedy_outputs(batch_run) -> None:
    from fw import LLM
    from fw.core.engine.sampling_params import SamplingParams

    model, output, _, _ = batch_run
    good = {line["custom_id"]: line for line in output if line["response"] and line["response"]["status_code"] == 200}
    assert set(good) == {"chat-1", "comp-1", "chat-2", "comp-2"}
    for line in good.values():
        assert line["error"] is None
        assert line["response"]["request_id"]
    llm = LLM(str(model), dtype="float32", max_model_len=512, kv_cache_memory_bytes="64MiB")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    chats = llm.chat([[{"role": "user", "content": text}] for text in ("the quick brown fox", "all that glitters")],
                     params, use_tqdm=False)
    completions = llm.generate(["to be or not", "a journey of"], params, use_tqdm=False)
    for custom_id, expected in zip(["chat-1", "chat-2"], chats):
        body = good[custom_id]["response"]["body"]
        assert body["object"] == "chat.completion"  # chat-2 asked to stream and ran as a plain request
        assert body["choices"][0]["message"]["content"] == expected.outputs[0].text
        assert body["usage"]["completion_tokens"] == len(expected.outputs[0].token_ids)
    for custom_id, expected in zip(["comp-1", "comp-2"], completions):
        body = good[custom_id]["response"]["body"]
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == expected.outputs[0].text


def test_rejected_body_gets_the_handlers_error(batch_run) -> None:
    _, output, _, _ = batch_run
    line = next(line for line in output if line["custom_id"] == "rejected")
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    error = line["response"]["body"]["error"]
    assert "max_tokens" in error["message"] and error["code"] == 400


def test_unparseable_lines_get_an_error_and_no_response(batch_run) -> None:
    _, output, _, _ = batch_run
    errors = [(line["custom_id"], line["error"]["code"]) for line in output if line["response"] is None]
    assert errors == [(None, "invalid_json_line"), ("bad-url", "invalid_url"), (None, "invalid_request"),
                      ("get", "invalid_method")]
    bad_json = next(line for line in output if line["error"] and line["error"]["code"] == "invalid_json_line")
    assert bad_json["error"]["message"].startswith("line 3 is not valid JSON")


@pytest.mark.parametrize(
    "text, code",
    [
        ('{"url": "/v1/completions", "body": {}}', "missing_custom_id"),
        ('{"custom_id": "x", "body": {}}', "invalid_url"),
        ('{"custom_id": "x", "url": "/v1/completions", "method": 5}', "invalid_method"),
    ],
)
def test_envelope_checks(text: str, code: str) -> None:
    assert parse_line(text, 1).code == code


def test_stdin_and_stdout_and_no_engine_for_invalid_lines_only(run_fw, monkeypatch) -> None:
    import io

    # Only invalid lines: nothing needs the model, so a model that does not exist is never loaded.
    monkeypatch.setattr("sys.stdin", io.StringIO("oops\n\n[1]\n"))
    result = run_fw("run-batch", "-i", "-", "-o", "-", "--model", "/no/such/model")
    assert result.code == 0
    output = [json.loads(line) for line in result.out.splitlines()]
    assert [line["error"]["code"] for line in output] == ["invalid_json_line", "invalid_request"]
    assert "0 ok, 2 failed; 2 responses written to stdout" in result.err


def test_missing_input_file_is_one_line(run_fw, tmp_path: Path) -> None:
    result = run_fw("run-batch", "-i", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out.jsonl"))
    assert result.code == 1
    assert result.err.startswith(f"fw: error: cannot read the batch input file {tmp_path / 'missing.jsonl'}")
    assert result.err.count("\n") == 1


def test_a_request_refused_by_a_full_queue_waits_its_turn_and_engine_failures_are_openai_errors() -> None:
    import asyncio

    from fw.core.errors import EngineOverloadedError, RequestFailedError
    from fw.entrypoints.run_batch import BatchRequest, run_request

    class Serving:
        refusals = 2

        async def completions(self, body, request_id):
            if body.get("fail"):
                raise RequestFailedError("sampling failed for this request")
            if self.refusals:
                self.refusals -= 1
                raise EngineOverloadedError("the queue is full", retry_after=0.01)
            return {"ok": True}

    serving = Serving()
    line = asyncio.run(run_request(serving, BatchRequest("a", "/v1/completions", {})))
    assert line["response"]["status_code"] == 200 and serving.refusals == 0
    failed = asyncio.run(run_request(serving, BatchRequest("b", "/v1/completions", {"fail": True})))
    assert failed["response"]["status_code"] == 500
    assert failed["response"]["body"]["error"]["message"] == "sampling failed for this request"
