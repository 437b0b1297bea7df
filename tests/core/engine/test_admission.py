"""Admission control: a server's queue is bounded (503 with Retry-After), fw.LLM's batches are not."""

from __future__ import annotations

import asyncio

import pytest

from fw import SamplingParams
from fw.core.config.scheduler import SchedulerConfig
from fw.core.engine.admission import Admission
from fw.core.engine.async_engine import AsyncEngine
from fw.core.errors import EngineOverloadedError, InvalidRequestError

LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


def test_sequences_are_capped_and_a_request_with_n_samples_counts_n():
    admission = Admission(SchedulerConfig(max_num_seqs=2, max_num_queued_reqs=4))
    first = admission.admit(2, 10)
    admission.admit(2, 10)
    with pytest.raises(EngineOverloadedError, match=r"4 sequences are queued or running.*--max-num-queued-reqs") as e:
        admission.admit(1, 10)
    assert e.value.retry_after >= 1 and e.value.retry_after == int(e.value.retry_after)
    assert admission.num_seqs == 4  # a refusal counts nothing
    first.release(completed=True)
    admission.admit(1, 10)
    assert admission.num_seqs == 3


def test_prompt_tokens_are_capped_until_their_prefill_is_done():
    admission = Admission(SchedulerConfig(max_num_queued_tokens=100))
    first = admission.admit(1, 80)
    with pytest.raises(EngineOverloadedError, match="80 prompt tokens wait.*--max-num-queued-tokens"):
        admission.admit(1, 30)
    first.prefill_done()
    first.prefill_done()  # only the first call counts
    assert admission.num_tokens == 0
    second = admission.admit(1, 30)
    second.release(completed=False)
    first.release(completed=False)
    assert (admission.num_seqs, admission.num_tokens) == (0, 0)
    admission.admit(1, 5000)  # a prompt over the cap runs when it is alone, rather than never


def test_defaults_bound_the_queue_by_sequences_only():
    config = SchedulerConfig()
    assert config.queued_seqs_limit == 4 * config.max_num_seqs == 1024
    assert config.max_num_queued_tokens is None
    assert SchedulerConfig(max_num_seqs=8).queued_seqs_limit == 32


def test_retry_after_follows_the_load_and_the_request_latency():
    admission = Admission(SchedulerConfig(max_num_seqs=2, max_num_queued_reqs=8))
    assert admission.retry_after() == 1.0
    for _ in range(8):
        admission.admit(1, 1)
    admission.latency = 3.0
    assert admission.retry_after() == 12.0  # 8 sequences, 2 at a time, 3 s each


@pytest.fixture
def small_queue(tiny_checkpoint, make_llm):
    return make_llm(tiny_checkpoint("llama"), max_num_seqs=4, max_num_queued_reqs=6)


def test_the_async_engine_refuses_at_once_when_full_and_queues_nothing(small_queue):
    engine = AsyncEngine(small_queue.engine)

    async def drain(request_id, n=1):
        async for _ in engine.generate([5, 6, 7], LONG.clone(n=n), request_id):
            pass

    async def main():
        running = [asyncio.create_task(drain(f"r{i}", n)) for i, n in enumerate((2, 2, 1, 1))]
        while engine.num_queued_sequences < 6:
            await asyncio.sleep(0.001)
        with pytest.raises(EngineOverloadedError) as refused:
            await drain("over")
        with pytest.raises(InvalidRequestError, match=r"n is 5, more than the maximum of 4"):
            await drain("too-big", n=5)  # never fits: a 400, not a 503
        with pytest.raises(InvalidRequestError, match="stop_token_ids"):  # invalid: a 400 however busy
            async for _ in engine.generate([5, 6, 7], LONG.clone(stop_token_ids=[10**6]), "invalid"):
                pass
        with pytest.raises(InvalidRequestError, match="prompt"):
            async for _ in engine.generate([10**6], LONG, "invalid-prompt"):
                pass
        assert "over" not in small_queue.engine.requests
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        assert engine.num_queued_sequences == 0
        async for output in engine.generate([5, 6, 7], LONG.clone(max_tokens=2), "after"):
            pass
        return refused.value, output

    try:
        refused, output = asyncio.run(main())
    finally:
        engine.shutdown()
    assert "--max-num-queued-reqs" in str(refused) and refused.retry_after >= 1
    assert output.finished


def test_a_request_of_many_prompts_is_checked_as_a_whole(small_queue):
    engine = AsyncEngine(small_queue.engine)
    assert engine.info.max_sequences_per_request == 4
    engine.check_request_size(2, 2)
    with pytest.raises(InvalidRequestError, match=r"asks for 6 sequences \(3 prompts x n=2\)") as error:
        engine.check_request_size(3, 2)
    assert error.value.param == "n"
    with pytest.raises(InvalidRequestError) as error:
        engine.check_request_size(5, 1)
    assert error.value.param == "prompt"


def test_offline_batches_are_never_refused(small_queue):
    prompts = [{"prompt_token_ids": [5, 6, i]} for i in range(20)]  # 40 sequences, with room for 6
    outputs = small_queue.generate(prompts, SamplingParams(max_tokens=2, n=2), use_tqdm=False)
    assert len(outputs) == 20 and all(o.finished for o in outputs)
