"""Prefix tree and chunk pool: table-driven cases and random trees (hypothesis), CPU only."""

import pytest
import torch
from attention_reference import naive_attention
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from chunkattn_core import ChunkAttention, PoolExhaustedError
from chunkattn_core._native import _C

C = 4  # chunk size of the table-driven cases


def tree(num_chunks=16, share=True):
    return _C.PrefixTree(C, num_chunks, share)


@pytest.mark.parametrize(
    "sequences, chunks_used, shared_tokens, cached_of_last",
    [
        ([[1, 2, 3]], 1, 0, 0),  # one partial chunk
        ([[1, 2, 3, 4]], 1, 0, 0),  # one full chunk
        ([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], 3, 4, 4),  # full chunk shared, tails private
        ([[1, 2, 3], [1, 2, 3]], 2, 0, 0),  # partial chunks are never shared
        ([[1, 2, 3, 4], [1, 2, 3, 4]], 1, 4, 4),  # identical full sequences share all
        ([[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 0]], 4, 4, 4),  # diverge in chunk 2
        ([[9, 2, 3, 4, 5], [1, 2, 3, 4, 5]], 4, 0, 0),  # first token differs: nothing shared
        ([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 1]], 3, 8, 8),
    ],
)
def test_sharing_table(sequences, chunks_used, shared_tokens, cached_of_last):
    t = tree()
    ids = [t.add_sequence(s) for s in sequences]
    stats = t.stats()
    assert (stats["chunks_used"], stats["shared_tokens"]) == (chunks_used, shared_tokens)
    assert t.num_cached_tokens(ids[-1]) == cached_of_last
    assert stats["tokens"] == sum(map(len, sequences))
    t.check_invariants()
    for sid in ids:
        t.remove_sequence(sid, cache=False)
    assert t.stats()["chunks_used"] == 0
    t.check_invariants()


def test_no_sharing_mode_keeps_everything_private():
    t = tree(share=False)
    a, b = t.add_sequence([1, 2, 3, 4, 5]), t.add_sequence([1, 2, 3, 4, 5])
    assert t.stats()["chunks_used"] == 4 and t.stats()["shared_tokens"] == 0
    assert t.match_prefix([1, 2, 3, 4, 5]) == 0
    t.remove_sequence(a)
    t.remove_sequence(b)
    assert t.stats()["chunks_used"] == 0  # nothing cached without sharing


def test_cache_outlives_sequence_and_is_reused():
    t = tree()
    a = t.add_sequence([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    t.remove_sequence(a, cache=True)
    assert t.stats()["chunks_cached"] == 2 and t.stats()["chunks_used"] == 2  # tail chunk freed
    assert t.match_prefix([1, 2, 3, 4, 5, 6, 7, 8, 0]) == 8
    b = t.add_sequence([1, 2, 3, 4, 5, 6, 7, 8, 0])
    assert t.num_cached_tokens(b) == 8 and t.stats()["chunks_cached"] == 0
    t.check_invariants()


def test_full_tail_becomes_shareable_after_appends():
    t = tree()
    a = t.add_sequence([1, 2, 3])
    t.append_tokens([a], [4])
    b = t.add_sequence([1, 2, 3, 4, 5])
    assert t.num_cached_tokens(b) == 4 and t.stats()["shared_tokens"] == 4
    t.check_invariants()


def test_lru_eviction_order():
    t = tree(num_chunks=4)
    for first in (10, 20, 30):
        t.remove_sequence(t.add_sequence([first, 1, 1, 1]), cache=True)
    t.add_sequence([20, 1, 1, 1])  # touches 20: now 10 is least recently used
    t.remove_sequence(t.add_sequence([40, 1, 1, 1, 5, 5, 5, 5]), cache=False)  # 1 free + 1 evicted
    assert t.match_prefix([10, 1, 1, 1]) == 0  # least recently used: evicted
    assert t.match_prefix([30, 1, 1, 1]) == 4  # more recent cache: kept
    assert t.match_prefix([20, 1, 1, 1]) == 4  # referenced: never evicted
    assert t.stats()["evictions"] == 1
    t.check_invariants()


def test_exhaustion_leaves_tree_unchanged():
    t = tree(num_chunks=3)
    a = t.add_sequence(list(range(8)))
    before = t.stats()
    assert not t.can_add(list(range(100, 109)))
    with pytest.raises(PoolExhaustedError, match="KV pool exhausted"):
        t.add_sequence(list(range(100, 109)))
    assert t.stats() == before
    b = t.add_sequence([7, 7, 7])  # last chunk
    t.append_tokens([b], [7])  # fills b's chunk
    with pytest.raises(PoolExhaustedError):
        t.append_tokens([a, b], [1, 1])  # both need a new chunk, none left: neither grows
    assert (t.num_tokens(a), t.num_tokens(b)) == (8, 4)
    t.check_invariants()


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda t: t.add_sequence([]), "at least one token"),
        (lambda t: t.remove_sequence(12345), "unknown sequence"),
        (lambda t: t.append_tokens([0, 0], [1, 2]), "given twice"),
        (lambda t: t.append_tokens([0], [1, 2]), "1 sequence ids but 2 tokens"),
        (lambda t: t.slots(0, 0, 99), "outside a sequence"),
    ],
)
def test_bad_calls_raise_clear_errors(call, error):
    t = tree()
    t.add_sequence([1, 2, 3])
    with pytest.raises(ValueError, match=error):
        call(t)
    t.check_invariants()


