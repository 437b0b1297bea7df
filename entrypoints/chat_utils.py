"""Chat prompts: the one renderer that ``fw.LLM.chat`` and the OpenAI server share, so that a
conversation becomes the same token ids offline and over HTTP.

:func:`render_chat_prompt` goes the same way for both:

1. The template: the one given (``--chat-template``, ``LLM.chat(chat_template=...)``: a file,
   or the template itself), else the tokenizer's own.
2. The messages as that template reads them: each content as one string, or as a list of
   text parts ("openai"), detected from the template unless told (vLLM's
   ``--chat-template-content-format``).
3. The text, from the tokenizer's ``apply_chat_template(tokenize=False)``, which compiles
   templates in Jinja's ``ImmutableSandboxedEnvironment`` (transformers' choice too): a
   template can read its variables but not reach Python internals (``().__class__`` raises
   ``SecurityError``) or mutate what it is given.
4. The token ids: the text encoded without special tokens by default, since the template
   writes them (BOS...) itself.

Problems with the template or the messages raise ``InvalidRequestError`` naming the field. A
server runs steps 1 to 3 off its event loop (:func:`render_chat_text`), and templates sent by
clients in a separate process under a time and a size budget
(``fw.entrypoints.openai.template_sandbox``).
This module needs jinja2 and nothing of the server (no fastapi, no pydantic), so that
``fw.LLM`` imports it where the server's packages are not installed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fw.core.config.base import ConfigError
from fw.core.errors import InvalidRequestError

ContentFormat = Literal["string", "openai"]

# Characters that make a --chat-template value a template rather than a file name (vLLM's rule).
_TEMPLATE_CHARS = "{}\n"

# apply_chat_template's own parameters (and the names the template receives from it):
# chat_template_kwargs must not override them.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "sanitize_control_tokens", "padding", "truncation",
    "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs",
})


def load_chat_template(value: str | None) -> str | None:
    """``--chat-template``: the contents of a file, or the value itself when it is a template."""
    if value is None:
        return None
    try:
        is_file = Path(value).expanduser().is_file()
    except OSError:  # an inline template can be too long to be a file name
        is_file = False
    if is_file:
        return Path(value).expanduser().read_text(encoding="utf-8")
    if any(char in value for char in _TEMPLATE_CHARS):
        return value
    raise ConfigError(f"chat_template {value!r} is not a file, and does not look like a Jinja template either")


def _is_content(node: jinja2.nodes.Node, content_names: set[str]) -> bool:
    """Whether ``node`` reads a message's content: ``m['content']``, ``m.content`` or a name bound to it."""
    while isinstance(node, (jinja2.nodes.Filter, jinja2.nodes.Test)) and node.node is not None:
        node = node.node  # message['content'] | selectattr(...)
    if isinstance(node, jinja2.nodes.Getitem):
        return isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == "content"
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr == "content"
    return isinstance(node, jinja2.nodes.Name) and node.name in content_names


@functools.lru_cache(maxsize=32)
def detect_content_format(template: str) -> ContentFormat:
    """'openai' when the template loops over a message's content (a list of parts), else 'string'."""
    try:
        ast = ImmutableSandboxedEnvironment().parse(template)
    except (jinja2.TemplateSyntaxError, RecursionError):
        return "string"  # rendering will report the error
    content_names = {
        node.target.name
        for node in ast.find_all(jinja2.nodes.Assign)
        if isinstance(node.target, jinja2.nodes.Name) and _is_content(node.node, set())
    }
    loops = ast.find_all(jinja2.nodes.For)
    return "openai" if any(_is_content(loop.iter, content_names) for loop in loops) else "string"


def _text_parts(content: list[Any], where: str) -> list[str]:
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise InvalidRequestError(f"{where}[{j}] has type {kind!r}; only 'text' content parts are supported",
                                      f"{where}[{j}].type")
        if not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"{where}[{j}] needs a 'text' string", f"{where}[{j}].text")
        texts.append(part["text"])
    return texts


