"""AsyncEngine: the engine thread behind the server, driven from asyncio."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fw import SamplingParams
from fw.core.engine.async_engine import AsyncEngine, EngineDeadError, IterationStats
from fw.core.engine.sampling_params import RequestOutputKind

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


class Recorder:
    def __init__(self) -> None:
        self.stats: list[IterationStats] = []
        self.threads: set[str] = set()

    def record(self, stats: IterationStats) -> None:
        self.threads.add(threading.current_thread().name)
        self.stats.append(stats)


@pytest.fixture
def llm(tiny_checkpoint, make_llm):
    return make_llm(tiny_checkpoint("llama"))


async def collect(engine: AsyncEngine, prompt, params, request_id: str):
    outputs = [output async for output in engine.generate(prompt, params, request_id)]
    return outputs


def run(coro):
    return asyncio.run(coro)


def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_concurrent_requests_equal_offline_outputs_and_stats_add_up(llm, prompts):
    offline = llm.generate(prompts, GREEDY, use_tqdm=False)
    recorder = Recorder()
    engine = AsyncEngine(llm.engine, [recorder])

    async def main():
        return await asyncio.gather(*(collect(engine, p, GREEDY, f"r{i}") for i, p in enumerate(prompts)))

    try:
        streams = run(main())
    finally:
        engine.shutdown()
    for stream, expected in zip(streams, offline):
        final = stream[-1]
        assert final.finished and all(not o.finished for o in stream[:-1])
        assert final.outputs[0].token_ids == expected.outputs[0].token_ids
        assert final.outputs[0].text == expected.outputs[0].text
        assert final.prompt == expected.prompt  # tokenized off the engine thread, still echoed
        # cumulative: each output extends the one before
        lengths = [len(o.outputs[0].token_ids) for o in stream]
        assert lengths == sorted(lengths)
    assert recorder.threads == {"fw-engine"}
    stats = recorder.stats
    assert len([t for s in stats for t in s.time_to_first_tokens]) == len(prompts)
    assert sum(s.num_generation_tokens for s in stats) == len(prompts) * GREEDY.max_tokens
    assert sum(s.num_prompt_tokens for s in stats) == sum(len(o.prompt_token_ids) for o in offline)
    finished = [f for s in stats for f in s.finished_requests]
    assert [f.finish_reason for f in finished] == ["length"] * len(prompts)
    assert all(f.e2e_latency >= f.queue_time >= 0 for f in finished)
    assert stats[-1].kv_cache_usage == 0 and stats[-1].num_running == 0


def test_deltas_that_queue_up_are_merged_and_no_token_is_lost(llm):
    params = GREEDY.clone(max_tokens=40)
    (offline,) = llm.generate(["the quick brown"], params, use_tqdm=False)
    recorder = Recorder()
    engine = AsyncEngine(llm.engine, [recorder])

    async def slow_reader():
        outputs = []
        async for output in engine.generate("the quick brown", params.clone(output_kind=RequestOutputKind.DELTA), "d"):
            outputs.append(output)
            time.sleep(0.05)  # holds the event loop: meanwhile the engine thread queues several steps' deltas
        return outputs

    async def main():
        final_only = params.clone(output_kind=RequestOutputKind.FINAL_ONLY)
        return await asyncio.gather(slow_reader(), collect(engine, "the quick brown", final_only, "f"))

    try:
        deltas, finals = run(main())
    finally:
        engine.shutdown()
    expected = offline.outputs[0]
    assert 1 < len(deltas) < 40 and deltas[-1].finished
    assert [t for d in deltas for t in d.outputs[0].token_ids] == expected.token_ids
    assert "".join(d.outputs[0].text for d in deltas) == expected.text
    (final,) = finals
    assert final.finished and final.outputs[0].token_ids == expected.token_ids
    assert final.outputs[0].text == expected.text
    assert sum(s.num_generation_tokens for s in recorder.stats) == 2 * 40


def test_a_bad_request_fails_alone_and_the_engine_keeps_serving(llm):
    engine = AsyncEngine(llm.engine)

    async def main():
        with pytest.raises(ValueError, match="out of vocabulary"):
            await collect(engine, [10**9], GREEDY, "bad")
        with pytest.raises(ValueError, match="maximum context length"):
            await collect(engine, "hello", GREEDY.clone(max_tokens=10**6), "too-long")
        return await collect(engine, "hello", GREEDY, "good")

    try:
        outputs = run(main())
    finally:
        engine.shutdown()
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == GREEDY.max_tokens


def test_leaving_a_stream_early_aborts_the_request_and_frees_its_blocks(llm):
    recorder = Recorder()
    engine = AsyncEngine(llm.engine, [recorder])
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def first_token_then_leave(request_id: str):
        async for output in engine.generate("the quick brown", long, request_id):
            assert output.outputs[0].token_ids
            break

    async def cancelled(request_id: str):
        task = asyncio.create_task(collect(engine, "to be or not", long, request_id))
        while engine.num_unfinished() == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main():
        await asyncio.gather(*(first_token_then_leave(f"a{i}") for i in range(8)), cancelled("c"))

    try:
        run(main())
        until(lambda: engine.num_unfinished() == 0 and not llm.engine.has_unfinished_requests())
        assert llm.engine.stats().kv_cache_usage == 0
    finally:
        engine.shutdown()
    aborted = [f for s in recorder.stats for f in s.finished_requests]
    assert len(aborted) == 9 and {f.finish_reason for f in aborted} == {"abort"}
    assert sum(f.num_generation_tokens for f in aborted) >= 8  # each of the 8 saw its first token
    assert recorder.stats[-1].kv_cache_usage == 0


def test_a_failing_step_kills_the_engine_and_every_waiting_request_hears_it(llm, monkeypatch):
    dead_calls = []
    engine = AsyncEngine(llm.engine, on_dead=dead_calls.append)

    def broken_step():
        raise RuntimeError("device lost")

    monkeypatch.setattr(llm.engine, "step", broken_step)

    async def main():
        with pytest.raises(EngineDeadError, match="device lost"):
            await collect(engine, "hello", GREEDY, "r")
        with pytest.raises(EngineDeadError):
            await collect(engine, "hello", GREEDY, "r2")

    run(main())
    assert engine.is_dead
    assert [str(e) for e in dead_calls] == ["device lost"]  # once, with what killed it


def test_shutdown_ends_waiting_requests_and_the_thread(llm):
    dead_calls = []
    engine = AsyncEngine(llm.engine, on_dead=dead_calls.append)
    long = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)

    async def main():
        task = asyncio.create_task(collect(engine, "hello", long, "r"))
        while engine.num_unfinished() == 0:
            await asyncio.sleep(0.001)
        await asyncio.to_thread(engine.shutdown)
        with pytest.raises(EngineDeadError, match="shut down"):
            await task

    run(main())
    assert not engine._thread.is_alive() and dead_calls == []  # a shutdown is not a death
    assert llm.engine.stats().kv_cache_usage == 0 and not llm.engine.has_unfinished_requests()
