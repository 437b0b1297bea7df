"""Engine start-up: KV-cache sizing, the context-length check, the start-up log."""

from __future__ import annotations

import logging

import pytest

from fw.core.errors import FwError


def test_kv_cache_is_sized_from_the_cpu_budget_and_logged(tiny_checkpoint, make_llm, caplog):
    with caplog.at_level(logging.INFO, logger="fw"):
        llm = make_llm(tiny_checkpoint("llama"), kv_cache_memory_bytes=2**20)
    # 2 layers x (keys + values) x 16 tokens x 2 kv heads x 16 dims x 4 bytes = 8 KiB per block.
    assert llm.engine.block_manager.num_blocks == 2**20 // 8192
    assert "KV cache: 128 blocks of 16 tokens = 2048 tokens" in caplog.text
    assert "maximum concurrency at 512 tokens per request: 4.00x" in caplog.text


def test_block_override_wins_and_a_context_that_cannot_fit_is_refused(tiny_checkpoint, make_llm):
    llm = make_llm(tiny_checkpoint("llama"), num_gpu_blocks_override=40, block_size=16)
    assert llm.engine.block_manager.num_blocks == 40
    with pytest.raises(FwError, match=r"--max-model-len 512 does not fit .* the largest value that fits is 32"):
        make_llm(tiny_checkpoint("llama"), num_gpu_blocks_override=2)


def test_max_model_len_defaults_to_the_model_limit_and_can_be_lowered(tiny_checkpoint, make_llm):
    assert make_llm(tiny_checkpoint("llama")).engine.max_model_len == 512
    assert make_llm(tiny_checkpoint("llama"), max_model_len="128").engine.max_model_len == 128