def to_conversation(messages: list[dict[str, Any]], content_format: ContentFormat) -> list[dict[str, Any]]:
    """Messages as the template reads them: content as one string, or as a list of text parts.

    Other keys of a message (``name``, ``tool_calls``...) reach the template as they are.
    """
    conversation = []
    for i, message in enumerate(messages):
        entry = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            texts = _text_parts(content, f"messages[{i}].content")
            content = "\n".join(texts) if content_format == "string" else [{"type": "text", "text": t} for t in texts]
        elif isinstance(content, str) and content_format == "openai":
            content = [{"type": "text", "text": content}]
        entry["content"] = content
        conversation.append(entry)
    return conversation


@dataclass(frozen=True)
class ChatPrompt:
    """Everything a chat template renders from: what :func:`prepare_chat` built."""

    conversation: list[dict[str, Any]]
    template: str
    add_generation_prompt: bool
    continue_final_message: bool
    tools: list[dict[str, Any]] | None
    template_kwargs: dict[str, Any]


def prepare_chat(tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None,
                 content_format: ContentFormat | Literal["auto"] = "auto", add_generation_prompt: bool = True,
                 continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None) -> ChatPrompt:
    """Steps 1 and 2: the template and the conversation as it reads it (cheap; nothing renders yet)."""
    try:
        template = tokenizer.get_chat_template(chat_template)
    except ValueError:
        raise InvalidRequestError("the model has no chat template; give one (fw serve --chat-template, "
                                  "or LLM.chat(chat_template=...))") from None
    template_kwargs = chat_template_kwargs or {}
    reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(template_kwargs))
    if reserved:
        raise InvalidRequestError(f"chat_template_kwargs cannot set {', '.join(reserved)}; use the request's own "
                                  "fields", "chat_template_kwargs")
    if content_format == "auto":
        content_format = detect_content_format(template)
    return ChatPrompt(to_conversation(messages, content_format), template, add_generation_prompt,
                      continue_final_message, tools, template_kwargs)


def render_chat(tokenizer: Any, prompt: ChatPrompt) -> str:
    """Step 3: the prompt text, rendered in the sandbox.

    A template is a program run on the request's data: whatever it raises (a template error, a
    sandbox refusal, ``range()`` past the sandbox's limit, recursion too deep) is the request's
    problem, an ``InvalidRequestError``. ``MemoryError`` is left to the caller.
    """
    try:
        return tokenizer.apply_chat_template(
            prompt.conversation,
            tools=prompt.tools,
            chat_template=prompt.template,
            add_generation_prompt=prompt.add_generation_prompt,
            continue_final_message=prompt.continue_final_message,
            tokenize=False,
            **prompt.template_kwargs,
        )
    except jinja2.exceptions.SecurityError as e:
        raise InvalidRequestError(f"the chat template tried an operation the sandbox forbids: {e}") from None
    except jinja2.TemplateError as e:
        raise InvalidRequestError(f"the chat template could not be rendered: {e}") from None
    except (ValueError, TypeError) as e:
        # transformers' messages (e.g. for continue_final_message) go on to dump the whole chat
        raise InvalidRequestError(f"the conversation could not be rendered: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InvalidRequestError("the chat template could not be rendered: it recursed too deeply") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        first_line = (str(e).splitlines() or [""])[0][:500]
        raise InvalidRequestError(f"the chat template could not be rendered: {type(e).__name__}: {first_line}") \
            from None


def render_chat_text(tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None,
                     content_format: ContentFormat | Literal["auto"] = "auto", add_generation_prompt: bool = True,
                     continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
                     chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """Steps 1 to 3: the prompt text a conversation renders to."""
    return render_chat(tokenizer, prepare_chat(
        tokenizer, messages, chat_template=chat_template, content_format=content_format,
        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message, tools=tools,
        chat_template_kwargs=chat_template_kwargs))


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, Any]], *, add_special_tokens: bool = False,
                       **options: Any) -> tuple[str, list[int]]:
    """The prompt a conversation renders to: its text and its token ids (see the module's steps).

    ``options`` are :func:`render_chat_text`'s: ``chat_template`` is the template itself
    (:func:`load_chat_template` reads a file), or None for the tokenizer's own.
    """
    text = render_chat_text(tokenizer, messages, **options)
    return text, tokenizer.encode(text, add_special_tokens=add_special_tokens)
