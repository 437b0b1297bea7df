"""Failure isolation: a request that makes a step raise fails alone; only a dead model stops the engine.

The faults come from the ``faulty-cpu`` platform of tests/fault_plugin.py: a request sampled at
``FAULT_TEMPERATURE`` makes its batch's sampling raise; ``DEVICE_LOST_TEMPERATURE`` (or
``faults.device_lost``) makes every forward raise from then on.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from fw import SamplingParams
from fw.core.engine.async_engine import AsyncEngine
from fw.core.engine.isolation import execute_in_parts, probe_model
from fw.core.engine.sampling_params import RequestOutputKind
from fw.core.engine.sequence import Sequence
from fw.core.errors import EngineDeadError, RequestFailedError
from fw.core.kv_cache import BlockManager
from fw.core.plugins import load_plugins
from fw.core.scheduler import ScheduledBatch

PROMPTS = [[5, 6, 7, 8, 9], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36, 37], [40, 41]]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
# Seeded sampling too: its output must not depend on the failed step's draws.
PARAMS = [GREEDY, SamplingParams(temperature=0.8, seed=7, max_tokens=10, ignore_eos=True), GREEDY,
          SamplingParams(temperature=1.0, seed=11, n=2, max_tokens=10, ignore_eos=True)]


def faulty_llm(make_llm, tiny_checkpoint, fault_plugin):
    plugins = load_plugins(extra=[("fault", fault_plugin)])
    return make_llm(tiny_checkpoint("llama"), device="faulty-cpu", plugins=plugins)


@pytest.fixture(scope="module")
def faulty(make_llm, tiny_checkpoint, fault_plugin):
    """An fw.LLM on ``faulty-cpu`` that no test loses the device of."""
    return faulty_llm(make_llm, tiny_checkpoint, fault_plugin)


@pytest.fixture
def doomed(make_llm, tiny_checkpoint, fault_plugin):
    """An fw.LLM on ``faulty-cpu`` of its own, for a test that loses its device."""
    return faulty_llm(make_llm, tiny_checkpoint, fault_plugin)


def final_only(params: SamplingParams) -> SamplingParams:
    return params.clone(output_kind=RequestOutputKind.FINAL_ONLY)


def run_all(engine) -> dict:
    outputs = {}
    while engine.has_unfinished_requests():
        outputs.update((o.request_id, o) for o in engine.step())
    return outputs


def alone(engine, prompt, params):
    engine.add_request("alone", prompt, final_only(params))
    return run_all(engine)["alone"]


def samples(output) -> list[tuple[list[int], str, str]]:
    return [(o.token_ids, o.text, o.finish_reason) for o in output.outputs]


def test_a_request_whose_sampling_raises_fails_alone_mid_batch(faulty, fault_plugin):
    engine = faulty.engine
    expected = [samples(alone(engine, p, params)) for p, params in zip(PROMPTS, PARAMS)]
    faults = engine.loaded.platform.faults
    injected = faults.num_injected
    for i, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)):
        engine.add_request(f"good{i}", prompt, final_only(params))
    for _ in range(3):  # the others are decoding when the bad request arrives
        assert engine.step() == []
    bad = SamplingParams(temperature=fault_plugin.FAULT_TEMPERATURE, n=2, max_tokens=10)
    engine.add_request("bad", [50, 51, 52], final_only(bad))
    outputs = run_all(engine)

    failed = outputs.pop("bad")
    assert failed.finished and "injected fault" in failed.error and "Traceback" not in failed.error
    assert [o.finish_reason for o in failed.outputs] == ["error", "error"]
    assert faults.num_injected > injected
    assert {request_id: samples(o) for request_id, o in outputs.items()} == {
        f"good{i}": e for i, e in enumerate(expected)}
    assert engine.stats().kv_cache_usage == 0 and not engine.requests
    assert samples(alone(engine, PROMPTS[0], GREEDY)) == expected[0]  # and it keeps serving


def test_a_request_that_fails_after_the_forward_fails_alone(faulty, monkeypatch):
    # The per-sequence work after the forward (appending, detokenizing, stop checks) is guarded
    # per request: here the bad request's detokenizer raises at its third token.
    engine = faulty.engine
    expected = [samples(alone(engine, p, GREEDY)) for p in PROMPTS[:2]]
    engine.add_request("good0", PROMPTS[0], final_only(GREEDY))
    engine.add_request("bad", PROMPTS[2], final_only(GREEDY.clone(n=2)))
    engine.add_request("good1", PROMPTS[1], final_only(GREEDY))
    detokenizer = engine.requests["bad"][1].detokenizer
    add_token = detokenizer.add_token

    def add_token_then_break(token, check_stop):
        if len(detokenizer.token_ids) >= 2 + len(PROMPTS[2]):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return add_token(token, check_stop)

    monkeypatch.setattr(detokenizer, "add_token", add_token_then_break)
    outputs = run_all(engine)
    assert "UnicodeDecodeError" in outputs.pop("bad").error
    assert {k: samples(o) for k, o in outputs.items()} == {"good0": expected[0], "good1": expected[1]}
    assert engine.stats().kv_cache_usage == 0 and not engine.requests


def test_llm_generate_reports_a_failed_prompt_and_returns_the_others(faulty, fault_plugin):
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:3]]
    expected = faulty.generate(prompts, GREEDY, use_tqdm=False)
    bad = GREEDY.clone(temperature=fault_plugin.FAULT_TEMPERATURE)
    outputs = faulty.generate(prompts, [GREEDY, bad, GREEDY], use_tqdm=False)
    assert outputs[1].error is not None and outputs[1].outputs[0].finish_reason == "error"
    assert [samples(o) for o in (outputs[0], outputs[2])] == [samples(o) for o in (expected[0], expected[2])]
    assert outputs[0].error is None


def test_a_step_that_does_not_fail_executes_once(faulty, monkeypatch):
    engine = faulty.engine
    calls = []
    execute = engine.runner.execute
    monkeypatch.setattr(engine.runner, "execute", lambda *args: calls.append(1) or execute(*args))
    engine.add_request("r", PROMPTS[0], GREEDY)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    assert len(calls) == steps


def test_when_the_device_is_lost_the_step_raises_engine_dead(doomed):
    engine = doomed.engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, GREEDY)
    engine.step()
    engine.loaded.platform.faults.device_lost = True
    with pytest.raises(EngineDeadError, match="1-token probe: RuntimeError: injected fault: the device is lost"):
        engine.step()


# ---------------------------------------------------------------- through AsyncEngine


async def final_of(engine: AsyncEngine, prompt, params, request_id: str):
    output = None
    async for output in engine.generate(prompt, params, request_id):
        pass
    return output


def test_async_engine_fails_the_bad_request_alone_and_keeps_serving(faulty, fault_plugin):
    expected = faulty.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS, use_tqdm=False)
    engine = AsyncEngine(faulty.engine)
    bad = SamplingParams(temperature=fault_plugin.FAULT_TEMPERATURE, max_tokens=10)

    async def main():
        jobs = [final_of(engine, p, params, f"good{i}") for i, (p, params) in enumerate(zip(PROMPTS, PARAMS))]
        jobs.insert(2, final_of(engine, [50, 51, 52], bad, "bad"))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        after = await final_of(engine, PROMPTS[0], PARAMS[0], "after")
        return results, after

    try:
        results, after = asyncio.run(main())
        failure = results.pop(2)
        assert isinstance(failure, RequestFailedError) and failure.request_id == "bad"
        assert str(failure).startswith("the engine failed on this request: RuntimeError: injected fault")
        assert [samples(r) for r in results] == [samples(e) for e in expected]
        assert samples(after) == samples(expected[0])
        assert faulty.engine.stats().kv_cache_usage == 0 and not engine.is_dead
    finally:
        engine.shutdown()


def test_async_engine_dies_when_the_device_is_lost(doomed, fault_plugin):
    dead_calls = []
    engine = AsyncEngine(doomed.engine, on_dead=dead_calls.append)
    long = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    killer = SamplingParams(temperature=fault_plugin.DEVICE_LOST_TEMPERATURE, max_tokens=4)

    async def main():
        running = [asyncio.create_task(final_of(engine, p, long, f"r{i}")) for i, p in enumerate(PROMPTS)]
        while doomed.engine.stats().num_running < len(PROMPTS):
            await asyncio.sleep(0.001)
        results = await asyncio.gather(*running, final_of(engine, [50, 51], killer, "killer"),
                                       return_exceptions=True)
        with pytest.raises(EngineDeadError):
            await final_of(engine, PROMPTS[0], long, "late")
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, EngineDeadError) for r in results), results
    assert "device is lost" in str(results[0])
    assert engine.is_dead and len(dead_calls) == 1 and isinstance(dead_calls[0], EngineDeadError)
    assert not engine._thread.is_alive()


# ---------------------------------------------------------------- the parts, without a model


class FakeRunner:
    """Raises when a batch holds a request whose id starts with "bad" (or always, when ``dead``)."""

    def __init__(self, dead: bool = False) -> None:
        self.dead = dead
        self.batches: list[list[str]] = []

    def execute(self, batch: ScheduledBatch, block_manager: BlockManager):
        ids = [seq.request_id for seq in batch.seqs]
        self.batches.append(ids)
        if self.dead or any(i.startswith("bad") for i in ids):
            raise RuntimeError(f"cannot run {ids}")
        return ids

    execute_dummy = execute  # the probe's forward


def scheduled(request_ids: list[str], block_manager: BlockManager) -> ScheduledBatch:
    batch = ScheduledBatch()
    for request_id in request_ids:
        seq = Sequence(request_id, [1, 2, 3], SamplingParams())
        block_manager.allocate(seq, [], 3)
        batch.seqs.append(seq)
        batch.num_new_tokens.append(3)
    return batch


def test_bisection_keeps_every_part_that_runs_and_fails_only_the_bad_requests():
    bm = BlockManager(64, 4)
    batch = scheduled(["a", "b", "bad1", "c", "c", "d", "e", "bad2"], bm)  # "c" has two samples
    runner, failed = FakeRunner(), {}
    results = execute_in_parts(runner, bm, batch, RuntimeError("whole batch"), failed.__setitem__)
    assert sorted(failed) == ["bad1", "bad2"] and all(isinstance(e, RuntimeError) for e in failed.values())
    assert sorted(i for ids in results for i in ids) == ["a", "b", "c", "c", "d", "e"]
    assert all(ids.count("c") in (0, 2) for ids in runner.batches)  # a request's samples stay together
    assert len(runner.batches) <= 2 * 2 * 3  # per bad request at most two parts per level, log2(7) levels


def test_when_every_request_fails_alone_the_probe_decides(monkeypatch):
    bm = BlockManager(8, 4)
    batch = scheduled(["bad1", "bad2"], bm)
    for seq in batch.seqs:
        bm.free(seq)  # as the engine frees failed requests before the probe
    failed = {}
    assert execute_in_parts(FakeRunner(), bm, batch, RuntimeError("x"), failed.__setitem__) == []
    assert sorted(failed) == ["bad1", "bad2"]  # the model itself ran the probe: the engine lives
    with pytest.raises(EngineDeadError, match="1-token probe: RuntimeError: cannot run"):
        execute_in_parts(FakeRunner(dead=True), bm, batch, RuntimeError("x"), {}.__setitem__)
    assert bm.num_free_blocks == bm.num_blocks


def test_the_probe_writes_only_a_block_no_sequence_holds():
    bm = BlockManager(4, 4, enable_prefix_caching=True)
    live = Sequence("live", list(range(8)), SamplingParams())
    bm.allocate(live, [], 8)  # two blocks
    live.num_computed_tokens = 8
    bm.cache_computed_blocks(live)
    seen = []

    class Recorder:
        def execute_dummy(self, batch, block_manager):
            seen.append(list(batch.seqs[0].block_ids))

    probe_model(Recorder(), bm)
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0] not in live.block_ids
    assert bm.num_free_blocks == 2 and bm.lookup_prefix(Sequence("again", list(range(9)), SamplingParams())) \
        == live.block_ids


# ---------------------------------------------------------------- packaged for fw processes


@pytest.mark.slow
def test_the_fault_plugin_installs_for_fw_processes(fault_plugin_env):
    listed = subprocess.run([sys.executable, "-m", "fw", "plugins", "list", "--json"], capture_output=True,
                            text=True, env={**os.environ, **fault_plugin_env}, timeout=120, check=True)
    record = next(r for r in json.loads(listed.stdout) if r["name"] == "fault")
    assert record["status"] == "loaded" and record["distribution"] == "fw-fault-plugin"
    assert record["provides"] == ["platform: faulty-cpu"]
