"""``fw run-batch``: a file of OpenAI batch requests through one in-process engine.

The input is OpenAI's batch file format, one JSON object per line::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Every request goes through the same request handlers as ``fw serve``
(:class:`~fw.entrypoints.openai.serving.OpenAIServing`) on one
:class:`~fw.core.engine.async_engine.AsyncEngine`, all at once, so the engine batches them
together. The output has one line per non-blank input line, in input order, in the shape of
OpenAI's batch output::

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}

A request the handler rejects gets its status code and OpenAI error body in ``response``
(as OpenAI's batch API reports them); a line that is not a request at all (bad JSON, no
``custom_id``, an unknown ``url`` or ``method``) gets ``"response": null`` and
``"error": {"code", "message"}``. No line is lost and none stops the others.

The engine's queue is bounded (``--max-num-queued-reqs``): a batch larger than it waits its
turn (a refused request is retried after the engine's ``retry_after``) rather than fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from fw.core.config import ENGINE_CONFIG_CLASSES, ConfigError, EngineConfig, FrontendConfig
from fw.entrypoints.commands import config_values
from fw.core.errors import EngineOverloadedError, FwError

if TYPE_CHECKING:
    from fw.entrypoints.openai.serving import OpenAIServing
    from fw.core.plugins import Plugins

logger = logging.getLogger(__name__)

#: The longest a request refused by a full queue waits before it tries again (seconds).
MAX_RETRY_WAIT = 1.0

#: Batch ``url`` -> the OpenAIServing method that handles it.
HANDLERS = {"/v1/chat/completions": "chat_completions", "/v1/completions": "completions"}


class BatchFileError(FwError):
    """The input file cannot be read or the output file cannot be written."""


@dataclass(frozen=True)
class BatchRequest:
    """One valid input line: which handler runs which body."""

    custom_id: str
    url: str
    body: Any


@dataclass(frozen=True)
class InvalidLine:
    """An input line that is not a request; it becomes an error line in the output."""

    custom_id: str | None
    code: str
    message: str


def parse_line(text: str, line_number: int) -> BatchRequest | InvalidLine:
    """Check one input line's envelope; the body is left to the request handler to judge."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        return InvalidLine(None, "invalid_json_line", f"line {line_number} is not valid JSON: {exc}")
    if not isinstance(line, dict):
        return InvalidLine(None, "invalid_request", f"line {line_number} is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str):
        return InvalidLine(None, "missing_custom_id", f"line {line_number} has no string 'custom_id'")
    url = line.get("url")
    if url not in HANDLERS:
        return InvalidLine(custom_id, "invalid_url",
                           f"line {line_number}: url {url!r} is not one of {', '.join(HANDLERS)}")
    method = line.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        return InvalidLine(custom_id, "invalid_method", f"line {line_number}: method {method!r} is not POST")
    return BatchRequest(custom_id, url, _without_streaming(line.get("body")))


def _without_streaming(body: Any) -> Any:
    # A batch has nobody to stream to: a streaming request runs as a plain one.
    if isinstance(body, dict) and body.get("stream"):
        body = {name: value for name, value in body.items() if name not in ("stream", "stream_options")}
    return body


def _output_line(custom_id: str | None, response: dict | None, error: dict | None) -> dict:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": error}


def _invalid_output(line: InvalidLine) -> dict:
    return _output_line(line.custom_id, None, {"code": line.code, "message": line.message})


async def run_request(serving: OpenAIServing, request: BatchRequest) -> dict:
    """One request through its handler; every outcome, internal errors included, is an output line."""
    from fw.entrypoints.openai.errors import APIError, error_body, from_engine_error

    request_id = f"batch-{uuid.uuid4().hex}"
    handler = getattr(serving, HANDLERS[request.url])
    while True:
        try:
            body = await handler(request.body, request_id)
            status_code = 200
        except EngineOverloadedError as exc:  # the queue is full: a batch waits for its turn
            await asyncio.sleep(min(exc.retry_after, MAX_RETRY_WAIT))
            continue
        except APIError as exc:
            body, status_code = exc.body(), exc.status_code
        except Exception as exc:  # a bug or a dead engine must not take the other requests down
            error = from_engine_error(exc)
            if error is None:
                logger.exception("request %s (custom_id %s) failed", request_id, request.custom_id)
                error = APIError(f"internal error: {exc}", 500, "InternalServerError")
            body, status_code = error.body(), error.status_code
        break
    if not isinstance(body, dict):  # the handler streamed although streaming was switched off
        body, status_code = error_body("the request handler returned a stream", 500, "InternalServerError"), 500
    return _output_line(request.custom_id, {"status_code": status_code, "request_id": request_id, "body": body}, None)


async def run_lines(serving: OpenAIServing, lines: list[BatchRequest | InvalidLine]) -> list[dict]:
    """Run every request concurrently; the results come back in input order."""

    async def one(line: BatchRequest | InvalidLine) -> dict:
        result = _invalid_output(line) if isinstance(line, InvalidLine) else await run_request(serving, line)
        bar.update(1)
        return result

    with tqdm(total=len(lines), desc="Running batch", unit=" req", file=sys.stderr, dynamic_ncols=True) as bar:
        return list(await asyncio.gather(*(one(line) for line in lines)))


def read_input(path: str) -> list[BatchRequest | InvalidLine]:
    """The non-blank lines of the input file ("-": stdin), parsed."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchFileError(f"cannot read the batch input file {path}: {exc}") from None
    return [parse_line(line, number) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def write_output(path: str, results: list[dict]) -> None:
    text = "".join(json.dumps(result, ensure_ascii=False) + "\n" for result in results)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BatchFileError(f"cannot write the batch output file {path}: {exc}") from None


def _check_output_dir(path: str) -> None:
    # Fail before loading the model, not after running the whole batch.
    if path != "-" and not Path(path).resolve().parent.is_dir():
        raise BatchFileError(f"cannot write the batch output file {path}: its directory does not exist")


async def _run_batch(config: EngineConfig, plugins: Plugins, lines: list[BatchRequest | InvalidLine]) -> list[dict]:
    from fw.core.engine.async_engine import AsyncEngine
    from fw.entrypoints.openai.serving import OpenAIServing

    if not any(isinstance(line, BatchRequest) for line in lines):  # nothing to run: don't load the model
        return [_invalid_output(line) for line in lines if isinstance(line, InvalidLine)]
    engine = AsyncEngine.from_config(config, plugins)
    try:
        served_names = config.model.served_model_name or (engine.info.served_name,)
        # run-batch has no HTTP server: the frontend options that matter to handlers keep their defaults.
        serving = OpenAIServing(engine, served_names, FrontendConfig(), plugins)
        return await run_lines(serving, lines)
    finally:
        engine.shutdown()


def run_batch(args: argparse.Namespace, plugins: Plugins) -> int:
    """``fw run-batch -i INPUT -o OUTPUT [engine options]``."""
    if args.input_file is None or args.output_file is None:
        raise ConfigError("fw run-batch needs -i/--input-file and -o/--output-file")
    config = EngineConfig.from_values(config_values(args, ENGINE_CONFIG_CLASSES))
    plugins.check()
    _check_output_dir(args.output_file)
    lines = read_input(args.input_file)
    results = asyncio.run(_run_batch(config, plugins, lines))
    write_output(args.output_file, results)
    num_ok = sum(1 for r in results if r["response"] is not None and r["response"]["status_code"] == 200)
    where = "stdout" if args.output_file == "-" else args.output_file
    print(f"fw run-batch: {num_ok} ok, {len(results) - num_ok} failed; {len(results)} responses written to {where}",
          file=sys.stderr)
    return 0
