"""SamplingParams and the sampler: greedy, temperature, top-k and top-p with a generator per request."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class SamplingParams:
    """How one request picks its tokens.

    temperature 0 is greedy; top_k 0 (or -1) and top_p 1 turn those filters off. A request with a
    seed draws from its own generator, so it gets the same tokens whatever it is batched with.
    """

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be a number in [0, 100], got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be an integer >= 0 (0 or -1: no top-k), got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed must be None or an integer in [0, 2**64), got {self.seed!r}")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        self.stop = list(self.stop)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scaled and filtered logits of one row: [vocab] fp32, removed tokens set to -inf."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        remove = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(remove.scatter(0, order, remove), -math.inf)
    return logits


def sample(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> list[int]:
    """One token per row of logits [B, vocab], each row with its own params and generator.

    Rows are sampled one at a time so a request's tokens never depend on its batch neighbours.
    """
    if logits.dim() != 2 or logits.shape[0] != len(params) or len(params) != len(generators):
        raise ValueError(
            f"sample: logits [B, vocab] with B params and generators, got {tuple(logits.shape)}, "
            f"{len(params)} params, {len(generators)} generators"
        )
    token_ids = []
    greedy_ids = logits.argmax(-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            token_ids.append(greedy_ids[row])
            continue
        probs = filter_logits(logits[row], p.temperature, p.top_k, p.top_p).softmax(-1)
        token_ids.append(int(torch.multinomial(probs, 1, generator=generator)))
    return token_ids
