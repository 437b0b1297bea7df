"""``POST /v1/chat/completions``: a conversation rendered by the chat template, one engine request.

With ``--reasoning-parser`` the output is split into ``reasoning_content`` and ``content``
(whole for a response, delta by delta for a stream).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from fw.core.engine.outputs import CompletionOutput, RequestOutput
from fw.core.engine.sequence import PositionLogprobs
from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.protocol import MIN_LOGPROB, ChatCompletionRequest, usage
from fw.entrypoints.openai.serving_completion import prompt_logprobs

if TYPE_CHECKING:
    from fw.entrypoints.openai.serving import EngineStream, OpenAIServing
    from fw.core.interfaces import ReasoningParser


@dataclass
class _ChoiceState:
    """What a stream has sent so far for one choice (its text only for the reasoning parser)."""

    text: str = ""
    num_tokens: int = 0
    parser: ReasoningParser | None = None


class ChatHandler:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving

    async def create(self, request: ChatCompletionRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        serving = self.serving
        if request.top_logprobs is not None and not request.logprobs:
            raise APIError("top_logprobs needs logprobs to be true", param="top_logprobs")
        if request.prompt_logprobs is not None and request.stream:
            raise APIError("prompt_logprobs is not available when stream is true", param="prompt_logprobs")
        params = serving.sampling_params(request, request.requested_max_tokens)
        prompt_text, prompt_ids = await serving.render_prompt(request)
        serving.log_request(request_id, [prompt_text], params)
        job = (prompt_ids, params, f"chatcmpl-{request_id}")
        # Without a generation prompt the model goes on with the last message, in its role.
        role = serving.frontend.response_role if request.generation_prompt() else request.messages[-1].role
        if request.stream:
            [stream] = await serving.start(request, [job])
            return serving.sse_stream(self._stream(request, request_id, stream, role, len(prompt_ids)))
        [output] = await serving.run(request, [job])
        return self._response(request, request_id, output, role)

    # ---------------------------------------------------------------- shared pieces

    def _parser(self) -> ReasoningParser | None:
        cls = self.serving.reasoning_parser_cls
        return cls(self.serving.tokenizer) if cls is not None else None

    def _logprobs(self, token_ids: Sequence[int], positions: Sequence[PositionLogprobs],
                  num_top: int) -> list[dict[str, Any]]:
        """OpenAI's chat shape: per token ``{token, logprob, bytes, top_logprobs}``, the top k by rank."""
        entries = []
        for token_id, position in zip(token_ids, positions):
            top = sorted(((t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= num_top),
                         key=lambda item: item[1].rank)
            entries.append({**self._token(token_id, position[token_id].logprob),
                            "top_logprobs": [self._token(t, lp.logprob) for t, lp in top]})
        return entries

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": self.serving.token_text(token_id), "logprob": max(logprob, MIN_LOGPROB),
                "bytes": self.serving.token_bytes(token_id)}

    def _response(self, request: ChatCompletionRequest, request_id: str, output: RequestOutput,
                  role: str) -> dict[str, Any]:
        choices = [self._choice(request, sample, role) for sample in output.outputs]
        num_completion_tokens = sum(len(s.token_ids) for s in output.outputs)
        response = {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.serving.model_name, "choices": choices, "system_fingerprint": None,
                    "usage": usage(len(output.prompt_token_ids), num_completion_tokens)}
        if request.prompt_logprobs is not None:
            response["prompt_logprobs"] = prompt_logprobs(self.serving, output)
        return response

    def _choice(self, request: ChatCompletionRequest, sample: CompletionOutput, role: str) -> dict[str, Any]:
        reasoning, content = None, sample.text
        parser = self._parser()
        if parser is not None:
            reasoning, content = parser.extract_reasoning(sample.text)
        logprobs = None
        if request.logprobs:
            logprobs = {"content": self._logprobs(sample.token_ids, sample.logprobs or [], request.top_logprobs or 0)}
        message = {"role": role, "content": content, "reasoning_content": reasoning, "tool_calls": []}
        return {"index": sample.index, "message": message, "logprobs": logprobs,
                "finish_reason": sample.finish_reason, "stop_reason": sample.stop_reason}

    # ---------------------------------------------------------------- streaming

    async def _stream(self, request: ChatCompletionRequest, request_id: str, stream: EngineStream,
                      role: str, num_prompt_tokens: int) -> AsyncIterator[dict[str, Any]]:
        header = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
                  "model": self.serving.model_name}
        states = [_ChoiceState(parser=self._parser()) for _ in range(request.n)]
        try:
            for index in range(request.n):
                choice = {"index": index, "delta": {"role": role, "content": ""}, "logprobs": None,
                          "finish_reason": None}
                yield self._chunk(header, request, choice, num_prompt_tokens, 0)
            async for output in stream:
                for sample in output.outputs:
                    state = states[sample.index]
                    choice = self._delta(request, sample, state)
                    if choice is not None:
                        yield self._chunk(header, request, choice, num_prompt_tokens, state.num_tokens)
            if request.include_usage:
                yield {**header, "choices": [],
                       "usage": usage(num_prompt_tokens, sum(s.num_tokens for s in states))}
        finally:
            await stream.aclose()

    @staticmethod
    def _chunk(header: dict[str, Any], request: ChatCompletionRequest, choice: dict[str, Any],
               num_prompt_tokens: int, num_tokens: int) -> dict[str, Any]:
        chunk = {**header, "choices": [choice], "usage": None}
        if request.continuous_usage_stats:
            chunk["usage"] = usage(num_prompt_tokens, num_tokens)
        return chunk

    def _delta(self, request: ChatCompletionRequest, sample: CompletionOutput,
               state: _ChoiceState) -> dict[str, Any] | None:
        """The choice's part of the next chunk, from the engine's delta (None: nothing to send yet)."""
        finished = sample.finish_reason is not None
        text = sample.text
        delta: dict[str, Any] = {}
        if text and state.parser is not None:
            current = state.text + text
            parsed = state.parser.extract_reasoning_streaming(state.text, current, text)
            if parsed is not None and parsed.reasoning_content:
                delta["reasoning_content"] = parsed.reasoning_content
            if parsed is not None and parsed.content:
                delta["content"] = parsed.content
            state.text = current  # the parser has seen it even when it showed nothing yet: never pass it twice
        elif text:
            delta["content"] = text
        state.num_tokens += len(sample.token_ids)
        logprobs = None
        if request.logprobs and sample.token_ids:
            logprobs = {"content": self._logprobs(sample.token_ids, sample.logprobs or [], request.top_logprobs or 0)}
        if not (delta or finished or logprobs):
            return None
        return {"index": sample.index, "delta": delta, "logprobs": logprobs,
                "finish_reason": sample.finish_reason, "stop_reason": sample.stop_reason}
