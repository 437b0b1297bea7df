"""Batch invariance, seeded sampling, prefix caching, chunked prefill and preemption."""

from __future__ import annotations

import random

import pytest

from fw import SamplingParams


def mixed_prompts(tokenizer, count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = len(tokenizer)
    return [{"prompt_token_ids": [rng.randrange(5, vocab) for _ in range(rng.randint(3, 60))]} for _ in range(count)]


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


def test_greedy_output_is_the_same_alone_and_in_a_batch_of_32(llama, make_llm):
    llm = make_llm(llama)
    prompts = mixed_prompts(llm.get_tokenizer(), 32)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    batched = llm.generate(prompts, params, use_tqdm=False)
    for i in (0, 7, 31):
        (alone,) = llm.generate([prompts[i]], params, use_tqdm=False)
        assert alone.outputs[0].token_ids == batched[i].outputs[0].token_ids


def test_seeded_sampling_reproduces_across_batch_compositions(llama, make_llm):
    llm = make_llm(llama)
    prompts = mixed_prompts(llm.get_tokenizer(), 12, seed=1)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=10, seed=1234, ignore_eos=True)
    unseeded = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    (alone,) = llm.generate([prompts[0]], seeded, use_tqdm=False)
    mixed = llm.generate(prompts, [seeded] + [unseeded] * 11, use_tqdm=False)
    shifted = llm.generate(prompts[5:] + prompts[:1], [unseeded] * 7 + [seeded], use_tqdm=False)
    assert alone.outputs[0].token_ids == mixed[0].outputs[0].token_ids == shifted[-1].outputs[0].token_ids
    # And the seed matters: another seed gives another sample.
    (other,) = llm.generate([prompts[0]], seeded.clone(seed=99), use_tqdm=False)
    assert other.outputs[0].token_ids != alone.outputs[0].token_ids


def test_parallel_samples_differ_and_share_the_prompt(llama, make_llm):
    llm = make_llm(llama, enable_prefix_caching=False)
    prompt = mixed_prompts(llm.get_tokenizer(), 1, seed=2)[0]
    (output,) = llm.generate([prompt], SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=7, ignore_eos=True),
                             use_tqdm=False)
    samples = [tuple(o.token_ids) for o in output.outputs]
    assert [o.index for o in output.outputs] == [0, 1, 2, 3]
    assert len(set(samples)) > 1 and all(len(s) == 8 for s in samples)
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_a_shared_prefix_is_reused_and_the_output_is_unchanged(llama, make_llm):
    tokenizer_llm = make_llm(llama)
    rng = random.Random(3)
    vocab = len(tokenizer_llm.get_tokenizer())
    prefix = [rng.randrange(5, vocab) for _ in range(70)]
    first = {"prompt_token_ids": prefix + [11, 12]}
    second = {"prompt_token_ids": prefix + [13, 14, 15]}
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)

    cached_llm = tokenizer_llm
    cached_llm.generate([first], params, use_tqdm=False)
    hits_before = cached_llm.engine.block_manager.num_prefix_hits
    (with_cache,) = cached_llm.generate([second], params, use_tqdm=False)
    block_size = cached_llm.engine.block_manager.block_size
    assert with_cache.num_cached_tokens == (70 // block_size) * block_size
    assert cached_llm.engine.block_manager.num_prefix_hits - hits_before == with_cache.num_cached_tokens

    uncached_llm = make_llm(llama, enable_prefix_caching=False)
    uncached_llm.generate([first], params, use_tqdm=False)
    (without_cache,) = uncached_llm.generate([second], params, use_tqdm=False)
    assert without_cache.num_cached_tokens == 0
    assert with_cache.outputs[0].token_ids == without_cache.outputs[0].token_ids


def test_tiny_budgets_chunk_and_preempt_without_changing_any_output(llama, make_llm):
    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.8, max_tokens=20, ignore_eos=True, seed=5)]
    relaxed = make_llm(llama)
    prompts = mixed_prompts(relaxed.get_tokenizer(), 10, seed=4)
    expected = relaxed.generate(prompts, params * 5, use_tqdm=False)

    # 8 tokens per step and 8 blocks of 16 tokens (one 128-token request) for 10 requests of up to 80 tokens.
    pressured = make_llm(llama, max_num_batched_tokens=8, max_num_seqs=4, num_gpu_blocks_override=8,
                         max_model_len=128)
    got = pressured.generate(prompts, params * 5, use_tqdm=False)
    assert pressured.engine.scheduler.num_preemptions > 0
    for e, g in zip(expected, got):
        assert g.outputs[0].token_ids == e.outputs[0].token_ids
        assert g.outputs[0].text == e.outputs[0].text
    bm = pressured.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_priority_scheduling_runs_urgent_requests_first(llama, make_llm):
    llm = make_llm(llama, scheduling_policy="priority", max_num_seqs=1)
    prompts = mixed_prompts(llm.get_tokenizer(), 3, seed=6)
    finished_order = []
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    for request_id, (prompt, priority) in enumerate(zip(prompts, [5, 0, -3])):
        engine.add_request(str(request_id), prompt["prompt_token_ids"], params, priority=priority)
    while engine.has_unfinished_requests():
        finished_order += [o.request_id for o in engine.step() if o.finished]
    assert finished_order == ["2", "1", "0"]
