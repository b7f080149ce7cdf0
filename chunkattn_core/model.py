"""LlamaModel: a Llama-architecture decoder whose attention runs on ChunkAttention.

The model holds weights only; the KV cache is the ChunkAttention instance passed to each call
(one tree, ``num_layers`` KV pools). Q/K/V and gate/up projections are fused into one Linear each.
Weights come in under Hugging Face Llama names through ``load_weights``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chunkattn_core.linear import Linear, linear
from chunkattn_core.model_config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32, as Hugging Face's LlamaRMSNorm
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Rotary:
    """RoPE with the ``rotate_half`` layout: dims [0, D/2) pair with [D/2, D)."""

    def __init__(self, config: ModelConfig):
        self.inv_freq = rope_inv_freq(config)  # fp32 [D/2], kept out of the module's state/dtype casts
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: long [n] -> cos, sin: [n, 1, D] in dtype (broadcast over heads)."""
        inv_freq = self._by_device.get(positions.device)
        if inv_freq is None:
            inv_freq = self._by_device[positions.device] = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [n, heads, D]; cos, sin: [n, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [D/2] (fp32), with linear or Llama 3 scaling when configured."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size)
        self.o_proj = Linear(self.q_size, config.hidden_size)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x: [n, hidden] -> q [n, H, D], k [n, Hkv, D] (both rotated), v [n, Hkv, D]."""
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rotary(q.view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(k.view(n, self.num_kv_heads, self.head_dim), cos, sin)
        return q, k, v.reshape(n, self.num_kv_heads, self.head_dim)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)


class LlamaModel(nn.Module):
    """Llama decoder (GQA, RoPE, SwiGLU, RMSNorm, optionally tied lm_head) over a ChunkAttention cache.

    The ChunkAttention passed to ``prefill``/``decode`` must have ``num_layers``, ``num_heads``,
    ``num_kv_heads`` and ``head_dim`` equal to the config's.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.rotary = Rotary(config)

    # ---- weights ----------------------------------------------------------------------------

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Loads Hugging Face Llama-named weights, fusing q/k/v and gate/up. Raises ValueError
        naming missing, unexpected or mis-shaped tensors. Tensors are assigned (no copy) when their
        dtype and device already match the parameters."""
        weights = dict(weights)
        state = {}
        for name in ("model.embed_tokens.weight", "model.norm.weight"):
            state[name.removeprefix("model.")] = _take(weights, name)
        if self.lm_head is not None:
            state["lm_head.weight"] = _take(weights, "lm_head.weight")
        else:
            weights.pop("lm_head.weight", None)  # tied checkpoints may store a copy
        for i in range(self.config.num_layers):
            hf, ours = f"model.layers.{i}.", f"layers.{i}."
            for norm in ("input_layernorm", "post_attention_layernorm"):
                state[f"{ours}{norm}.weight"] = _take(weights, f"{hf}{norm}.weight")
            state[f"{ours}self_attn.qkv_proj.weight"] = torch.cat(
                [_take(weights, f"{hf}self_attn.{p}_proj.weight") for p in "qkv"]
            )
            state[f"{ours}self_attn.o_proj.weight"] = _take(weights, f"{hf}self_attn.o_proj.weight")
            state[f"{ours}mlp.gate_up_proj.weight"] = torch.cat(
                [_take(weights, f"{hf}mlp.{p}_proj.weight") for p in ("gate", "up")]
            )
            state[f"{ours}mlp.down_proj.weight"] = _take(weights, f"{hf}mlp.down_proj.weight")
        unexpected = [n for n in weights if not n.endswith("rotary_emb.inv_freq")]
        if unexpected:
            raise ValueError(
                f"unexpected weights for a {self.config.num_layers}-layer Llama: {unexpected[:8]}"
            )
        own = dict(self.named_parameters())
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"weight {name}: shape {tuple(tensor.shape)} does not match the config's "
                    f"{tuple(own[name].shape)}"
                )
        self.load_state_dict(state, strict=True, assign=True)

    # ---- forward ----------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, attn, sid: int, token_ids: torch.Tensor, start: int, write_from: int) -> torch.Tensor:
        """Runs positions [start, start + n) of sequence sid and returns the last position's logits.

        token_ids : long [n], the sequence's tokens at those positions (n >= 1).
        start : position of token_ids[0]; KV of positions [0, start) must already be in attn.
        write_from : KV is written for positions >= write_from only (start <= write_from <= start + n):
            positions below it lie in shared cached chunks that must not be rewritten.
        Returns fp32 logits [vocab].
        """
        self._check_attention(attn)
        token_ids = self._as_ids(token_ids)
        n = token_ids.numel()
        end = start + n
        if n == 0 or start < 0 or not start <= write_from <= end:
            raise ValueError(
                f"prefill: need n >= 1 and 0 <= start <= write_from <= start + n, got "
                f"n={n}, start={start}, write_from={write_from}"
            )
        if end > attn.num_tokens(sid):
            raise ValueError(
                f"prefill: positions up to {end} but sequence {sid} has {attn.num_tokens(sid)} tokens"
            )
        write_slots = attn.slots(sid, write_from, end)
        skip = write_from - start
        cos, sin = self.rotary.cos_sin(torch.arange(start, end, device=token_ids.device), self._dtype)
        x = self.embed_tokens(token_ids)  # [n, hidden]
        for index, layer in enumerate(self.layers):
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
            attn.write_kv(write_slots, k[skip:], v[skip:], index)
            out = attn.prefill(sid, q.to(attn.dtype), start, index)  # [n, H, D]
            x = x + layer.self_attn.o_proj(out.to(x.dtype).reshape(n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._logits(x[-1:])[0]

    @torch.inference_mode()
    def decode(
        self, attn, token_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        """One decode step for every live sequence of attn.

        token_ids, positions, slots : long [B], B == len(attn.sequence_ids), rows in
            attn.sequence_ids order; slots are where each new token's KV goes (from append_tokens).
        Returns fp32 logits [B, vocab].
        """
        self._check_attention(attn)
        token_ids = self._as_ids(token_ids)
        positions, slots = (
            torch.as_tensor(positions, dtype=torch.long),
            torch.as_tensor(slots, dtype=torch.long),
        )
        batch = token_ids.numel()
        if positions.numel() != batch or slots.numel() != batch:
            raise ValueError("decode: token_ids, positions and slots must have the same length")
        if batch != len(attn.sequence_ids):
            raise ValueError(f"decode: {batch} tokens for {len(attn.sequence_ids)} live sequences")
        positions = positions.reshape(-1).to(token_ids.device)
        slots = slots.reshape(-1).to(attn.device)
        cos, sin = self.rotary.cos_sin(positions, self._dtype)
        x = self.embed_tokens(token_ids)  # [B, hidden]
        for index, layer in enumerate(self.layers):
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
            attn.write_kv(slots, k, v, index)
            out = attn.decode(q.to(attn.dtype).contiguous(), index)  # [B, H, D]
            x = x + layer.self_attn.o_proj(out.to(x.dtype).reshape(batch, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._logits(x)

    # ---- private helpers --------------------------------------------------------------------

    @property
    def _dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return linear(x, weight).float()

    def _as_ids(self, token_ids) -> torch.Tensor:
        device = self.embed_tokens.weight.device
        if not isinstance(token_ids, torch.Tensor):
            token_ids = torch.tensor(token_ids, dtype=torch.long)
        return token_ids.reshape(-1).to(device=device, dtype=torch.long)

    def _check_attention(self, attn) -> None:
        c = self.config
        expected = (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim)
        got = (attn.num_layers, attn.num_heads, attn.num_kv_heads, attn.head_dim)
        if got != expected:
            raise ValueError(
                f"ChunkAttention (layers, heads, kv heads, head_dim) = {got} does not fit the model "
                f"{expected}"
            )


def _take(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in weights:
        raise ValueError(f"missing weight {name!r}")
    return weights.pop(name)
