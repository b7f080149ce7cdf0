"""ChunkAttention: a prefix-aware chunked KV cache with two-phase-partition decode attention.

The prefix tree, the chunk allocator and the kernel plan live in the native module; this class owns
the KV memory (torch tensors) and is the typed Python face of the native entry points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from chunkattn_core._native import _C

PoolExhaustedError = _C.PoolExhaustedError

_PARTITIONS = {
    "auto": _C.PartitionMode.auto,
    "chunk_first": _C.PartitionMode.chunk_first,
    "sequence_first": _C.PartitionMode.sequence_first,
}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _token_list(token_ids) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        return token_ids.reshape(-1).tolist()
    return [int(t) for t in token_ids]


class ChunkAttention:
    """KV cache of fixed-size chunks in a prefix tree, with decode attention that reads each
    shared chunk once for all sequences under it.

    Parameters
    ----------
    num_heads, num_kv_heads, head_dim : int
        Query heads H, KV heads Hkv (H % Hkv == 0, GQA) and head dimension D (a multiple of 16).
    chunk_size : int
        Tokens per chunk (16, 32, 64 or 128).
    max_chunks : int
        Pool capacity in chunks; every layer has its own K and V for each chunk.
    dtype : torch.dtype
        Query/output dtype and KV storage dtype (float32, float16 or bfloat16).
    device : str or torch.device
    num_layers : int
        L; with L > 1, add_sequence/append take k, v with a leading [L] dimension.
    kv_dtype : torch.dtype, optional
        torch.int8 stores KV as int8 with one fp32 scale per (layer, chunk, kv head).
    share_prefix : bool
        False gives every sequence private chunks (the no-sharing baseline) and keeps no cache.
    max_item_chunks : int, optional
        Longest run of shared chunks one chunk-first work item covers (splits long prefixes for
        parallelism); default 8 on the CPU, 4 on CUDA.
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        chunk_size: int = 64,
        max_chunks: int = 1024,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
        num_layers: int = 1,
        kv_dtype: torch.dtype | None = None,
        share_prefix: bool = True,
        max_item_chunks: int | None = None,
    ):
        if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
            )
        if head_dim <= 0 or head_dim % 16:
            raise ValueError(f"head_dim must be a positive multiple of 16, got {head_dim}")
        if chunk_size not in (16, 32, 64, 128):
            raise ValueError(f"chunk_size must be 16, 32, 64 or 128, got {chunk_size}")
        if max_chunks <= 0 or num_layers <= 0:
            raise ValueError("max_chunks and num_layers must be positive")
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype}")
        if kv_dtype not in (None, torch.int8, dtype):
            raise ValueError(f"kv_dtype must be None (same as dtype) or torch.int8, got {kv_dtype}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.chunk_size, self.max_chunks, self.num_layers = chunk_size, max_chunks, num_layers
        self.dtype = dtype
        self.device = torch.device(device)
        self.quantized = kv_dtype == torch.int8
        self.scale = 1.0 / math.sqrt(head_dim)
        self.max_item_chunks = max_item_chunks or (4 if self.device.type == "cuda" else 8)
        self._tree = _C.PrefixTree(chunk_size, max_chunks, share_prefix)
        store = torch.int8 if self.quantized else dtype
        # [L, chunk, kv head, token, dim]: each (chunk, kv head) is one contiguous block for the kernels
        shape = (num_layers, max_chunks, num_kv_heads, chunk_size, head_dim)
        self.k_pool = torch.zeros(shape, dtype=store, device=self.device)
        self.v_pool = torch.zeros(shape, dtype=store, device=self.device)
        if self.quantized:
            self.k_scale = torch.zeros(
                (num_layers, max_chunks, num_kv_heads), dtype=torch.float32, device=self.device
            )
            self.v_scale = torch.zeros_like(self.k_scale)
        self._partial_o = torch.empty(0, dtype=torch.float32, device=self.device)
        self._partial_lse = torch.empty(0, dtype=torch.float32, device=self.device)
        self._plan_on_device: torch.Tensor | None = None
        self._plan_on_device_version = -1

    # ---- sequences ---------------------------------------------------------------------------

    @property
    def sequence_ids(self) -> list[int]:
        """Live sequence ids in decode order (depth-first over the prefix tree)."""
        return self._tree.sequence_order()

    def add_sequence(self, token_ids, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> int:
        """Adds a sequence; its leading full chunks that already exist in the tree are shared.

        k, v : [n, Hkv, D] (or [L, n, Hkv, D] when num_layers > 1), optional. Only the positions
        not already cached are written. Without k/v the slots are reserved for write_kv.
        Raises PoolExhaustedError (nothing changed) when the pool cannot hold the sequence.
        """
        tokens = _token_list(token_ids)
        if k is not None or v is not None:
            k, v = self._per_layer(k, len(tokens)), self._per_layer(v, len(tokens))
        sid = self._tree.add_sequence(tokens)
        if k is not None:
            start = self._tree.num_cached_tokens(sid)
            slots = self.slots(sid, start, len(tokens))
            for layer in range(self.num_layers):
                self.write_kv(slots, k[layer, start:], v[layer, start:], layer)
        return sid

    def append(self, sid: int, token_id: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends one decoded token to sequence sid. k, v: [Hkv, D] (or [L, Hkv, D])."""
        k = self._per_layer(k.unsqueeze(-3), 1)
        v = self._per_layer(v.unsqueeze(-3), 1)
        slots = self.append_tokens([sid], [token_id])
        for layer in range(self.num_layers):
            self.write_kv(slots, k[layer], v[layer], layer)

    def append_tokens(self, sids: Sequence[int], token_ids) -> torch.Tensor:
        """Grows each sequence by one token (all or nothing); returns the new slots [len(sids)]."""
        return self._tree.append_tokens(list(sids), _token_list(token_ids)).to(self.device)

    def remove_sequence(self, sid: int, cache: bool = True) -> None:
        """Drops a sequence. With cache, its full chunks stay as LRU prefix cache."""
        self._tree.remove_sequence(sid, cache)

    def match_prefix(self, token_ids) -> int:
        """Leading tokens of token_ids already held in shareable chunks (no state change)."""
        return self._tree.match_prefix(_token_list(token_ids))

    def can_add(self, token_ids) -> bool:
        """Whether add_sequence(token_ids) would succeed now, counting evictable cache."""
        return self._tree.can_add(_token_list(token_ids))

    def num_tokens(self, sid: int) -> int:
        return self._tree.num_tokens(sid)

    def num_cached_tokens(self, sid: int) -> int:
        """Leading tokens whose KV was already in the tree when sid was added."""
        return self._tree.num_cached_tokens(sid)

    def num_free_tokens(self) -> int:
        """Tokens that fit in free or evictable chunks."""
        stats = self._tree.stats()
        return (stats["chunks_free"] + stats["chunks_cached"]) * self.chunk_size

    def clear_cache(self) -> None:
        """Evicts every cached chunk that no live sequence references."""
        self._tree.clear_cache()

    def check_invariants(self) -> None:
        self._tree.check_invariants()

    def stats(self) -> dict:
        """Pool and tree counters: chunks_used/free/cached, tokens, stored_tokens, shared_tokens,
        evictions, and kv_bytes_used (bytes of K and V, every layer, in chunks in use)."""
        stats = self._tree.stats()
        stats["kv_bytes_used"] = stats["chunks_used"] * self.bytes_per_chunk
        return stats

    @property
    def bytes_per_chunk(self) -> int:
        return self.chunk_bytes(
            self.num_layers, self.num_kv_heads, self.head_dim, self.chunk_size, self.dtype, self.quantized
        )

    @staticmethod
    def chunk_bytes(
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        chunk_size: int,
        dtype: torch.dtype,
        quantized: bool = False,
    ) -> int:
        """Bytes of one chunk: K and V of every layer, plus the int8 scales when quantized."""
        element_size = 1 if quantized else dtype.itemsize
        per_layer = 2 * num_kv_heads * (chunk_size * head_dim * element_size + (4 if quantized else 0))
        return per_layer * num_layers

    # ---- KV I/O --------------------------------------------------------------------------------

    def slots(self, sid: int, start: int, end: int) -> torch.Tensor:
        """Flat slot ids (chunk_id * chunk_size + offset) of positions [start, end): long [end-start]."""
        return self._tree.slots(sid, start, end).to(self.device)

    def write_kv(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int = 0) -> None:
        """Stores k, v: [n, Hkv, D] at slots [n] of one layer."""
        if (
            k.shape != v.shape
            or k.shape[1:] != (self.num_kv_heads, self.head_dim)
            or k.shape[0] != slots.numel()
        ):
            raise ValueError(
                f"write_kv: k, v must be [{slots.numel()}, {self.num_kv_heads}, {self.head_dim}], "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        if slots.numel() == 0:
            return
        if self.quantized:
            self._write_quantized(self.k_pool[layer], self.k_scale[layer], slots, k)
            self._write_quantized(self.v_pool[layer], self.v_scale[layer], slots, v)
            return
        chunks, offsets = slots // self.chunk_size, slots % self.chunk_size
        self.k_pool[layer][chunks, :, offsets] = k.to(self.dtype)
        self.v_pool[layer][chunks, :, offsets] = v.to(self.dtype)

    def gather_kv(self, sid: int, end: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of positions [0, end) of a sequence, [end, Hkv, D] in self.dtype."""
        slots = self.slots(sid, 0, end)
        return self._gather(self.k_pool, "k_scale", slots, layer), self._gather(
            self.v_pool, "v_scale", slots, layer
        )

    # ---- attention -------------------------------------------------------------------------

    def prefill(self, sid: int, q: torch.Tensor, start: int, layer: int = 0) -> torch.Tensor:
        """Causal attention of the queries at positions [start, start+n) of sequence sid over its
        KV [0, start+n), shared prefix chunks included. q: [n, H, D] -> [n, H, D]."""
        n = q.shape[0]
        if q.dim() != 3 or q.shape[1:] != (self.num_heads, self.head_dim):
            raise ValueError(
                f"prefill: q must be [n, {self.num_heads}, {self.head_dim}], got {tuple(q.shape)}"
            )
        end = start + n
        if start < 0 or end > self.num_tokens(sid):
            raise ValueError(
                f"prefill: positions [{start}, {end}) outside a sequence of {self.num_tokens(sid)} tokens"
            )
        k, v = self.gather_kv(sid, end, layer)
        mask = None
        if start > 0:  # query i sits at position start + i and sees keys 0 .. start + i
            mask = (
                torch.arange(end, device=q.device)[None, :]
                <= torch.arange(start, end, device=q.device)[:, None]
            )
        out = F.scaled_dot_product_attention(
            q.to(self.dtype).transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            is_causal=mask is None,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return out.squeeze(0).transpose(0, 1)

    def decode(self, q: torch.Tensor, layer: int = 0, partition: str = "auto") -> torch.Tensor:
        """softmax(q K^T / sqrt(D)) V for every live sequence.

        q : [num_sequences, H, D] in self.sequence_ids order, self.dtype.
        partition : "auto" (shared chunks chunk-first, private ones sequence-first), "chunk_first"
            or "sequence_first"; all give the same result.
        Returns [num_sequences, H, D] in self.dtype.
        """
        if partition not in _PARTITIONS:
            raise ValueError(f"partition must be one of {sorted(_PARTITIONS)}, got {partition!r}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside [0, {self.num_layers})")
        plan = self._tree.plan(_PARTITIONS[partition], self.max_item_chunks)
        if q.dtype != self.dtype:
            raise ValueError(f"decode: q must be {self.dtype}, got {q.dtype}")
        q = q.contiguous()
        out = torch.empty_like(q)
        rows = plan.num_partial_rows
        if self._partial_lse.numel() < rows * self.num_heads:
            self._partial_o = torch.empty(
                (rows, self.num_heads, self.head_dim), dtype=torch.float32, device=self.device
            )
            self._partial_lse = torch.empty((rows, self.num_heads), dtype=torch.float32, device=self.device)
        _C.decode_attention(
            q,
            self.k_pool[layer],
            self.v_pool[layer],
            self.k_scale[layer] if self.quantized else None,
            self.v_scale[layer] if self.quantized else None,
            plan,
            self._device_plan(plan),
            out,
            self._partial_o,
            self._partial_lse,
            self.scale,
            torch.get_num_threads(),
        )
        return out

    # ---- private helpers -------------------------------------------------------------------

    def _per_layer(self, x: torch.Tensor, n: int) -> torch.Tensor:
        expected = (n, self.num_kv_heads, self.head_dim)
        if self.num_layers == 1 and x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != self.num_layers or x.shape[1:] != expected:
            raise ValueError(
                f"k/v must be {'[L, ' if self.num_layers > 1 else '['}{n}, "
                f"{self.num_kv_heads}, {self.head_dim}] (L={self.num_layers}), got {tuple(x.shape)}"
            )
        return x

    def _device_plan(self, plan) -> torch.Tensor | None:
        if self.device.type == "cpu":
            return None
        if self._plan_on_device_version != plan.version:
            self._plan_on_device = plan.packed().to(self.device, non_blocking=True)
            self._plan_on_device_version = plan.version
        return self._plan_on_device

    def _gather(self, pool: torch.Tensor, scale_name: str, slots: torch.Tensor, layer: int) -> torch.Tensor:
        chunks = slots // self.chunk_size
        values = pool[layer][chunks, :, slots % self.chunk_size]  # [n, Hkv, D]
        if not self.quantized:
            return values
        scale = getattr(self, scale_name)[layer][chunks]  # [n, Hkv]
        return (values.float() * scale[:, :, None]).to(self.dtype)

    def _write_quantized(
        self, pool: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, x: torch.Tensor
    ) -> None:
        # pool: [N, Hkv, C, D] int8, scale: [N, Hkv]; one symmetric scale per (chunk, kv head).
        # A chunk's scale only grows, at least doubling each time, and the tokens already in the chunk
        # are requantised then: the rounding errors of all requantisations sum to at most one final
        # scale step (s/2 + s/4 + ...), however many times a chunk grows.
        x = x.float()
        chunks, inverse = torch.unique(slots // self.chunk_size, return_inverse=True)
        amax = torch.zeros((chunks.numel(), self.num_kv_heads), dtype=torch.float32, device=x.device)
        amax.scatter_reduce_(0, inverse[:, None].expand(-1, self.num_kv_heads), x.abs().amax(-1), "amax")
        restarted = torch.zeros(chunks.numel(), dtype=torch.bool, device=x.device)
        restarted[inverse[slots % self.chunk_size == 0]] = True  # first write of a (re)allocated chunk
        old = torch.where(restarted[:, None], torch.zeros_like(amax), scale[chunks])
        needed = amax / 127.0
        grown_head = (needed > old) & (old > 0)
        new = torch.where(grown_head, torch.maximum(needed, 2 * old), torch.maximum(old, needed))
        grown = grown_head.any(-1)
        if grown.any():
            ids = chunks[grown]
            ratio = (old[grown] / new[grown])[:, :, None, None]
            pool[ids] = (pool[ids].float() * ratio).round_().clamp_(-127, 127).to(torch.int8)
        scale[chunks] = new
        safe = torch.where(new > 0, new, torch.ones_like(new))[inverse]  # [n, Hkv]
        quantized = (x / safe[:, :, None]).round_().clamp_(-127, 127).to(torch.int8)
        pool[slots // self.chunk_size, :, slots % self.chunk_size] = quantized
