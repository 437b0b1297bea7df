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

Problems with the template or the messages raise ``InvalidRequestError`` naming the field.
This module needs jinja2 and nothing of the server (no fastapi, no pydantic), so that
``fw.LLM`` imports it where the server's packages are not installed.
"""

from __future__ import annotations

import functools
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
    except jinja2.TemplateSyntaxError:
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


def render_chat(tokenizer: Any, conversation: list[dict[str, Any]], template: str, *,
                add_generation_prompt: bool, continue_final_message: bool,
                tools: list[dict[str, Any]] | None, template_kwargs: dict[str, Any] | None) -> str:
    """The prompt text for a conversation, rendered in the sandbox."""
    template_kwargs = template_kwargs or {}
    reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(template_kwargs))
    if reserved:
        raise InvalidRequestError(f"chat_template_kwargs cannot set {', '.join(reserved)}; use the request's own "
                                  "fields", "chat_template_kwargs")
    try:
        return tokenizer.apply_chat_template(
            conversation,
            tools=tools,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **template_kwargs,
        )
    except jinja2.exceptions.SecurityError as e:
        raise InvalidRequestError(f"the chat template tried an operation the sandbox forbids: {e}") from None
    except jinja2.TemplateError as e:
        raise InvalidRequestError(f"the chat template could not be rendered: {e}") from None
    except (ValueError, TypeError) as e:
        # transformers' messages (e.g. for continue_final_message) go on to dump the whole chat
        raise InvalidRequestError(f"the conversation could not be rendered: {str(e).splitlines()[0]}") from None


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None,
                       content_format: ContentFormat | Literal["auto"] = "auto", add_generation_prompt: bool = True,
                       continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
                       chat_template_kwargs: dict[str, Any] | None = None,
                       add_special_tokens: bool = False) -> tuple[str, list[int]]:
    """The prompt a conversation renders to: its text and its token ids (see the module's steps).

    ``chat_template`` is the template itself (:func:`load_chat_template` reads a file), or None
    for the tokenizer's own.
    """
    try:
        template = tokenizer.get_chat_template(chat_template)
    except ValueError:
        raise InvalidRequestError("the model has no chat template; give one (fw serve --chat-template, "
                                  "or LLM.chat(chat_template=...))") from None
    if content_format == "auto":
        content_format = detect_content_format(template)
    text = render_chat(tokenizer, to_conversation(messages, content_format), template,
                       add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                       tools=tools, template_kwargs=chat_template_kwargs)
    return text, tokenizer.encode(text, add_special_tokens=add_special_tokens)
