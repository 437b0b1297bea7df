"""``POST /v1/completions``: prompts in, text out, OpenAI's legacy ``text_completion`` shape.

Several prompts run as separate engine requests, concurrently; choice ``index`` is
``prompt_index * n + sample_index``, as in OpenAI's and vLLM's responses.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from fw.core.engine.outputs import CompletionOutput, RequestOutput
from fw.core.engine.sequence import PositionLogprobs
from fw.entrypoints.openai.errors import APIError, refused
from fw.entrypoints.openai.protocol import MIN_LOGPROB, CompletionRequest, usage

if TYPE_CHECKING:
    from fw.entrypoints.openai.serving import EngineStream, OpenAIServing


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

    num_tokens: int = 0
    text_offset: int = 0
    started: bool = False


class CompletionHandler:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving

    async def create(self, request: CompletionRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        serving = self.serving
        if request.prompt_logprobs is not None and request.stream:
            raise APIError("prompt_logprobs is not available when stream is true", param="prompt_logprobs")
        try:  # prompts x n: more sequences than one step runs is a 400, before anything is tokenized
            serving.engine.check_request_size(len(request.prompt), request.n)
        except ValueError as e:
            raise refused(request, e) from None
        params = serving.sampling_params(request, request.max_tokens)
        prompts_ids = [
            await serving.async_tokenizer.encode(p, request.add_special_tokens) if isinstance(p, str) else p
            for p in request.prompt
        ]
        if request.echo and request.logprobs is not None and params.prompt_logprobs is None:
            params = params.clone(prompt_logprobs=request.logprobs)  # echo shows the prompt's logprobs too
        jobs = [(ids, params, f"cmpl-{request_id}-{i}") for i, ids in enumerate(prompts_ids)]
        serving.log_request(request_id, request.prompt, params)
        if request.stream:
            streams = await serving.start(request, jobs)
            return serving.sse_stream(self._stream(request, request_id, streams))
        return self._response(request, request_id, await serving.run(request, jobs))

    # ---------------------------------------------------------------- shared pieces

    def _echo(self, request: CompletionRequest, prompt_index: int) -> str:
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
            text = self._echo(request, prompt_index) + text
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
        # Each prompt's logprobs come with its first output; every sample's echo shows them.
        prompt_positions: dict[int, list[PositionLogprobs | None]] = {}
        num_completion_tokens: dict[int, int] = {}
        outputs = merge(streams)
        try:
            async for prompt_index, output in outputs:
                num_prompt_tokens[prompt_index] = len(output.prompt_token_ids)
                if output.prompt_logprobs is not None:
                    prompt_positions[prompt_index] = output.prompt_logprobs
                for sample in output.outputs:
                    index = prompt_index * request.n + sample.index
                    state = states.setdefault(index, _ChoiceState())
                    choice = self._delta(request, prompt_index, output, sample, state,
                                         prompt_positions.get(prompt_index))
                    num_completion_tokens[index] = state.num_tokens
                    if choice is None:
                        continue
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
               sample: CompletionOutput, state: _ChoiceState,
               prompt_positions: list[PositionLogprobs | None] | None) -> dict[str, Any] | None:
        """The choice's part of the next chunk, from the engine's delta (None: nothing to send yet)."""
        state.num_tokens += len(sample.token_ids)
        finished = sample.finish_reason is not None
        text, token_ids, positions = sample.text, list(sample.token_ids), list(sample.logprobs or [])
        if not state.started and request.echo:
            text = self._echo(request, prompt_index) + text
            if request.logprobs is not None:
                token_ids = output.prompt_token_ids + token_ids
                positions = list(prompt_positions or [None] * len(output.prompt_token_ids)) + positions
        if not (text or finished or (token_ids and request.logprobs is not None)):
            return None
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._logprobs(token_ids, positions, state.text_offset)
            state.text_offset += sum(len(t) for t in logprobs["tokens"])
        state.started = True
        return {"index": prompt_index * request.n + sample.index, "text": text, "logprobs": logprobs,
                "finish_reason": sample.finish_reason, "stop_reason": sample.stop_reason}


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
