"""Failure isolation: when a step raises, find the requests at fault and run the others.

``LLMEngine.step`` calls :func:`execute_in_parts` only after ``runner.execute(batch)`` raised,
so a step that does not fail costs nothing here. The batch runs again in halves, recursively,
down to single requests: the parts that run give their results, the requests that raise even
alone are handed to ``fail`` (the engine finishes them with finish reason "error" and frees
their blocks). When no request runs even alone, :func:`probe_model` tells a model that fails on
some requests' data from a model (a device) that fails on everything: only then is the engine
dead.

Running sequences again is safe: the scheduler allocated the step's blocks and advanced no
computed count (that happens after the step), so a part writes the same KV slots again; each
part's seeded generators are rewound first, so a request's output is the one it has alone.
"""

from __future__ import annotations

from typing import Callable

from fw.core.engine.sampling_params import SamplingParams
from fw.core.engine.sequence import Sequence
from fw.core.errors import EngineDeadError
from fw.core.kv_cache import BlockManager
from fw.core.runner.model_runner import ModelRunner, StepResult
from fw.core.scheduler import ScheduledBatch

#: Called with (request id, what it raised alone) for each request that fails.
FailRequest = Callable[[str, BaseException], None]


def execute_in_parts(runner: ModelRunner, block_manager: BlockManager, batch: ScheduledBatch, error: Exception,
                     fail: FailRequest) -> list[StepResult]:
    """``runner.execute(batch)`` raised ``error``: the results of the parts of ``batch`` that run.

    A request's samples stay in one part (they succeed or fail together). Raises
    ``EngineDeadError`` when every request fails alone and the model fails a probe too.
    """
    results: list[StepResult] = []
    _bisect(runner, block_manager, split_by_request(batch), error, results, fail)
    if not results:
        probe_model(runner, block_manager)
    return results


def _bisect(runner: ModelRunner, block_manager: BlockManager, parts: list[ScheduledBatch], error: Exception,
            results: list[StepResult], fail: FailRequest) -> None:
    """``parts`` (one request each) raised ``error`` together: run each half alone."""
    if len(parts) == 1:
        fail(parts[0].seqs[0].request_id, error)
        return
    half = len(parts) // 2
    for group in (parts[:half], parts[half:]):
        batch = merge(group)
        for seq in batch.seqs:
            seq.rewind_generator()
        try:
            results.append(runner.execute(batch, block_manager))
        except Exception as group_error:  # noqa: BLE001 - narrow it down further
            _bisect(runner, block_manager, group, group_error, results, fail)


def probe_model(runner: ModelRunner, block_manager: BlockManager) -> None:
    """Check that the model runs at all: a 1-token forward in a block that no sequence holds.
    Raise ``EngineDeadError`` when it does not.

    Called once the failed requests' blocks are free. ``append_slots`` takes its block from the
    free list as any allocation does (dropping whatever prefix it cached), so the probe never
    writes a block that a live sequence, or the prefix cache, still reads.
    """
    probe = Sequence("health-probe", [0], SamplingParams(max_tokens=1, temperature=0.0))
    if not block_manager.can_append(probe, 1):
        return  # every block is held by a live sequence: nothing to probe with, so assume it runs
    block_manager.append_slots(probe, 1)
    try:
        runner.execute_dummy(ScheduledBatch([probe], [1]), block_manager)
    except Exception as error:  # noqa: BLE001 - the model itself fails: nothing can run
        raise EngineDeadError(f"the model fails on every request and on a 1-token probe: "
                              f"{describe_error(error)}") from error
    finally:
        block_manager.free(probe)


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, short enough for a client to read (no traceback)."""
    lines = str(error).strip().splitlines()
    message = lines[0][:300] if lines else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def split_by_request(batch: ScheduledBatch) -> list[ScheduledBatch]:
    """One batch per request of ``batch`` (its samples together), in order."""
    parts: dict[str, ScheduledBatch] = {}
    for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
        part = parts.setdefault(seq.request_id, ScheduledBatch())
        part.seqs.append(seq)
        part.num_new_tokens.append(num_new)
    return list(parts.values())


def merge(parts: list[ScheduledBatch]) -> ScheduledBatch:
    return ScheduledBatch([seq for part in parts for seq in part.seqs],
                          [num for part in parts for num in part.num_new_tokens])
