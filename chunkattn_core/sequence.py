"""A request's state while it waits, runs and finishes, and what the engine hands back for it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from chunkattn_core.sampling import SamplingParams

FINISH_REASONS = ("stop", "length", "abort")


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued: not in the KV cache
    RUNNING = "running"  # in the KV cache, decoded every step
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request: its prompt, the tokens generated so far and where it stands.

    While running, the KV cache holds every token but the last generated one, which the next
    decode step appends (its KV is computed by the same forward pass that predicts the next token).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # params.max_tokens, capped so the request fits max_model_len
    generator: torch.Generator | None = None
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    sid: int | None = None  # ChunkAttention sequence id while running
    cached_prompt_tokens: int | None = None  # prompt tokens found in the prefix cache at first admission
    num_preemptions: int = 0
    error: str | None = None  # why the engine aborted it, when it failed
    text: str = ""  # detokenized output, cut at a stop string
    num_emitted_chars: int = 0  # text and tokens already handed to the stream
    num_emitted_tokens: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def token_ids(self) -> list[int]:
        """Prompt and generated tokens."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def set_text(self, text: str) -> bool:
        """Sets the detokenized output; cuts it before the earliest stop string, returning whether
        there was one."""
        hits = [i for i in (text.find(s) for s in self.params.stop) if i >= 0]
        self.text = text[: min(hits)] if hits else text
        return bool(hits)

    def next_delta(self) -> StreamDelta | None:
        """The text and tokens not streamed yet (None when there are none and seq is running). While
        running, an incomplete UTF-8 character (decoded as U+FFFD) and a tail that may begin a stop
        string are held back."""
        num_chars = len(self.text) if self.is_finished else _streamable_len(self.text, self.params.stop)
        delta = StreamDelta(
            request_id=self.request_id,
            text=self.text[self.num_emitted_chars : num_chars],
            token_ids=self.output_token_ids[self.num_emitted_tokens :],
            finished=self.is_finished,
            output=self.output() if self.is_finished else None,
        )
        self.num_emitted_chars = max(self.num_emitted_chars, num_chars)
        self.num_emitted_tokens = len(self.output_token_ids)
        return delta if delta.text or delta.token_ids or delta.finished else None

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            text=self.text,
            token_ids=list(self.output_token_ids),
            prompt_tokens=len(self.prompt_token_ids),
            cached_prompt_tokens=self.cached_prompt_tokens or 0,
            completion_tokens=len(self.output_token_ids),
            finish_reason=self.finish_reason,
            arrival_time=self.arrival_time,
            first_token_time=self.first_token_time,
            finish_time=self.finish_time,
            num_preemptions=self.num_preemptions,
            error=self.error,
        )


@dataclass(slots=True)
class RequestOutput:
    """A request's result (final once finish_reason is set)."""

    request_id: str
    text: str
    token_ids: list[int]  # generated tokens (an end-of-sequence token included)
    prompt_tokens: int
    cached_prompt_tokens: int  # prompt tokens whose KV came from the prefix cache
    completion_tokens: int
    finish_reason: str | None  # "stop", "length", "abort"; None while running
    arrival_time: float  # time.monotonic() seconds
    first_token_time: float | None
    finish_time: float | None
    num_preemptions: int = 0
    error: str | None = None  # set when the engine failed the request (finish_reason "abort")

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival to the first generated token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass(slots=True)
class StreamDelta:
    """New output of one request since its previous delta; the last one carries the final output."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool = False
    output: RequestOutput | None = None  # set on the last delta


def _streamable_len(text: str, stop: list[str]) -> int:
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for s in stop:
        for n in range(min(len(s) - 1, end), held, -1):
            if text.endswith(s[:n], 0, end):
                held = n
                break
    return end - held
