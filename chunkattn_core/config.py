"""EngineConfig: the one configuration object of the inference engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHUNK_SIZES = (16, 32, 64, 128)


@dataclass(slots=True)
class EngineConfig:
    """Everything the engine needs to build its model, KV cache and scheduler.

    The KV pool holds ``max_chunks`` chunks of ``chunk_size`` tokens (every layer's K and V for
    each). ``kv_memory_bytes``, when given, sizes the pool from a memory budget instead (it wins
    over ``max_chunks``); the engine turns it into chunks once it knows the model's shape.
    """

    model: str = "smollm2"  # "smollm2" or a local Hugging Face Llama checkpoint directory
    dtype: str = "float32"  # weights, activations and KV: float32, float16 or bfloat16
    device: str = "cpu"  # "cpu" or "cuda" (or "cuda:N")
    chunk_size: int = 64
    max_chunks: int = 512
    kv_memory_bytes: int | None = None  # when given, overrides max_chunks
    max_batch_size: int = 32  # running sequences decoded together
    max_model_len: int = 4096  # prompt + completion tokens of one request (capped by the model)
    max_prefill_tokens: int = 8192  # prompt tokens admitted per step (the first request always is)
    kv_int8: bool = False  # INT8 KV with per-(chunk, kv head) scales
    prefix_cache: bool = True  # share KV of common prefixes; False gives every request private chunks
    seed: int = 0  # seeds the per-request generators of requests that give no seed

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be 'smollm2' or a path to a local checkpoint directory")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
        if self.chunk_size not in CHUNK_SIZES:
            raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}, got {self.chunk_size}")
        if self.max_chunks <= 0:
            raise ValueError(f"max_chunks must be positive, got {self.max_chunks}")
        if self.kv_memory_bytes is not None and self.kv_memory_bytes <= 0:
            raise ValueError(f"kv_memory_bytes must be positive, got {self.kv_memory_bytes}")
        for name in ("max_batch_size", "max_model_len", "max_prefill_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def num_chunks_for(self, bytes_per_chunk: int) -> int:
        """Pool size in chunks: max_chunks, or as many chunks as kv_memory_bytes holds."""
        if self.kv_memory_bytes is None:
            return self.max_chunks
        num_chunks = self.kv_memory_bytes // bytes_per_chunk
        if num_chunks <= 0:
            raise ValueError(
                f"kv_memory_bytes={self.kv_memory_bytes} is smaller than one chunk ({bytes_per_chunk} bytes)"
            )
        return num_chunks