class RandomTrees(RuleBasedStateMachine):
    """Sequences from nested prefix groups are added, grown, decoded and removed at random; decode
    always equals attention over each sequence's own concatenated KV, and invariants hold."""

    H, HKV, D, CHUNK = 4, 2, 16, 16

    @initialize(num_chunks=st.integers(8, 40))
    def setup(self, num_chunks):
        self.attn = ChunkAttention(
            self.H, self.HKV, self.D, chunk_size=self.CHUNK, max_chunks=num_chunks, dtype=torch.float32
        )
        self.gen = torch.Generator().manual_seed(num_chunks)
        self.token_kv = {}  # (position, token prefix hash) -> kv, so equal prefixes have equal KV
        self.seqs = {}  # sid -> (tokens, k, v)

    def kv_for(self, tokens):
        ks, vs = [], []
        for i in range(len(tokens)):
            key = tuple(tokens[: i + 1])
            if key not in self.token_kv:
                self.token_kv[key] = (
                    torch.randn(self.HKV, self.D, generator=self.gen),
                    torch.randn(self.HKV, self.D, generator=self.gen),
                )
            ks.append(self.token_kv[key][0])
            vs.append(self.token_kv[key][1])
        return torch.stack(ks), torch.stack(vs)

    @rule(
        group=st.integers(0, 3), sub=st.integers(0, 2), prefix_len=st.integers(0, 50), tail=st.integers(1, 20)
    )
    def add(self, group, sub, prefix_len, tail):
        base = [group] * 20 + [group * 10 + sub] * 30  # groups share 20 tokens, subgroups 50
        tokens = base[:prefix_len] + [1000 + len(self.token_kv) + i for i in range(tail)]
        k, v = self.kv_for(tokens)
        can = self.attn.can_add(tokens)
        try:
            sid = self.attn.add_sequence(tokens, k, v)
        except PoolExhaustedError:
            assert not can
            return
        assert can
        self.seqs[sid] = (tokens, k, v)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def append(self, data):
        sids = data.draw(st.lists(st.sampled_from(sorted(self.seqs)), min_size=1, unique=True))
        new = {sid: self.seqs[sid][0] + [5000 + len(self.token_kv)] for sid in sids}
        kvs = {sid: self.kv_for(new[sid]) for sid in sids}
        try:
            slots = self.attn.append_tokens(sids, [new[s][-1] for s in sids])
        except PoolExhaustedError:
            return
        k = torch.stack([kvs[s][0][-1] for s in sids])
        v = torch.stack([kvs[s][1][-1] for s in sids])
        self.attn.write_kv(slots, k, v)
        for sid in sids:
            self.seqs[sid] = (new[sid], *kvs[sid])

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), cache=st.booleans())
    def remove(self, data, cache):
        sid = data.draw(st.sampled_from(sorted(self.seqs)))
        self.attn.remove_sequence(sid, cache=cache)
        del self.seqs[sid]

    @precondition(lambda self: self.seqs)
    @rule(partition=st.sampled_from(["auto", "chunk_first", "sequence_first"]))
    def decode(self, partition):
        order = self.attn.sequence_ids
        assert sorted(order) == sorted(self.seqs)
        q = torch.randn(len(order), self.H, self.D, generator=self.gen)
        out = self.attn.decode(q, partition=partition)
        ref = torch.stack(
            [naive_attention(q[r], self.seqs[s][1], self.seqs[s][2]) for r, s in enumerate(order)]
        )
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)

    @invariant()
    def consistent(self):
        if hasattr(self, "attn"):
            self.attn.check_invariants()

    def teardown(self):
        for sid in list(self.seqs):
            self.attn.remove_sequence(sid)
        self.attn.clear_cache()
        assert self.attn.stats()["chunks_used"] == 0


TestRandomTrees = RandomTrees.TestCase
TestRandomTrees.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
