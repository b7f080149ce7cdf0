"""chunkattn core: ChunkAttention (prefix-aware chunked KV cache, two-phase-partition attention),
the Llama model and the inference engine. No ray, grpc or redis imports here."""

from chunkattn_core.attention import ChunkAttention, PoolExhaustedError

__all__ = ["ChunkAttention", "PoolExhaustedError"]
