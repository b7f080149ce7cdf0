"""Scheduler over a real ChunkAttention with a small pool; no model (tokens are made up)."""

import pytest
import torch

from chunkattn_core import ChunkAttention
from chunkattn_core.config import EngineConfig
from chunkattn_core.sampling import SamplingParams
from chunkattn_core.scheduler import Scheduler
from chunkattn_core.sequence import Sequence, SequenceStatus

CHUNK = 16


def make_scheduler(max_chunks=8, **overrides):
    config = EngineConfig(chunk_size=CHUNK, max_chunks=max_chunks, **overrides)
    attn = ChunkAttention(1, 1, 16, chunk_size=CHUNK, max_chunks=max_chunks, dtype=torch.float32)
    return Scheduler(config, attn)


def make_seq(request_id, prompt, max_tokens=8):
    prompt = list(range(prompt)) if isinstance(prompt, int) else prompt
    return Sequence(request_id, prompt, SamplingParams(max_tokens=max_tokens), max_tokens)


def prefill(scheduler):
    """schedule_prefills, then the token a prefill would sample."""
    admitted = scheduler.schedule_prefills()
    for seq in admitted:
        seq.output_token_ids.append(1000 + len(seq.output_token_ids))
    return [seq.request_id for seq in admitted]


def decode(scheduler):
    seqs, slots = scheduler.schedule_decode()
    assert slots.shape == (len(seqs),)
    for seq in seqs:
        seq.output_token_ids.append(1000 + len(seq.output_token_ids))
    return [seq.request_id for seq in seqs]


def finish_all(scheduler):
    for seq in list(scheduler.running.values()):
        scheduler.finish(seq, "stop")
    scheduler.attn.check_invariants()
    stats = scheduler.attn.stats()
    assert stats["num_sequences"] == 0
    assert stats["chunks_used"] == stats["chunks_cached"]


@pytest.mark.parametrize(
    "prompt_len, max_tokens, config, message",
    [
        (0, 4, {}, "empty"),
        (64, 4, {"max_model_len": 64}, "max_model_len"),
        (100, 4, {"max_model_len": 64}, "max_model_len"),
        (120, 16, {}, "need 9 KV chunks but the pool holds 8"),
        (200, 1, {}, "pool holds 8"),
    ],
)
def test_refuses_requests_that_can_never_run(prompt_len, max_tokens, config, message):
    scheduler = make_scheduler(**config)
    with pytest.raises(ValueError, match=message):
        scheduler.add(make_seq("r", prompt_len, max_tokens))
    assert not scheduler.has_unfinished()


def test_admits_what_fits_and_shares_prefixes():
    scheduler = make_scheduler(max_chunks=16)
    system = list(range(40))  # two full chunks + 8 tokens
    for i in range(3):
        scheduler.add(make_seq(f"r{i}", system + [500 + i, 501]))
    assert prefill(scheduler) == ["r0", "r1", "r2"]
    cached = [seq.cached_prompt_tokens for seq in scheduler.running.values()]
    assert cached == [0, 32, 32]
    assert all(seq.status is SequenceStatus.RUNNING for seq in scheduler.running.values())
    assert sorted(decode(scheduler)) == ["r0", "r1", "r2"]
    finish_all(scheduler)


@pytest.mark.parametrize(
    "config, expected_batches",
    [
        ({"max_batch_size": 2}, [["r0", "r1"], ["r2", "r3"]]),
        ({"max_batch_size": 3}, [["r0", "r1", "r2"], ["r3"]]),
        ({"max_prefill_tokens": 20}, [["r0"], ["r1"], ["r2"], ["r3"]]),
        ({"max_prefill_tokens": 40}, [["r0", "r1"], ["r2", "r3"]]),
    ],
)
def test_batch_and_prefill_limits(config, expected_batches):
    scheduler = make_scheduler(max_chunks=32, **config)
    for i in range(4):
        scheduler.add(make_seq(f"r{i}", [100 * i + t for t in range(20)]))
    batches = []
    while scheduler.waiting:
        batches.append(prefill(scheduler))
        if len(scheduler.running) == config.get("max_batch_size", 32):
            finish_all(scheduler)
    assert batches == expected_batches
    finish_all(scheduler)


def test_waits_while_the_pool_is_full():
    scheduler = make_scheduler(max_chunks=8)
    scheduler.add(make_seq("big", 100, max_tokens=8))  # 7 chunks
    scheduler.add(make_seq("next", [7] * 40, max_tokens=8))  # 3 chunks
    assert prefill(scheduler) == ["big"]
    for _ in range(3):
        assert prefill(scheduler) == []
        assert decode(scheduler) == ["big"]
    assert [seq.request_id for seq in scheduler.waiting] == ["next"]
    scheduler.finish(scheduler.running[scheduler.attn.sequence_ids[0]], "length")
    assert prefill(scheduler) == ["next"]  # the finished request's cached chunks are evicted for it
    finish_all(scheduler)


def test_preempts_the_newest_when_decode_runs_out():
    scheduler = make_scheduler(max_chunks=6)
    # each prompt fills its chunks exactly, so the first decode needs one new chunk per sequence
    for i in range(3):
        scheduler.add(make_seq(f"r{i}", [100 * i + t for t in range(32)], max_tokens=8))
    scheduler.schedule_prefills()  # admission leaves room for growth: only two fit
    assert [seq.request_id for seq in scheduler.running.values()] == ["r0", "r1"]
    for seq in scheduler.running.values():
        seq.output_token_ids.append(1)
    # force the third in: the pool is now full and the next decode must preempt
    third = scheduler.waiting.popleft()
    third.sid = scheduler.attn.add_sequence(third.token_ids)
    third.status = SequenceStatus.RUNNING
    third.output_token_ids.append(1)
    scheduler.running[third.sid] = third
    assert sorted(decode(scheduler)) == ["r0", "r1"]
    assert [seq.request_id for seq in scheduler.waiting] == ["r2"]
    assert third.status is SequenceStatus.WAITING and third.num_preemptions == 1 and third.sid is None
    scheduler.attn.check_invariants()
    # once the others finish, the preempted request comes back with its generated token
    finish_all(scheduler)
    assert prefill(scheduler) == ["r2"]
    assert scheduler.attn.num_tokens(third.sid) == 33 and third.output_token_ids == [1, 1001]
    finish_all(scheduler)


def test_finish_releases_and_abort_of_waiting():
    scheduler = make_scheduler(max_chunks=8)
    running, waiting = make_seq("a", 100), make_seq("b", 100)
    scheduler.add(running)
    scheduler.add(waiting)
    prefill(scheduler)
    scheduler.finish(waiting, "abort")
    assert not scheduler.waiting and waiting.finish_reason == "abort"
    scheduler.finish(running, "stop")
    assert running.sid is None and running.finish_time is not None
    assert not scheduler.has_unfinished()
    finish_all(scheduler)
