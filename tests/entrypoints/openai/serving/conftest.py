"""OpenAIServing in-process on a real AsyncEngine (tiny checkpoint, float32): no HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fw.core.config import EngineConfig, FrontendConfig
from fw.core.engine.async_engine import AsyncEngine
from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.serving import OpenAIServing
from fw.core.plugins import load_plugins

ENGINE_OPTIONS = dict(dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 * 2**20)
SERVED_NAMES = ("tiny", "tiny-alias")


class Api:
    """Synchronous calls into an OpenAIServing, each on a fresh event loop."""

    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self._ids = iter(range(10**9))

    def _run(self, method: str, body: Any) -> Any:
        async def call() -> Any:
            handler = getattr(self.serving, method)
            if method in ("completions", "chat_completions"):
                result = await handler(body, f"t{next(self._ids)}")
                if not isinstance(result, dict):
                    return [event async for event in result]
                return result
            return await handler(body)

        return asyncio.run(call())

    def complete(self, **body: Any) -> Any:
        return self._run("completions", body)

    def chat(self, **body: Any) -> Any:
        return self._run("chat_completions", body)

    def tokenize(self, **body: Any) -> dict:
        return self._run("tokenize", body)

    def detokenize(self, **body: Any) -> dict:
        return self._run("detokenize", body)

    def error(self, method: str, body: Any) -> APIError:
        """The APIError a request fails with (fails the test if it succeeds)."""
        with pytest.raises(APIError) as info:
            self._run(method, body)
        return info.value


def events(lines: list[str]) -> list[dict]:
    """The JSON payloads of SSE strings; checks the framing and the closing [DONE]."""
    assert lines[-1] == "data: [DONE]\n\n"
    for line in lines:
        assert line.startswith("data: ") and line.endswith("\n\n")
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture(scope="module")
def engine(checkpoint, plugins):
    engine = AsyncEngine.from_config(EngineConfig.from_values({"model": str(checkpoint), **ENGINE_OPTIONS}), plugins)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def make_api(engine, plugins):
    """``make_api(**frontend_options)`` -> Api with that FrontendConfig (on the module's engine by default)."""

    def make(*, engine: AsyncEngine = engine, plugins: Any = plugins, **frontend: Any) -> Api:
        return Api(OpenAIServing(engine, SERVED_NAMES, FrontendConfig(**frontend), plugins))

    return make


@pytest.fixture(scope="module")
def api(make_api):
    return make_api()


@pytest.fixture(scope="module")
def sse_events():
    return events


@pytest.fixture(scope="module")
def llm(checkpoint):
    """The offline engine on the same checkpoint: the reference for greedy outputs."""
    from fw import LLM

    return LLM(str(checkpoint), **ENGINE_OPTIONS)
