"""Chat templates sent by clients: rendered in a child process under a time, output and memory
budget; every hostile template is a 400 naming its budget, and the renderer recovers."""

from __future__ import annotations

import asyncio
import time

import pytest

from fw.entrypoints.chat_utils import render_chat_text
from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.template_sandbox import TemplateSandbox

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the quick"}]
TIMEOUT = 1.0
MAX_BYTES = 2**20

HOSTILE = {
    "nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
                     "time budget of 1 s (--request-chat-template-timeout)"),
    "a gigabyte in one operation": ("{{ 'x' * 10**9 }}", "memory budget"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                 "{% endfor %}{{ ns.s|length }}", "memory budget"),
    "output over the budget": ("{% for i in range(3000) %}{{ 'y' * 1000 }}{% endfor %}",
                               "more than its output budget of 1 MiB (--request-chat-template-max-bytes)"),
    "range past the sandbox's": ("{% for a in range(10**9) %}{% endfor %}", "Range too big"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
    "sandbox escape": ("{{ ''.__class__.__mro__ }}", "the sandbox forbids"),
    "syntax error": ("{% for %}", "could not be rendered"),
    "nested too deeply to parse": ("{% if 1 %}" * 5000 + "{% endif %}" * 5000, "could not be rendered"),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint())


@pytest.fixture(scope="module")
def sandbox(tokenizer):
    sandbox = TemplateSandbox(tokenizer, timeout=TIMEOUT, max_output_bytes=MAX_BYTES)
    sandbox.start()
    yield sandbox
    sandbox.close()


def render(sandbox: TemplateSandbox, tokenizer, template: str) -> str:
    return asyncio.run(sandbox.render(MESSAGES, {"chat_template": template}))


def test_a_template_renders_as_it_does_in_process(sandbox, tokenizer) -> None:
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    expected = render_chat_text(tokenizer, MESSAGES, chat_template=template)
    assert render(sandbox, tokenizer, template) == expected == "[user] hi</s>[assistant] the quick</s>"


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_template_is_a_400_naming_its_budget_and_the_next_one_renders(sandbox, tokenizer,
                                                                                 case: str) -> None:
    template, words = HOSTILE[case]
    start = time.monotonic()
    with pytest.raises(APIError) as caught:
        render(sandbox, tokenizer, template)
    elapsed = time.monotonic() - start
    assert (caught.value.status_code, caught.value.param) == (400, "chat_template")
    assert words in caught.value.message
    assert elapsed < TIMEOUT + 10  # the budget, plus a fresh renderer's start-up
    assert render(sandbox, tokenizer, "{{ messages[0].content }}") == "hi"


def test_the_sandbox_refuses_work_once_closed(tokenizer) -> None:
    sandbox = TemplateSandbox(tokenizer, timeout=TIMEOUT, max_output_bytes=MAX_BYTES)
    sandbox.close()
    with pytest.raises(APIError) as caught:
        render(sandbox, tokenizer, "{{ 1 }}")
    assert caught.value.status_code == 503
