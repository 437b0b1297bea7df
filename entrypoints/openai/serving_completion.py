"""``POST /v1/completions``: prompts in, text out, OpenAI's legacy ``text_completion`` shape.

Several prompts run as separate engine requests, concurrently; choice ``index`` is
``prompt_index * n + sample_index``, as in OpenAI's and vLLM's responses.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Sequence, TypeVar

from fw.core.engine.outputs import CompletionOutput, RequestOutput
from fw.core.engine.sequence import PositionLogprobs
from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.protocol import MIN_LOGPROB, CompletionRequest, usage

if TYPE_CHECKING:
    from fw.entrypoints.openai.serving import EngineStream, OpenAIServing

T = TypeVar("T")

async def gather_all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, but the first failure (or our cancellation) cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones


async def merge(streams: Sequence[EngineStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several streams as they come, tagged with the stream's position."""
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: EngineStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
            queue.put_nowait((index, None))
        except Exception as e:  # noqa: BLE001 - handed to the reader, who raises it
            queue.put_nowait((index, e))
        finally:
            await stream.aclose()

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        num_open = len(streams)
        while num_open:
            index, item = await queue.get()
            if item is None:
                num_open -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        # Wait for them, so every stream is closed (its request aborted) when this returns.
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _ChoiceState:
    """What a stream has sent so far for one choice."""

    num_chars: int = 0
    num_tokens: int = 0
    text_offset: int = 0
    started: bool = False
    finished: bool = False


