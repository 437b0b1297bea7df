"""Request handling of the OpenAI API, independent of HTTP.

``OpenAIServing`` takes a request body (decoded JSON), validates it, runs it on the
``AsyncEngine`` and returns the response body, or for ``"stream": true`` an async iterator
of server-sent-event strings. The HTTP server (api_server.py) only moves bytes.
Completions and chat live in serving_completion.py and serving_chat.py; what they share
(parsing, running engine requests, logprob tokens, the SSE framing) is here.

The engine checks every limit (context length, ``n``, ``logprobs``, token ids) when it adds
a request; its refusal becomes the 400, naming the request's own field. Streams get the
engine's deltas (stop strings already settled), responses one final output.

Nothing slow runs on the event loop: large texts are tokenized and detokenized in a small
thread pool (tokenization.py), the model's chat template renders in another, and a template
sent by a client renders in a separate process under a time and a size budget
(template_sandbox.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Awaitable, Sequence, TypeVar

from pydantic import ValidationError

from fw.core.engine.outputs import RequestOutput
from fw.core.engine.sampling_params import SamplingParams
from fw.core.errors import InvalidRequestError
from fw.entrypoints.chat_utils import load_chat_template, render_chat_text
from fw.entrypoints.openai.errors import (
    APIError,
    NotFoundError,
    from_engine_error,
    from_validation_error,
    refused,
)
from fw.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatTemplateFields,
    CompletionRequest,
    DetokenizeRequest,
    OpenAIBaseModel,
    SamplingRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from fw.entrypoints.openai.serving_chat import ChatHandler
from fw.entrypoints.openai.serving_completion import CompletionHandler
from fw.entrypoints.openai.tokenization import AsyncTokenizer

if TYPE_CHECKING:
    from fw.core.config.frontend import FrontendConfig
    from fw.core.engine.async_engine import AsyncEngine
    from fw.core.interfaces import ReasoningParser
    from fw.core.plugins import Plugins
    from fw.entrypoints.openai.template_sandbox import TemplateSandbox

#: Threads for tokenizing and detokenizing large inputs, and for rendering chat templates (apart,
#: so that two huge prompts being tokenized do not hold up every chat request): enough to keep
#: one large request from holding up the others, few enough to leave the cores to the engine.
NUM_TOKENIZER_THREADS = 2
NUM_RENDER_THREADS = 2

logger = logging.getLogger("fw.server")

RequestT = TypeVar("RequestT", bound=OpenAIBaseModel)
T = TypeVar("T")

SSE_DONE = "data: [DONE]\n\n"

# SentencePiece's byte-fallback pieces: one byte each.
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE (GPT-2 style) writes each byte as one printable character: the reverse map."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def gather_all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, but the first failure (or our cancellation) cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones


async def _close_all(generators: Sequence[AsyncGenerator[RequestOutput, None]]) -> None:
    for generator in generators:
        await generator.aclose()


class EngineStream:
    """One engine request's outputs, its first output already received (so it was accepted)."""

    def __init__(self, first: RequestOutput, outputs: AsyncGenerator[RequestOutput, None]) -> None:
        self._first: RequestOutput | None = first
        self._outputs = outputs

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._outputs.__anext__()

    async def aclose(self) -> None:
        """Stop reading; an unfinished request is aborted and its KV blocks freed."""
        await self._outputs.aclose()


