"""Request models of the OpenAI API, with vLLM's extra sampling fields.

Types are strict: ``"3"`` is not 3 and ``"yes"`` is not true (an integer is still a number
where a float is expected, as OpenAI accepts ``temperature: 1``), and numbers must be finite;
``null`` means "not given", as in OpenAI's API.
A field this server does not know is refused (400 naming it), never accepted and ignored;
OpenAI's fields that change nothing here (``user``, ``metadata``, ``store``...) are declared
and accepted, and those whose effect fw lacks (``response_format`` other than text,
``best_of``, ``suffix``, ``functions``, ``tool_choice`` other than "none"/"auto") are refused
unless they ask for what fw does anyway. Ranges are checked by ``SamplingParams`` and the
engine, whose messages name the field; here only the types and the shapes are.

A message may carry more keys than the ones declared (``name``, ``reasoning_content``...):
they reach the chat template, which decides what they mean.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams

#: A completions prompt after validation: one text, or token ids.
Prompt = str | list[int]

#: OpenAI's floor for a log-probability, so -inf never reaches JSON.
MIN_LOGPROB = -9999.0


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object of a response."""
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens}


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_given(cls, data: Any) -> Any:
        # OpenAI's optional fields are nullable, and clients send null for "not set": the default applies.
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data


def _refuse_unless(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class FunctionDefinition(OpenAIBaseModel):
    """A tool's function, as OpenAI defines it."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class SamplingRequest(OpenAIBaseModel):
    """Fields completions and chat share: the model, sampling, stopping and streaming."""

    #: SamplingParams fields this request spells differently (chat's top_logprobs is logprobs).
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {}

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None
    prompt_logprobs: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    # OpenAI's fields that change nothing in fw's answer: accepted, and that is all.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Fields fw implements only partly: accepted where they ask for what fw does anyway.
    response_format: dict[str, Any] | None = None

    @field_validator("response_format", mode="before")
    @classmethod
    def _text_format_only(cls, value: Any) -> Any:
        _refuse_unless(value is None or value == {"type": "text"},
                       "fw supports only {\"type\": \"text\"} so far (structured output is not implemented)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            try:
                int(key)
            except ValueError:
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage_stats(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def output_logprobs(self) -> int | None:
        """How many top log-probabilities each generated token asks for (``None``: none)."""
        raise NotImplementedError

    def request_field(self, param: str | None) -> str | None:
        """The field of this request that SamplingParams' (or the engine's) ``param`` comes from."""
        name = self.RENAMED_FIELDS.get(param, param) if param is not None else None
        return name if name in type(self).model_fields else None

    def to_sampling_params(self, defaults: SamplingParams, max_tokens: int | None) -> SamplingParams:
        """fw's SamplingParams for this request.

        Fields the request leaves out take the model's defaults (``defaults``: its
        generation_config, as vLLM does); without ``max_tokens`` the engine decides how far
        the output may run. A stream gets deltas, a response one final output (vLLM's
        choice). Out-of-range values raise ``InvalidRequestError``.
        """

        def pick(name: str) -> Any:
            value = getattr(self, name)
            return getattr(defaults, name) if value is None else value

        return SamplingParams(
            n=self.n,
            temperature=pick("temperature"),
            top_p=pick("top_p"),
            top_k=pick("top_k"),
            min_p=pick("min_p"),
            presence_penalty=pick("presence_penalty"),
            frequency_penalty=pick("frequency_penalty"),
            repetition_penalty=pick("repetition_penalty"),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            logprobs=self.output_logprobs(),
            prompt_logprobs=self.prompt_logprobs,
            logit_bias=self.logit_bias,
            allowed_token_ids=self.allowed_token_ids,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            output_kind=RequestOutputKind.DELTA if self.stream else RequestOutputKind.FINAL_ONLY,
        )


def _check_prompt(value: Any) -> list[Prompt]:
    """A completions prompt in any of OpenAI's four forms, as a list of prompts."""
    form = "a string, a list of strings, a list of token ids or a list of token-id lists"

    def is_ids(item: Any) -> bool:
        return isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)

    if isinstance(value, str):
        prompts: list[Any] = [value]
    elif is_ids(value) and value:
        prompts = [value]
    elif isinstance(value, list) and all(isinstance(p, str) or (is_ids(p)) for p in value):
        prompts = value
    else:
        raise ValueError(f"the prompt must be {form}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("the prompt must not be empty")
    return prompts


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``."""

    prompt: list[Prompt]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    add_special_tokens: bool = True
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        _refuse_unless(value is None or value == n,
                       f"best_of other than n ({n}) is not supported (fw returns every sample it generates)")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        _refuse_unless(not value, "suffix is not supported (fw does not insert text)")
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> list[Prompt]:
        return _check_prompt(value)

    def output_logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(OpenAIBaseModel):
    """One message; extra keys (``name``, ``reasoning_content``...) reach the chat template as they are."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    tool_calls: list[dict[str, Any]] | None = None
    # Validated when missing too: only an assistant message with tool_calls may go without.
    content: str | list[dict[str, Any]] | None = Field(None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_present(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        _refuse_unless(value is not None or (role == "assistant" and bool(info.data.get("tool_calls"))),
                       f"a {role or ''} message needs content (only an assistant message with tool_calls may "
                       "leave it out)")
        return value


class ChatTemplateFields(OpenAIBaseModel):
    """How a conversation is rendered into a prompt (chat and tokenize requests)."""

    messages: list[ChatMessage]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ToolDefinition] | None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("messages must contain at least one message")
        return value

    def generation_prompt(self) -> bool:
        """add_generation_prompt, off when continuing the final message unless asked for explicitly."""
        if self.continue_final_message:
            if self.add_generation_prompt and "add_generation_prompt" in self.model_fields_set:
                raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
            return False
        return self.add_generation_prompt


class ChatCompletionRequest(ChatTemplateFields, SamplingRequest):
    """``POST /v1/chat/completions``."""

    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"logprobs": "top_logprobs"}

    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tool_choice: str | None = None
    # fw parses no tool calls yet: with tools, the template shows them and the model's answer is content.
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | None = None
    modalities: list[str] | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _auto_or_none(cls, value: Any) -> Any:
        if isinstance(value, dict) or value == "required":
            raise ValueError("tool_choice 'required' or a named function is not supported; use 'auto' or 'none'")
        _refuse_unless(value in (None, "none", "auto"), "tool_choice must be 'none' or 'auto'")
        return value

    @field_validator("functions", mode="before")
    @classmethod
    def _no_functions(cls, value: Any) -> Any:
        _refuse_unless(value is None, "functions (OpenAI's deprecated form of tools) is not supported; use tools")
        return value

    @field_validator("function_call", mode="before")
    @classmethod
    def _no_function_call(cls, value: Any) -> Any:
        _refuse_unless(value in (None, "none"), "function_call (deprecated by OpenAI) is not supported; use "
                       "tool_choice")
        return value

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        _refuse_unless(value is None or value == ["text"], "fw generates text only: modalities must be [\"text\"]")
        return value

    def output_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeCompletionRequest(OpenAIBaseModel):
    """``POST /tokenize`` with a prompt."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(ChatTemplateFields):
    """``POST /tokenize`` with messages: the prompt the chat template renders."""

    model: str | None = None
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIBaseModel):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[int]
