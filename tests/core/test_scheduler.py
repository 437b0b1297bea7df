"""The scheduler: token budget, chunked prefill, preemption, priorities. No model."""

from __future__ import annotations

from fw.core.engine.sampling_params import SamplingParams
from fw.core.engine.sequence import Sequence, SequenceStatus
from fw.core.kv_cache import BlockManager
from fw.core.scheduler import Scheduler

BS = 4


def make(num_blocks=64, max_num_seqs=8, budget=32, chunked=True, policy="fcfs", caching=True) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, BS, caching), max_num_seqs, budget, chunked, policy)


def seq(n: int, request_id: str, priority: int = 0) -> Sequence:
    return Sequence(request_id, list(range(1000 * len(request_id), 1000 * len(request_id) + n)),
                    SamplingParams(), priority=priority)


def run_step(s: Scheduler) -> list[tuple[str, int]]:
    """Schedule, pretend the model ran, and sample token 7 for sequences that reached their end."""
    batch = s.schedule()
    done = [(q, q.num_computed_tokens + n == q.num_tokens) for q, n in zip(batch.seqs, batch.num_new_tokens)]
    s.postprocess(batch)
    for q, sampled in done:
        if sampled:
            q.output_token_ids.append(7)
    return [(q.request_id, n) for q, n in zip(batch.seqs, batch.num_new_tokens)]


def test_long_prompt_is_chunked_and_decodes_keep_running():
    s = make(budget=8)
    short = seq(3, "a")
    s.add(short)
    assert run_step(s) == [("a", 3)]
    s.add(seq(20, "bb"))
    # The decode of "a" goes first, the long prompt gets the rest of the budget.
    assert run_step(s) == [("a", 1), ("bb", 7)]
    assert run_step(s) == [("a", 1), ("bb", 7)]
    assert run_step(s) == [("a", 1), ("bb", 6)]
    assert run_step(s) == [("a", 1), ("bb", 1)]


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget():
    s = make(budget=10, chunked=False)
    s.add(seq(3, "a"))
    s.add(seq(9, "bb"))
    assert run_step(s) == [("a", 3)]  # "bb" does not fit in the 7 tokens left
    assert run_step(s) == [("a", 1), ("bb", 9)]


def test_max_num_seqs_limits_running_sequences():
    s = make(max_num_seqs=2)
    for name in ("a", "bb", "ccc"):
        s.add(seq(2, name))
    assert [r for r, _ in run_step(s)] == ["a", "bb"]
    assert [q.request_id for q in s.waiting] == ["ccc"]


def test_preemption_frees_the_latest_and_it_resumes_from_scratch():
    s = make(num_blocks=4, budget=64)
    a, b = seq(7, "a"), seq(7, "bb")  # 2 blocks each: the cache is full
    s.add(a), s.add(b)
    run_step(s)
    assert s.block_manager.num_free_blocks == 0
    # "a" needs a third block to decode its 9th token: "bb" (the latest) is preempted.
    run_step(s)
    steps = run_step(s)
    assert b.status == SequenceStatus.WAITING and s.num_preemptions == 1
    assert b.block_ids == [] and b.num_computed_tokens == 0
    assert b.output_token_ids == [7, 7]  # its output so far is kept
    assert ("a", 1) in steps
    s.finish(a)
    num_tokens = b.num_tokens
    steps = run_step(s)
    # It recomputes prompt and outputs (minus what the prefix cache still holds).
    assert steps == [("bb", num_tokens - b.num_cached_tokens)]
    assert b.num_computed_tokens == num_tokens and b.output_token_ids == [7, 7, 7]


def test_priority_policy_serves_lower_values_first_and_preempts_the_worst():
    s = make(max_num_seqs=1, policy="priority")
    s.add(seq(2, "low", priority=5))
    s.add(seq(2, "high", priority=-1))
    assert run_step(s) == [("high", 2)]


def test_finish_frees_everything_at_once():
    s = make()
    a = seq(10, "a")
    s.add(a)
    run_step(s)
    s.finish(a)
    assert s.block_manager.num_free_blocks == 64 and not s.has_unfinished()


def test_siblings_wait_for_the_leader_then_share_its_prompt_blocks():
    s = make(caching=False)
    params = SamplingParams(n=2)
    leader = Sequence("req", list(range(9)), params)
    sibling = Sequence("req", list(range(9)), params, index=1, leader=leader)
    s.add(leader), s.add(sibling)
    assert run_step(s) == [("req", 9)]  # the sibling waits for the leader's prompt
    steps = run_step(s)
    assert ("req", 1) in steps and ("req", 9 - 8) in steps
    assert sibling.block_ids[:2] == leader.block_ids[:2]