class OpenAIServing:
    """The OpenAI API on one engine: models, completions, chat completions, tokenize, detokenize."""

    def __init__(self, engine: AsyncEngine, served_names: Sequence[str], frontend: FrontendConfig,
                 plugins: Plugins) -> None:
        if not served_names:
            raise ValueError("at least one served model name is needed")
        self.engine = engine
        self.info = engine.info
        self.tokenizer = self.info.tokenizer
        self.served_names = tuple(served_names)
        self.frontend = frontend
        self.chat_template = load_chat_template(frontend.chat_template)
        self.reasoning_parser_cls: type[ReasoningParser] | None = (
            plugins.reasoning_parsers.get(frontend.reasoning_parser) if frontend.reasoning_parser else None)
        self.created = int(time.time())
        self._token_texts: dict[int, str] = {}
        self.executor = ThreadPoolExecutor(NUM_TOKENIZER_THREADS, thread_name_prefix="fw-tokenizer")
        self.render_executor = ThreadPoolExecutor(NUM_RENDER_THREADS, thread_name_prefix="fw-chat-template")
        self.async_tokenizer = AsyncTokenizer(self.tokenizer, self.executor)
        self._template_sandbox: TemplateSandbox | None = None
        self._completion = CompletionHandler(self)
        self._chat = ChatHandler(self)

    def open(self) -> None:
        """Start what runs beside the server (the renderer of request templates), so that the
        first request does not wait for it."""
        if self.frontend.trust_request_chat_template:
            self.template_sandbox.start()

    def close(self) -> None:
        """Stop the threads and the renderer process."""
        if self._template_sandbox is not None:
            self._template_sandbox.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.render_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def template_sandbox(self) -> TemplateSandbox:
        """Where chat templates sent by clients render (created on first use)."""
        if self._template_sandbox is None:
            from fw.entrypoints.openai.template_sandbox import TemplateSandbox

            self._template_sandbox = TemplateSandbox(self.tokenizer, self.frontend.request_chat_template_timeout,
                                                     self.frontend.request_chat_template_max_bytes)
        return self._template_sandbox

    @property
    def model_name(self) -> str:
        """The name responses report: the first served name."""
        return self.served_names[0]

    # ---------------------------------------------------------------- endpoints

    def models(self) -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": self.created, "owned_by": "fw", "root": self.info.model,
                 "parent": None, "max_model_len": self.info.max_model_len} for name in self.served_names]
        return {"object": "list", "data": data}

    async def completions(self, body: Any, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        request = self.parse(CompletionRequest, body)
        return await self._completion.create(request, request_id)

    async def chat_completions(self, body: Any, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        request = self.parse(ChatCompletionRequest, body)
        return await self._chat.create(request, request_id)

    async def tokenize(self, body: Any) -> dict[str, Any]:
        if isinstance(body, dict) and "messages" in body:
            chat = self.parse(TokenizeChatRequest, body)
            token_ids = (await self.render_prompt(chat))[1]
            return_token_strs = chat.return_token_strs
        else:
            request = self.parse(TokenizeCompletionRequest, body)
            token_ids = await self.async_tokenizer.encode(request.prompt, request.add_special_tokens)
            return_token_strs = request.return_token_strs
        token_strs = await self.async_tokenizer.convert_ids_to_tokens(token_ids) if return_token_strs else None
        return {"count": len(token_ids), "max_model_len": self.info.max_model_len, "tokens": token_ids,
                "token_strs": token_strs}

    async def detokenize(self, body: Any) -> dict[str, Any]:
        request = self.parse(DetokenizeRequest, body)
        self.check_token_ids("tokens", request.tokens)
        return {"prompt": await self.async_tokenizer.decode(request.tokens)}

    # ---------------------------------------------------------------- validation

    def parse(self, model: type[RequestT], body: Any) -> RequestT:
        """Validate a request body (strictly: see protocol.py) and check the model name."""
        if not isinstance(body, dict):
            raise APIError(f"the request body must be a JSON object, got {type(body).__name__}")
        try:
            request = model.model_validate(body)
        except ValidationError as e:
            raise from_validation_error(e) from None
        name = getattr(request, "model", None)
        if name is not None and name not in self.served_names:
            raise NotFoundError(f"The model `{name}` does not exist. Served models: {', '.join(self.served_names)}",
                                param="model")
        if isinstance(request, SamplingRequest) and request.stream_options is not None and not request.stream:
            raise APIError("stream_options can only be set when stream is true", param="stream_options")
        return request

    def check_token_ids(self, field: str, token_ids: Sequence[int]) -> None:
        vocab_size = self.info.vocab_size
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise APIError(f"{field} contains token id {token_id}, which is out of vocabulary "
                               f"(0 to {vocab_size - 1})", param=field)

    def sampling_params(self, request: SamplingRequest, max_tokens: int | None) -> SamplingParams:
        """The request's SamplingParams (the engine checks them against its limits when it adds them)."""
        try:
            return request.to_sampling_params(self.engine.default_sampling_params(), max_tokens)
        except ValueError as e:
            raise refused(request, e) from None

    # ---------------------------------------------------------------- chat prompts

    async def render_prompt(self, request: ChatTemplateFields) -> tuple[str, list[int]]:
        """The conversation rendered by the chat template, as ``fw.LLM.chat`` renders it: text and token ids.

        The model's template (or ``--chat-template``) is trusted and renders in the thread pool;
        one sent in the request renders in the sandbox process, under its budgets.
        """
        if request.chat_template is not None and not self.frontend.trust_request_chat_template:
            raise APIError("a chat_template in the request is refused: this server does not run templates sent "
                           "by clients (start it with --trust-request-chat-template to allow them)",
                           param="chat_template")
        try:
            add_generation_prompt = request.generation_prompt()
        except ValueError as e:
            raise APIError(str(e), param="continue_final_message") from None
        tools = None
        if request.tools is not None and getattr(request, "tool_choice", None) != "none":
            tools = [tool.model_dump(exclude_none=True) for tool in request.tools]
        messages = [message.model_dump(exclude_none=True) for message in request.messages]
        options = dict(chat_template=request.chat_template or self.chat_template,
                       content_format=self.frontend.chat_template_content_format,
                       add_generation_prompt=add_generation_prompt,
                       continue_final_message=request.continue_final_message, tools=tools,
                       chat_template_kwargs=request.chat_template_kwargs)
        try:
            if request.chat_template is not None:
                text = await self.template_sandbox.render(messages, options)
            else:
                render = functools.partial(render_chat_text, self.tokenizer, messages, **options)
                text = await asyncio.get_running_loop().run_in_executor(self.render_executor, render)
        except InvalidRequestError as e:
            raise APIError(str(e), param=e.param) from None
        return text, await self.async_tokenizer.encode(text, request.add_special_tokens)

    # ---------------------------------------------------------------- running requests

    def log_request(self, request_id: str, prompts: Sequence[str | list[int]], params: SamplingParams) -> None:
        if self.frontend.disable_log_requests:
            return
        limit = self.frontend.max_log_len
        preview = prompts[0] if limit is None else prompts[0][:limit]
        more = f" (and {len(prompts) - 1} more prompts)" if len(prompts) > 1 else ""
        logger.info("request %s: prompt: %r%s, params: %s", request_id, preview, more, params)

    async def start(self, request: SamplingRequest,
                    jobs: Sequence[tuple[list[int], SamplingParams, str]]) -> list[EngineStream]:
        """Submit ``(token ids, params, engine request id)`` jobs together; wait until each has output.

        A job the engine refuses (out-of-vocabulary ids, over the context length) fails here as a
        400 and the others are aborted, so a stream never starts for a request that cannot run.
        """
        generators = [self.engine.generate(ids, params, engine_id, request.priority) for ids, params, engine_id in jobs]
        try:
            firsts = await asyncio.gather(*(anext(g) for g in generators), return_exceptions=True)
        except BaseException:  # cancelled (the client went away): every child has stopped by now
            await _close_all(generators)
            raise
        failure = next((f for f in firsts if isinstance(f, BaseException)), None)
        if failure is not None:
            await _close_all(generators)
            if isinstance(failure, ValueError):  # the engine refused the request; its message is for the user
                raise refused(request, failure) from None
            raise failure
        return [EngineStream(first, g) for first, g in zip(firsts, generators)]

    async def run(self, request: SamplingRequest,
                  jobs: Sequence[tuple[list[int], SamplingParams, str]]) -> list[RequestOutput]:
        """Run jobs to the end together: their final outputs. The first failure aborts the others."""

        async def final(ids: list[int], params: SamplingParams, engine_id: str) -> RequestOutput:
            outputs = self.engine.generate(ids, params, engine_id, request.priority)
            try:
                async for output in outputs:
                    if output.finished:
                        return output
                raise RuntimeError("the engine's output stream ended before the request finished")
            finally:
                await outputs.aclose()

        try:
            return await gather_all([final(*job) for job in jobs])
        except ValueError as e:  # the engine refused a request; its message is for the user
            raise refused(request, e) from None

    def token_text(self, token_id: int) -> str:
        """How a token shows in logprobs: its own decoded text."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def token_bytes(self, token_id: int) -> list[int]:
        """The token's UTF-8 bytes; for a piece of a multi-byte character (text U+FFFD), its own bytes.

        That is what OpenAI's ``bytes`` field is for: joining the pieces of a character that
        no single token can show.
        """
        text = self.token_text(token_id)
        if "\ufffd" in text:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and (match := _BYTE_PIECE.fullmatch(piece)):
                return [int(match.group(1), 16)]
            decoder = _byte_level_decoder()
            if isinstance(piece, str) and piece and all(char in decoder for char in piece):
                return [decoder[char] for char in piece]
        return list(text.encode("utf-8"))

    async def sse_stream(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
        """SSE framing: each chunk, an error event if the request fails midway, then ``[DONE]``.

        Closing this iterator (a client that went away) closes ``chunks``, which aborts the
        engine requests; cancellation passes through untouched.
        """
        try:
            try:
                async for chunk in chunks:
                    yield sse(chunk)
            except APIError as e:
                yield sse(e.body())
            except Exception as e:  # noqa: BLE001 - the response has started: report in-band
                error = from_engine_error(e)
                if error is None:  # a bug here, not in the engine (which logged its own)
                    logger.exception("a streaming request failed")
                    error = APIError(f"internal error: {e}", 500, "InternalServerError")
                yield sse(error.body())
            yield SSE_DONE
        finally:
            await chunks.aclose()
