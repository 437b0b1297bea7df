"""The offline API: ``fw.LLM`` and ``generate`` / ``chat``, shaped like vLLM's.

Requests run as ``RequestOutputKind.FINAL_ONLY`` (the engine hands each one over once, when
it finishes), and the results are the whole outputs, as vLLM's ``LLM`` returns them.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Sequence, Union

from tqdm import tqdm

from fw.core.config.engine import EngineConfig
from fw.core.engine.llm_engine import LLMEngine
from fw.core.engine.outputs import RequestOutput
from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams
from fw.core.plugins import Plugins
from fw.entrypoints.chat_utils import load_chat_template, render_chat_prompt

#: A prompt: text, or vLLM's TokensPrompt ``{"prompt_token_ids": [...]}`` / TextPrompt ``{"prompt": "..."}``.
PromptType = Union[str, dict[str, Any]]


class LLM:
    """An engine for offline generation.

    ``LLM(model=None)`` uses the embedded default model. Every keyword is an option of
    ``fw serve`` (``max_model_len="4k"``, ``dtype="float32"``, ``enable_prefix_caching=False``...).
    """

    def __init__(self, model: str | None = None, *, plugins: Plugins | None = None, **options: Any) -> None:
        config = EngineConfig.from_values({"model": model, **options})
        self.engine = LLMEngine(config, plugins)

    def get_tokenizer(self) -> Any:
        return self.engine.info.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.engine.default_sampling_params()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in input order.

        An invalid prompt or parameter raises ``InvalidRequestError`` before anything runs. A
        request that fails inside a step (processing its data raised) does not stop the batch:
        as vLLM's ``FinishReason.ERROR``, its output is finished with finish reason "error" on
        its samples, no text, and ``RequestOutput.error`` saying why (the traceback is logged);
        the other prompts' outputs are as they would be without it. ``EngineDeadError`` is
        raised when the model cannot run at all.
        """
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = [sampling_params] * len(prompts) if isinstance(sampling_params, SamplingParams) else list(sampling_params)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} sampling params for {len(prompts)} prompts")
        if priority is not None and len(priority) != len(prompts):
            raise ValueError(f"got {len(priority)} priorities for {len(prompts)} prompts")
        request_ids = []
        try:
            for i, (prompt, params) in enumerate(zip(prompts, params_list)):
                request_id = self.engine.new_request_id()
                self.engine.add_request(request_id, _prompt_input(prompt),
                                        params.clone(output_kind=RequestOutputKind.FINAL_ONLY),
                                        priority=priority[i] if priority else 0)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:
                self.engine.abort_request(request_id)
            raise
        return self._run(request_ids, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", unit=" req", disable=not use_tqdm,
                   dynamic_ncols=True)
        start, num_prompt_tokens, num_output_tokens = time.perf_counter(), 0, 0
        with bar:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():  # FINAL_ONLY: each is a finished request
                    finished[output.request_id] = output
                    num_prompt_tokens += len(output.prompt_token_ids)
                    num_output_tokens += sum(len(o.token_ids) for o in output.outputs)
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"input: {num_prompt_tokens / elapsed:.1f} tok/s, "
                                        f"output: {num_output_tokens / elapsed:.1f} tok/s", refresh=False)
                    bar.update(1)
        return [finished[request_id] for request_id in request_ids]

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        chat_template_content_format: Literal["auto", "string", "openai"] = "auto",
    ) -> list[RequestOutput]:
        """Render each conversation as ``fw serve`` renders a chat request, then generate.

        ``chat_template`` is a template or a file holding one (as ``--chat-template``); the
        same conversation gives the same prompt token ids here and over HTTP.
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        template = load_chat_template(chat_template)
        prompts = []
        for conversation in conversations:
            _, token_ids = render_chat_prompt(
                self.get_tokenizer(), conversation, chat_template=template,
                content_format=chat_template_content_format,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message, tools=tools,
                chat_template_kwargs=chat_template_kwargs)
            prompts.append({"prompt_token_ids": token_ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)


def _prompt_input(prompt: PromptType) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"]
    raise ValueError(f"a prompt must be a string or a dict with 'prompt' or 'prompt_token_ids', got {prompt!r}")
