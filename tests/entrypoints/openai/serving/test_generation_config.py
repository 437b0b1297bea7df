"""Request fields left out take the model's generation_config defaults, as in vLLM."""

from __future__ import annotations

import json
import shutil

import pytest

from fw.core.config import EngineConfig
from fw.core.engine.async_engine import AsyncEngine


@pytest.fixture(scope="module")
def defaults_api(checkpoint, plugins, tmp_path_factory, make_api):
    # The same weights, plus a generation_config.json: top_k=1 (greedy) and at most 5 new tokens.
    model = tmp_path_factory.mktemp("with-generation-config") / "model"
    shutil.copytree(checkpoint, model)
    (model / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 1, "max_new_tokens": 5}))
    config = EngineConfig.from_values({"model": str(model), "dtype": "float32", "max_model_len": 512,
                                       "kv_cache_memory_bytes": 64 * 2**20})
    engine = AsyncEngine.from_config(config, plugins)
    yield make_api(engine=engine)
    engine.shutdown()


def test_generation_config_supplies_the_defaults(defaults_api, api):
    messages = [{"role": "user", "content": "the quick brown fox"}]
    response = defaults_api.chat(messages=messages, ignore_eos=True)
    assert response["usage"]["completion_tokens"] == 5  # max_new_tokens
    greedy = api.chat(messages=messages, ignore_eos=True, temperature=0, max_tokens=5)
    assert response["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    # What the request says wins over the defaults.
    assert defaults_api.chat(messages=messages, ignore_eos=True, max_tokens=7)["usage"]["completion_tokens"] == 7
    sampled = defaults_api.chat(messages=messages, ignore_eos=True, top_k=0, n=4, seed=3)["choices"]
    assert len({c["message"]["content"] for c in sampled}) > 1  # top_k=0 lifts the default greedy top_k=1
