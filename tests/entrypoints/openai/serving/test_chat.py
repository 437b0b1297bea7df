"""/v1/chat/completions in-process: outputs, logprobs, streaming, templates, reasoning."""

from __future__ import annotations

from typing import ClassVar

import pytest

from fw.core.engine.sampling_params import SamplingParams
from fw.entrypoints.chat_utils import detect_content_format
from fw.core.interfaces import DeltaMessage, ReasoningParser
from fw.core.plugins import load_plugins
from fw.core.registry import PluginInfo

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick brown fox"}]


def greedy(api, **body):
    return api.chat(**{"messages": MESSAGES, "temperature": 0, "max_tokens": 12, **body})


def test_greedy_chat_equals_offline_llm_chat(api, llm):
    expected = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    response = greedy(api)
    assert response["object"] == "chat.completion" and response["id"].startswith("chatcmpl-")
    choice = response["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == expected.outputs[0].text
    assert choice["finish_reason"] == expected.outputs[0].finish_reason
    assert response["usage"] == {"prompt_tokens": len(expected.prompt_token_ids),
                                 "completion_tokens": len(expected.outputs[0].token_ids),
                                 "total_tokens": len(expected.prompt_token_ids) + len(expected.outputs[0].token_ids)}
    # The template writes the special tokens; tokenizing must not add them a second time.
    rendered = api.serving.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert response["usage"]["prompt_tokens"] == len(api.serving.tokenizer.encode(rendered, add_special_tokens=False))


def test_max_completion_tokens_wins_over_max_tokens(api):
    response = api.chat(messages=MESSAGES, max_tokens=9, max_completion_tokens=3, ignore_eos=True)
    assert response["usage"]["completion_tokens"] == 3
    assert response["choices"][0]["finish_reason"] == "length"


def test_chat_logprobs_shape(api):
    response = greedy(api, logprobs=True, top_logprobs=3, ignore_eos=True)
    choice = response["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == response["usage"]["completion_tokens"] == 12
    tokenizer = api.serving.tokenizer
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        top = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert entry["logprob"] == pytest.approx(top[0])  # greedy: the sampled token is the likeliest
        assert entry["top_logprobs"][0]["token"] == entry["token"]
    # bytes are each token's own bytes, even for pieces of a character: together they are the text.
    pieces = [bytes(e["bytes"]) for e in content if e["token"] not in tokenizer.all_special_tokens]
    assert b"".join(pieces).decode("utf-8", errors="replace") == choice["message"]["content"]
    assert greedy(api)["choices"][0]["logprobs"] is None


def test_n_choices(api):
    choices = greedy(api, n=2)["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["message"]["content"] == choices[1]["message"]["content"]


def test_stream_deltas_concatenate_to_the_message(api, sse_events):
    body = dict(messages=MESSAGES, temperature=0, max_tokens=16, n=2, logprobs=True)
    full = api.chat(**body)
    chunks = sse_events(api.chat(stream=True, stream_options={"include_usage": True}, **body))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first = [c["choices"][0] for c in chunks[:2]]
    assert [(c["index"], c["delta"]) for c in first] == [(0, {"role": "assistant", "content": ""}),
                                                         (1, {"role": "assistant", "content": ""})]
    texts, finish, num_logprobs = {0: "", 1: ""}, {}, {0: 0, 1: 0}
    for chunk in chunks[2:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        num_logprobs[choice["index"]] += len((choice["logprobs"] or {"content": []})["content"])
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    for choice in full["choices"]:
        assert texts[choice["index"]] == choice["message"]["content"]
        assert finish[choice["index"]] == choice["finish_reason"]
        assert num_logprobs[choice["index"]] == len(choice["logprobs"]["content"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def test_stream_with_stop_string_and_continuous_usage(api, sse_events):
    text = greedy(api, max_tokens=24)["choices"][0]["message"]["content"]
    stop = next(text[i:i + 3] for i in range(6, len(text) - 3) if text[i:i + 3].isascii())
    body = dict(messages=MESSAGES, temperature=0, max_tokens=24, stop=stop)
    expected = api.chat(**body)["choices"][0]
    chunks = sse_events(api.chat(stream=True, stream_options={"continuous_usage_stats": True}, **body))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected["message"]["content"]
    assert expected["message"]["content"] == text[:text.find(stop)]
    assert chunks[-1]["choices"][0]["stop_reason"] == stop
    assert all(c["usage"]["prompt_tokens"] == chunks[0]["usage"]["prompt_tokens"] for c in chunks)


# ---------------------------------------------------------------- templates


def rendered(api, **body) -> str:
    result = api.tokenize(**{"messages": [{"role": "user", "content": "hi"}], **body})
    assert result["count"] == len(result["tokens"])
    return api.serving.tokenizer.decode(result["tokens"])


def test_chat_template_from_a_file_and_inline(make_api, tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text("FILE:{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert rendered(make_api(chat_template=str(path))) == "FILE:hi"
    assert rendered(make_api(chat_template="INLINE:{{ messages[0]['content'] }}")) == "INLINE:hi"


def test_chat_template_that_is_neither_file_nor_template_fails_at_start(make_api):
    from fw.core.config.base import ConfigError

    with pytest.raises(ConfigError, match="not a file"):
        make_api(chat_template="/no/such/template.jinja")


def test_chat_template_kwargs_reach_the_template(make_api):
    api = make_api(chat_template="{{ messages[0]['content'] }}[{{ flavor | default('none') }}]")
    assert rendered(api) == "hi[none]"
    assert rendered(api, chat_template_kwargs={"flavor": "mint"}) == "hi[mint]"
    error = api.error("tokenize", {"messages": [{"role": "user", "content": "hi"}],
                                   "chat_template_kwargs": {"tokenize": True}})
    assert error.param == "chat_template_kwargs"


def test_generation_prompt_and_continue_final_message(api):
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the qu"}]
    assert rendered(api, add_generation_prompt=True) == "<|user|>hi</s><|assistant|>"
    assert rendered(api, add_generation_prompt=False) == "<|user|>hi</s>"
    # Continuing: the assistant message stays open (no end-of-turn) and no new turn starts.
    assert rendered(api, messages=conversation, continue_final_message=True) == "<|user|>hi</s><|assistant|>the qu"
    response = api.chat(messages=conversation, continue_final_message=True, max_tokens=4, ignore_eos=True)
    assert response["choices"][0]["message"]["role"] == "assistant"
    assert response["usage"]["prompt_tokens"] == len(api.serving.tokenizer.encode("<|user|>hi</s><|assistant|>the qu"))
    error = api.error("chat_completions", {"messages": conversation, "continue_final_message": True,
                                           "add_generation_prompt": True})
    assert error.status_code == 400 and "continue_final_message" in error.message


def test_content_parts_and_the_content_format(make_api):
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    string_api = make_api(chat_template="{{ messages[0]['content'] }}")
    assert rendered(string_api, messages=[{"role": "user", "content": parts}]) == "a\nb"
    loops = "{% for m in messages %}{% for p in m['content'] %}{{ p['text'] }}|{% endfor %}{% endfor %}"
    openai_api = make_api(chat_template=loops)
    assert rendered(openai_api) == "hi|"  # auto-detected: a string reaches the template as one text part
    assert rendered(openai_api, messages=[{"role": "user", "content": parts}]) == "a|b|"
    forced = make_api(chat_template=loops, chat_template_content_format="string")
    assert rendered(forced) == "||"  # told "string": the loop runs over the characters, which have no text
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    error = string_api.error("tokenize", {"messages": [{"role": "user", "content": image}]})
    assert error.param == "messages[0].content[0].type"


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ messages[0]['content'] }}", "string"),
    ("{% for m in messages %}{% for part in m['content'] %}{{ part.text }}{% endfor %}{% endfor %}", "openai"),
    ("{% for m in messages %}{% for part in m.content | selectattr('type') %}x{% endfor %}{% endfor %}", "openai"),
    ("{% for m in messages %}{% set c = m['content'] %}{% for p in c %}x{% endfor %}{% endfor %}", "openai"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", "string"),
    ("{% broken", "string"),
])
def test_detect_content_format(template, expected):
    assert detect_content_format(template) == expected


def test_request_chat_template_refused_unless_trusted(api, make_api):
    body = {"messages": [{"role": "user", "content": "hi"}], "chat_template": "R:{{ messages[0]['content'] }}"}
    error = api.error("chat_completions", body)
    assert error.status_code == 400 and error.param == "chat_template"
    assert "--trust-request-chat-template" in error.message
    assert rendered(make_api(trust_request_chat_template=True), chat_template=body["chat_template"]) == "R:hi"


@pytest.mark.parametrize("escape", [
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch pwned') }}",
    "{% set x = messages.append({'role': 'x'}) %}",  # the immutable sandbox forbids mutation too
])
def test_sandbox_escape_in_a_trusted_template_is_refused(make_api, escape, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    api = make_api(trust_request_chat_template=True)
    error = api.error("chat_completions", {"messages": [{"role": "user", "content": "hi"}], "chat_template": escape})
    assert error.status_code == 400 and "sandbox" in error.message
    assert not (tmp_path / "pwned").exists()


def test_request_templates_render_under_the_servers_budgets(make_api):
    api = make_api(trust_request_chat_template=True, request_chat_template_max_bytes=100,
                   request_chat_template_timeout=0.5)
    messages = [{"role": "user", "content": "hi"}]
    error = api.error("chat_completions", {"messages": messages, "chat_template": "{{ 'x' * 101 }}"})
    assert (error.status_code, error.param) == (400, "chat_template")
    assert "output budget of 100 B (--request-chat-template-max-bytes)" in error.message
    error = api.error("tokenize", {"messages": messages, "chat_template": "{% for i in range(100000) %}"
                                   "{% for j in range(100000) %}{% endfor %}{% endfor %}"})
    assert "time budget of 0.5 s (--request-chat-template-timeout)" in error.message
    assert api.tokenize(messages=messages, chat_template="{{ 'x' * 100 }}")["count"] > 0


# ---------------------------------------------------------------- one renderer for LLM.chat and the server

BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PARTS_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{% for p in m['content'] %}{{ p['text'] }}{% endfor %}"
                  "</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
TOOLS_TEMPLATE = ("{% if tools %}<|system|>{{ tools | length }} tools</s>{% endif %}{% for m in messages %}"
                  "<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}{{ flavor | default('') }}"
                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TEMPLATES = {"the model's": None, "bos": BOS_TEMPLATE, "content parts": PARTS_TEMPLATE, "tools": TOOLS_TEMPLATE}
CONVERSATIONS = {
    "plain": dict(messages=MESSAGES),
    "parts": dict(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                         {"type": "text", "text": "b"}]}]),
    "continue": dict(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the qu"}],
                     continue_final_message=True),
    "no generation prompt": dict(messages=MESSAGES, add_generation_prompt=False),
    "tools and kwargs": dict(messages=MESSAGES, tools=[{"type": "function", "function": {"name": "f"}}],
                             chat_template_kwargs={"flavor": "mint"}),
}


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_llm_chat_and_the_server_give_the_same_prompt_token_ids(make_api, llm, template, case):
    body, chat_template = CONVERSATIONS[case], TEMPLATES[template]
    api = make_api(chat_template=chat_template)
    server_ids = api.tokenize(**body)["tokens"]
    assert api.chat(**body, max_tokens=1)["usage"]["prompt_tokens"] == len(server_ids)
    (output,) = llm.chat(body["messages"], SamplingParams(max_tokens=1), use_tqdm=False, chat_template=chat_template,
                         add_generation_prompt=body.get("add_generation_prompt", True),
                         continue_final_message=body.get("continue_final_message", False),
                         tools=body.get("tools"), chat_template_kwargs=body.get("chat_template_kwargs"))
    assert output.prompt_token_ids == server_ids
    if chat_template is BOS_TEMPLATE:
        bos = api.serving.tokenizer.bos_token_id
        assert server_ids[0] == bos and server_ids[1] != bos  # the template's BOS, once


# ---------------------------------------------------------------- reasoning


class MarkerReasoningParser(ReasoningParser):
    """Reasoning is everything before ``end``, the answer everything after (a stand-in for </think>)."""

    name = "test-marker"
    end: ClassVar[str] = ""

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        if self.end not in model_output:
            return None, model_output
        reasoning, _, content = model_output.partition(self.end)
        return reasoning, content or None

    def extract_reasoning_streaming(self, previous_text: str, current_text: str,
                                    delta_text: str) -> DeltaMessage | None:
        old_reasoning, old_content = self._split(previous_text)
        new_reasoning, new_content = self._split(current_text)
        reasoning, content = new_reasoning[len(old_reasoning):], new_content[len(old_content):]
        if not reasoning and not content:
            return None
        return DeltaMessage(content=content or None, reasoning_content=reasoning or None)

    def _split(self, text: str) -> tuple[str, str]:
        if self.end in text:
            reasoning, _, content = text.partition(self.end)
            return reasoning, content
        for cut in range(len(self.end) - 1, 0, -1):  # hold back a marker still arriving
            if text.endswith(self.end[:cut]):
                return text[:-cut], ""
        return text, ""


def test_reasoning_parser_splits_reasoning_content(make_api, sse_events):
    text = greedy(make_api(), max_tokens=24)["choices"][0]["message"]["content"]
    start = next(i for i in range(len(text) // 3, len(text) - 4)
                 if text[i:i + 3].isascii() and text.find(text[i:i + 3]) == i)
    MarkerReasoningParser.end = text[start:start + 3]
    plugins = load_plugins()
    plugins.reasoning_parsers.add("test-marker", MarkerReasoningParser, PluginInfo("tests", "tests", "0"))
    api = make_api(plugins=plugins, reasoning_parser="test-marker")

    message = greedy(api, max_tokens=24)["choices"][0]["message"]
    assert message["reasoning_content"] == text[:start]
    assert message["content"] == text[start + 3:]

    chunks = sse_events(api.chat(stream=True, messages=MESSAGES, temperature=0, max_tokens=24))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == text[:start]
    assert "".join(d.get("content") or "" for d in deltas) == text[start + 3:]


def test_response_role(make_api, sse_events):
    api = make_api(response_role="bot")
    assert greedy(api, max_tokens=2)["choices"][0]["message"]["role"] == "bot"
    chunks = sse_events(api.chat(messages=MESSAGES, max_tokens=2, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "bot", "content": ""}
    # Without a generation prompt the reply continues the last message, in that message's role.
    response = api.chat(messages=MESSAGES, add_generation_prompt=False, max_tokens=2)
    assert response["choices"][0]["message"]["role"] == "user"