class CompletionHandler:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving

    async def create(self, request: CompletionRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        serving = self.serving
        if request.prompt_logprobs is not None and request.stream:
            raise APIError("prompt_logprobs is not available when stream is true", param="prompt_logprobs")
        prompts_ids = [
            serving.tokenizer.encode(p, add_special_tokens=request.add_special_tokens) if isinstance(p, str) else p
            for p in request.prompt
        ]
        jobs = []
        for i, ids in enumerate(prompts_ids):
            params = serving.sampling_params(request, len(ids), request.max_tokens)
            if request.echo and request.logprobs is not None and params.prompt_logprobs is None:
                params = params.clone(prompt_logprobs=request.logprobs)  # echo shows the prompt's logprobs too
            jobs.append((ids, params, f"cmpl-{request_id}-{i}"))
        serving.log_request(request_id, request.prompt, jobs[0][1])
        streams = await serving.start(jobs, request.priority)
        if request.stream:
            return serving.sse_stream(self._stream(request, request_id, streams))
        finals = await gather_all([stream.last() for stream in streams])
        return self._response(request, request_id, finals)

    # ---------------------------------------------------------------- shared pieces

    def _echo(self, request: CompletionRequest, prompt_index: int, output: RequestOutput) -> str:
        prompt = request.prompt[prompt_index]
        return prompt if isinstance(prompt, str) else self.serving.tokenizer.decode(prompt)

    def _logprobs(self, token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None],
                  text_offset: int) -> dict[str, list[Any]]:
        """OpenAI's legacy shape: parallel lists over the tokens; top_logprobs sorted, most likely first."""
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        text_offsets: list[int] = []
        for token_id, position in zip(token_ids, positions):
            text = self.serving.token_text(token_id)
            tokens.append(text)
            text_offsets.append(text_offset)
            text_offset += len(text)
            if position is None:  # the first prompt token has no logprob
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(max(position[token_id].logprob, MIN_LOGPROB))
            top: dict[str, float] = {}
            for t, lp in sorted(position.items(), key=lambda item: item[1].logprob, reverse=True):
                # Keys are token texts, and pieces of characters share one ("\ufffd"): keep the likeliest.
                top.setdefault(self.serving.token_text(t), max(lp.logprob, MIN_LOGPROB))
            top_logprobs.append(top)
        return {"text_offset": text_offsets, "token_logprobs": token_logprobs, "tokens": tokens,
                "top_logprobs": top_logprobs}

    def _choice(self, request: CompletionRequest, prompt_index: int, output: RequestOutput,
                sample: CompletionOutput) -> dict[str, Any]:
        text, logprobs = sample.text, None
        if request.echo:
            text = self._echo(request, prompt_index, output) + text
        if request.logprobs is not None:
            token_ids, positions = list(sample.token_ids), list(sample.logprobs or [])
            if request.echo:
                token_ids = output.prompt_token_ids + token_ids
                positions = list(output.prompt_logprobs or [None] * len(output.prompt_token_ids)) + positions
            logprobs = self._logprobs(token_ids, positions, 0)
        choice = {"index": prompt_index * request.n + sample.index, "text": text, "logprobs": logprobs,
                  "finish_reason": sample.finish_reason, "stop_reason": sample.stop_reason}
        if request.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs(self.serving, output)
        return choice

    def _response(self, request: CompletionRequest, request_id: str, finals: list[RequestOutput]) -> dict[str, Any]:
        choices = [self._choice(request, i, output, sample)
                   for i, output in enumerate(finals) for sample in output.outputs]
        num_prompt_tokens = sum(len(output.prompt_token_ids) for output in finals)
        num_completion_tokens = sum(len(s.token_ids) for output in finals for s in output.outputs)
        return {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()),
                "model": self.serving.model_name, "choices": choices, "system_fingerprint": None,
                "usage": usage(num_prompt_tokens, num_completion_tokens)}

    # ---------------------------------------------------------------- streaming

    async def _stream(self, request: CompletionRequest, request_id: str,
                      streams: list[EngineStream]) -> AsyncIterator[dict[str, Any]]:
        header = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()),
                  "model": self.serving.model_name}
        states: dict[int, _ChoiceState] = {}
        num_prompt_tokens = [0] * len(streams)
        num_completion_tokens: dict[int, int] = {}
        hold = holdback(request.stop, request.include_stop_str_in_output)
        outputs = merge(streams)
        try:
            async for prompt_index, output in outputs:
                num_prompt_tokens[prompt_index] = len(output.prompt_token_ids)
                for sample in output.outputs:
                    index = prompt_index * request.n + sample.index
                    state = states.setdefault(index, _ChoiceState())
                    choice = self._delta(request, prompt_index, output, sample, state, hold)
                    if choice is None:
                        continue
                    num_completion_tokens[index] = state.num_tokens
                    chunk = {**header, "choices": [choice], "usage": None}
                    if request.continuous_usage_stats:
                        chunk["usage"] = usage(len(output.prompt_token_ids), state.num_tokens)
                    yield chunk
            if request.include_usage:
                yield {**header, "choices": [],
                       "usage": usage(sum(num_prompt_tokens), sum(num_completion_tokens.values()))}
        finally:
            await outputs.aclose()

    def _delta(self, request: CompletionRequest, prompt_index: int, output: RequestOutput,
               sample: CompletionOutput, state: _ChoiceState, hold: int) -> dict[str, Any] | None:
        """The choice's part of the next chunk: what it added since the last one (None: nothing yet)."""
        finished = sample.finish_reason is not None
        if state.finished or not (sample.token_ids or finished):
            return None  # done, or still in prefill (an output can come with prompt logprobs only)
        visible = sample.text if finished else sample.text[:max(state.num_chars, len(sample.text) - hold)]
        text = visible[state.num_chars:]
        token_ids = sample.token_ids[state.num_tokens:]
        positions = (sample.logprobs or [])[state.num_tokens:]
        if not state.started and request.echo:
            echo = self._echo(request, prompt_index, output)
            text = echo + text
            if request.logprobs is not None:
                token_ids = output.prompt_token_ids + token_ids
                positions = list(output.prompt_logprobs or [None] * len(output.prompt_token_ids)) + positions
        if not (text or finished or (token_ids and request.logprobs is not None)):
            return None
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._logprobs(token_ids, positions, state.text_offset)
            state.text_offset += sum(len(t) for t in logprobs["tokens"])
        state.started, state.finished = True, finished
        state.num_chars, state.num_tokens = len(visible), len(sample.token_ids)
        return {"index": prompt_index * request.n + sample.index, "text": text, "logprobs": logprobs,
                "finish_reason": sample.finish_reason, "stop_reason": sample.stop_reason}


def holdback(stop: str | list[str] | None, include_stop_str_in_output: bool) -> int:
    """How many trailing characters a stream holds back while a stop string may still be completing.

    The engine cuts the text where a stop string starts, which can be before text already
    seen; holding back ``len(longest stop) - 1`` characters means nothing sent is ever cut.
    """
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if include_stop_str_in_output or not stops:
        return 0
    return max(len(s) for s in stops) - 1


def prompt_logprobs(serving: OpenAIServing, output: RequestOutput) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs``: per prompt token, ``{token id: {logprob, rank, decoded_token}}``."""
    return [
        None if position is None else {
            str(token_id): {"logprob": max(lp.logprob, MIN_LOGPROB), "rank": lp.rank,
                            "decoded_token": serving.token_text(token_id)}
            for token_id, lp in position.items()
        }
        for position in output.prompt_logprobs or []
    ]
