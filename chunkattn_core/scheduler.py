"""Continuous batching over a ChunkAttention KV cache: which requests run, wait or are preempted.

The scheduler never touches the model. Each engine step asks it for the requests to admit (they
are added to the KV cache and must be prefilled in the order given, since a later one may share
chunks that an earlier one is about to write), then for the decode batch (one new KV slot per
running sequence, in attn.sequence_ids order), and tells it which requests finished.
"""

from __future__ import annotations

import time
from collections import deque

import torch

from chunkattn_core.attention import ChunkAttention, PoolExhaustedError
from chunkattn_core.config import EngineConfig
from chunkattn_core.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, config: EngineConfig, attn: ChunkAttention):
        self.config = config
        self.attn = attn
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}  # by ChunkAttention sid, in admission order

    # ---- public API ----------------------------------------------------------------------

    def check(self, seq: Sequence) -> None:
        """Raises ValueError when seq can never run: an empty prompt, a prompt with no room left for
        a completion within max_model_len, or more KV than the whole pool holds."""
        num_prompt = len(seq.prompt_token_ids)
        max_len = self.config.max_model_len
        if num_prompt == 0:
            raise ValueError(f"request {seq.request_id!r}: the prompt is empty")
        if num_prompt >= max_len:
            raise ValueError(
                f"request {seq.request_id!r}: the prompt has {num_prompt} tokens but max_model_len is "
                f"{max_len}, which leaves no room for a completion"
            )
        num_chunks = -(-(num_prompt + seq.max_tokens) // self.attn.chunk_size)
        if num_chunks > self.attn.max_chunks:
            raise ValueError(
                f"request {seq.request_id!r}: {num_prompt} prompt + {seq.max_tokens} completion tokens "
                f"need {num_chunks} KV chunks but the pool holds {self.attn.max_chunks}"
            )

    def add(self, seq: Sequence) -> None:
        """Queues seq (after check)."""
        self.check(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule_prefills(self) -> list[Sequence]:
        """Admits waiting requests, oldest first, while the batch, the per-step prefill budget and
        the KV pool allow; each is added to the KV cache. Returns them in the order to prefill."""
        admitted: list[Sequence] = []
        budget = self.config.max_prefill_tokens
        while self.waiting and len(self.running) < self.config.max_batch_size:
            seq = self.waiting[0]
            token_ids = seq.token_ids
            num_uncached = len(token_ids) - self.attn.match_prefix(token_ids)
            if admitted and num_uncached > budget:
                break
            if not self._can_admit(token_ids):
                break  # the pool is full for now: wait (oldest first, no overtaking)
            self.waiting.popleft()
            seq.sid = self.attn.add_sequence(token_ids)
            if seq.cached_prompt_tokens is None:
                num_cached = self.attn.num_cached_tokens(seq.sid)
                seq.cached_prompt_tokens = min(num_cached, len(seq.prompt_token_ids))
            seq.status = SequenceStatus.RUNNING
            self.running[seq.sid] = seq
            admitted.append(seq)
            budget -= num_uncached
        return admitted

    def schedule_decode(self) -> tuple[list[Sequence], torch.Tensor]:
        """Gives every running sequence a KV slot for its last generated token.

        Returns the sequences in attn.sequence_ids order and their slots [B]. When the pool runs
        out, the newest running requests are preempted (back to the front of the queue, to be
        recomputed later) until the others fit.
        """
        while True:
            sids = self.attn.sequence_ids
            if not sids:
                return [], torch.empty(0, dtype=torch.long)
            seqs = [self.running[sid] for sid in sids]
            try:
                slots = self.attn.append_tokens(sids, [seq.output_token_ids[-1] for seq in seqs])
                return seqs, slots
            except PoolExhaustedError:
                if len(self.running) == 1:  # check() makes this unreachable
                    raise
                self.preempt(next(reversed(self.running.values())))

    def preempt(self, seq: Sequence) -> None:
        """Takes a running seq out of the KV cache and puts it first in the queue. Its full chunks
        stay cached, so readmitting it recomputes little when they survive."""
        self._release(seq, cache=True)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str, cache: bool = True) -> None:
        """Ends seq ("stop", "length" or "abort"): its chunks are released at once; with cache, its
        full chunks stay in the prefix tree as evictable cache. cache=False is for a sequence whose
        KV was never written (a failed prefill)."""
        if seq.sid is not None:
            self._release(seq, cache)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_time = time.monotonic()

    # ---- private helpers -----------------------------------------------------------------

    def _can_admit(self, token_ids: list[int]) -> bool:
        if not self.attn.can_add(token_ids):
            return False
        if not self.running:
            return True
        # Keep room for the next decode step: each sequence whose chunks are all full needs a new one.
        chunk_size = self.attn.chunk_size
        num_matched_chunks = self.attn.match_prefix(token_ids) // chunk_size
        num_new_chunks = -(-len(token_ids) // chunk_size) - num_matched_chunks
        num_growing = sum(self.attn.num_tokens(sid) % chunk_size == 0 for sid in self.running)
        num_growing += len(token_ids) % chunk_size == 0
        stats = self.attn.stats()
        # matched chunks may be counted among the evictable ones, yet they are not free once shared
        num_free_chunks = stats["chunks_free"] + stats["chunks_cached"]
        num_free_chunks -= min(num_matched_chunks, stats["chunks_cached"])
        return num_new_chunks + num_growing <= num_free_chunks

    def _release(self, seq: Sequence, cache: bool) -> None:
        self.attn.remove_sequence(seq.sid, cache=cache)
        del self.running[seq.sid]
        seq.sid = None
