"""Naive fp32 references for the attention tests (no chunking, no sharing)."""

import math

import torch


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [H, D] one decode query; k, v: [n, Hkv, D]. softmax(q k^T / sqrt(D)) v in fp32 -> [H, D]."""
    group = q.shape[0] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("hd,nhd->hn", q.float(), k) / math.sqrt(q.shape[-1])
    return torch.einsum("hn,nhd->hd", scores.softmax(-1), v)


def naive_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """q: [m, H, D] at positions start..start+m-1; k, v: [start+m, Hkv, D] -> [m, H, D] fp32."""
    return torch.stack(
        [naive_attention(q[i], k[: start + i + 1], v[: start + i + 1]) for i in range(q.shape[0])]
    )


TOLERANCE = {  # (atol, rtol) of the kernel output against the fp32 reference, by storage dtype
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
