"""--kv-cache-dtype fp8 end to end: the doubled capacity, outputs close to the bf16 cache, the
checkpoint's k_scale/v_scale, --calculate-kv-scales, prefix caching, chunked prefill and preemption."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fw import SamplingParams
from fw.core.attention.kv_quant import KVScales, quantize_kv
from fw.core.config.base import ConfigError
from fw.core.config.engine import EngineConfig
from fw.core.errors import FwError
from fw.core.engine.isolation import probe_model
from fw.core.kv_cache import BlockManager
from fw.plugins.platforms.cpu import CpuPlatform
from fw.plugins.platforms.cpu_attention import CpuAttentionBackend

MORE_PROMPTS = ["the lazy dog jumps over", "all that glitters is not gold and the"]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5, prompt_logprobs=1)


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


def attention_layers(llm):
    return [layer.self_attn for layer in llm.engine.runner.model.model.layers]


def test_fp8_doubles_the_blocks_of_bf16_and_quadruples_float32(llama, make_llm, caplog):
    with caplog.at_level(logging.INFO, logger="fw"):
        bf16 = make_llm(llama, dtype="bfloat16", kv_cache_memory_bytes=2**20)
        fp8 = make_llm(llama, dtype="bfloat16", kv_cache_memory_bytes=2**20, kv_cache_dtype="fp8")
    # 2 layers x (keys + values) x 16 tokens x 2 kv heads x 16 dims: 4 KiB a block in bf16, 2 KiB in fp8.
    assert (bf16.engine.block_manager.num_blocks, fp8.engine.block_manager.num_blocks) == (256, 512)
    assert "KV cache: 512 blocks of 16 tokens = 8192 tokens; maximum concurrency at 512 tokens per request: " \
           "16.00x" in caplog.text
    assert "KV cache in float8_e4m3fn, 1 byte per value; scales 1.0 (the checkpoint has no k_scale" in caplog.text
    assert all(cache.dtype == torch.float8_e4m3fn for cache in fp8.engine.runner.kv_caches)

    float32 = make_llm(llama, kv_cache_memory_bytes=2**20)
    e5m2 = make_llm(llama, kv_cache_memory_bytes=2**20, kv_cache_dtype="fp8_e5m2")
    assert 4 * float32.engine.block_manager.num_blocks == e5m2.engine.block_manager.num_blocks == 512
    assert e5m2.engine.runner.kv_caches[0].dtype == torch.float8_e5m2


def max_prompt_logprob_difference(outputs, others) -> float:
    return max(abs(a.prompt_logprobs[i][t].logprob - b.prompt_logprobs[i][t].logprob)
               for a, b in zip(outputs, others) for i, t in enumerate(a.prompt_token_ids) if i > 0)


@pytest.mark.parametrize("kv_cache_dtype, max_difference, min_same", [("fp8", 0.3, 5), ("fp8_e5m2", 0.8, 2)])
def test_outputs_stay_close_to_the_bf16_cache(llama, make_llm, prompts, kv_cache_dtype, max_difference, min_same):
    """Teacher-forced log-probabilities of the prompts (chunks of 16 tokens over blocks of 8, so
    later chunks read earlier ones from the cache) and 8 greedy tokens, against the bf16 cache.

    Measured on this tiny random model (bf16 weights and activations, scales 1.0): the largest
    prompt log-probability difference is 0.19 nats with e4m3 (fp8) and 0.55 with e5m2, and 6
    (e4m3) and 3 (e5m2) of the 8 greedy outputs are equal; for scale, computing in bf16 instead
    of float32 moves the log-probabilities by up to 0.03 and changes 1 of the 8. e4m3 keeps 3
    mantissa bits (relative rounding error up to 2^-4), e5m2 only 2: fp8 (e4m3) is the default.
    """
    options = dict(dtype="bfloat16", max_num_batched_tokens=16, max_num_seqs=4, block_size=8)
    all_prompts = prompts + MORE_PROMPTS
    bf16 = make_llm(llama, **options).generate(all_prompts, GREEDY, use_tqdm=False)
    fp8 = make_llm(llama, kv_cache_dtype=kv_cache_dtype, **options).generate(all_prompts, GREEDY, use_tqdm=False)
    assert max_prompt_logprob_difference(bf16, fp8) < max_difference
    same = sum(a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(bf16, fp8))
    assert same >= min_same, f"{same} of {len(all_prompts)} greedy outputs equal"


class FakeQuantizedBackend(CpuAttentionBackend):
    """Attention over a float32 cache holding the keys and values rounded through fp8 and scaled
    back: what the fp8 cache computes, by another route."""

    def forward(self, query, key, value, kv_cache, metadata, scale, sliding_window=None, kv_scales=None):
        key = quantize_kv(key, kv_scales.k, torch.float8_e4m3fn).float() * kv_scales.k
        value = quantize_kv(value, kv_scales.v, torch.float8_e4m3fn).float() * kv_scales.v
        return super().forward(query, key, value, kv_cache, metadata, scale, sliding_window)


def test_the_fp8_cache_computes_attention_over_the_rounded_keys_and_values(llama, make_llm, prompts, monkeypatch):
    """Scales other than 1, chunked prefill, decodes in the C kernel: equal to the fake-quantized
    float32 cache within float32 rounding (measured 3e-6), the same greedy tokens."""

    def run(**options):
        llm = make_llm(llama, max_num_batched_tokens=16, max_num_seqs=4, block_size=8, **options)
        for i, attention in enumerate(attention_layers(llm)):
            attention.kv_scales = KVScales(k=0.011 * (i + 1), v=0.007 * (i + 1))
        return llm.generate(prompts, GREEDY, use_tqdm=False)

    fp8 = run(kv_cache_dtype="fp8")
    monkeypatch.setattr(CpuPlatform, "attention_backend", lambda self: FakeQuantizedBackend)
    fake = run()
    assert max_prompt_logprob_difference(fp8, fake) < 1e-4
    for a, b in zip(fp8, fake):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for chosen, position in zip(a.outputs[0].token_ids, zip(a.outputs[0].logprobs, b.outputs[0].logprobs)):
            assert position[0][chosen].logprob == pytest.approx(position[1][chosen].logprob, abs=1e-4)


def test_prefix_caching_chunked_prefill_and_preemption_leave_fp8_outputs_unchanged(llama, make_llm):
    tokenizer = make_llm(llama).get_tokenizer()
    generator = torch.Generator().manual_seed(4)
    prefix = torch.randint(5, len(tokenizer), (40,), generator=generator).tolist()
    prompts = [{"prompt_token_ids": prefix[:n] + torch.randint(5, len(tokenizer), (m,), generator=generator).tolist()}
               for n, m in [(40, 3), (40, 9), (17, 30), (0, 50), (33, 1), (40, 20)]]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    relaxed = make_llm(llama, kv_cache_dtype="fp8", enable_prefix_caching=False)
    expected = [out.outputs[0].token_ids for out in relaxed.generate(prompts, params, use_tqdm=False)]

    pressured = make_llm(llama, kv_cache_dtype="fp8", max_num_batched_tokens=8, max_num_seqs=4,
                         num_gpu_blocks_override=8, max_model_len=128)
    pressured.generate(prompts[:1], params, use_tqdm=False)  # its prefix blocks stay cached
    got = [out.outputs[0].token_ids for out in pressured.generate(prompts, params, use_tqdm=False)]
    assert pressured.engine.scheduler.num_preemptions > 0
    assert pressured.engine.block_manager.num_prefix_hits > 0
    assert got == expected


def checkpoint_with_scales(source, target, names: dict[str, float]):
    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    weights.update({name: torch.tensor([value]) for name, value in names.items()})
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_the_checkpoints_scales_are_used_and_change_the_stored_bytes(llama, make_llm, prompts, tmp_path, caplog):
    scaled = checkpoint_with_scales(llama, tmp_path / "scaled", {
        "model.layers.0.self_attn.k_scale": 0.02, "model.layers.0.self_attn.v_scale": 0.03,
        "model.layers.1.self_attn.k_proj.output_scale": 0.04, "model.layers.1.self_attn.v_proj.output_scale": 0.05,
    })
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    stored = {}
    for name, path in (("plain", llama), ("scaled", scaled)):
        with caplog.at_level(logging.INFO, logger="fw"):
            llm = make_llm(path, kv_cache_dtype="fp8", enable_prefix_caching=False)
        llm.generate(prompts[:1], params, use_tqdm=False)
        stored[name] = llm.engine.runner.kv_caches[0].view(torch.uint8).clone()
        if name == "scaled":
            assert [(a.kv_scales.k, a.kv_scales.v, a.kv_scales.source) for a in attention_layers(llm)] == [
                (pytest.approx(0.02), pytest.approx(0.03), "checkpoint"),
                (pytest.approx(0.04), pytest.approx(0.05), "checkpoint")]
    assert "scales from the checkpoint for 2 of 2 layers" in caplog.text
    assert stored["plain"].any() and not torch.equal(stored["plain"], stored["scaled"])


def test_the_checkpoints_scales_are_ignored_by_a_bf16_cache(llama, make_llm, prompts, tmp_path, caplog):
    scaled = checkpoint_with_scales(llama, tmp_path / "scaled", {"model.layers.0.self_attn.attn.k_scale": 0.02,
                                                                 "model.layers.1.self_attn.kv_scale": 0.03})
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with caplog.at_level(logging.INFO, logger="fw"):
        outputs = make_llm(scaled, dtype="bfloat16").generate(prompts, params, use_tqdm=False)
    expected = make_llm(llama, dtype="bfloat16").generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in expected]
    assert "the checkpoint's k_scale/v_scale (2 layers) are not used" in caplog.text


def test_calculate_kv_scales_sets_them_from_the_first_batch_then_keeps_them(llama, make_llm, prompts):
    llm = make_llm(llama, kv_cache_dtype="fp8", calculate_kv_scales=True)
    runner = llm.engine.runner
    blocks = BlockManager(4, 16, False)
    runner.dummy_run(20, blocks)  # a profiling forward on dummy tokens does not count
    probe_model(runner, blocks)  # nor does the health probe after a step whose requests all failed
    assert runner.kv_scales_pending and all(a.kv_scales.source == "default" for a in attention_layers(llm))

    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate(prompts[:2], params, use_tqdm=False)
    first = [(a.kv_scales.k, a.kv_scales.v) for a in attention_layers(llm)]
    assert not runner.kv_scales_pending
    assert all(a.kv_scales.source == "calculated" for a in attention_layers(llm))
    # amax / 448: the tiny model's keys and values reach a few units, far from 1.0 x 448.
    assert all(0 < scale < 0.1 for pair in first for scale in pair)
    llm.generate(prompts[2:], params, use_tqdm=False)
    assert [(a.kv_scales.k, a.kv_scales.v) for a in attention_layers(llm)] == first


def test_refusals_are_one_line_at_start_up(llama, make_llm, monkeypatch):
    with pytest.raises(ConfigError, match="^--calculate-kv-scales computes the scales of an fp8 KV cache; give "):
        EngineConfig.from_values({"calculate_kv_scales": True})
    monkeypatch.setattr(CpuPlatform, "kv_cache_dtypes", lambda self: [])
    with pytest.raises(FwError, match="^--kv-cache-dtype fp8_e5m2 is not supported on the cpu platform; "
                                      "supported: auto$"):
        make_llm(llama, kv_cache_dtype="fp8_e5m2")
