"""ChunkAttention decode/prefill against a naive fp32 reference over each sequence's full KV."""

import pytest
import torch
from attention_reference import TOLERANCE, naive_attention, naive_causal_attention
from conftest import DEVICES

from chunkattn_core import ChunkAttention


def build(
    batch,
    shared_len,
    private_len,
    *,
    heads=(9, 3),
    head_dim=64,
    chunk_size=64,
    dtype=torch.float32,
    device="cpu",
    seed=0,
    kv_dtype=None,
):
    """`batch` sequences sharing `shared_len` tokens, each with `private_len` tokens of its own."""
    num_heads, num_kv_heads = heads
    gen = torch.Generator().manual_seed(seed)
    total = shared_len + private_len
    chunks = (shared_len // chunk_size + 1) + batch * ((private_len + chunk_size) // chunk_size + 1)
    attn = ChunkAttention(
        num_heads,
        num_kv_heads,
        head_dim,
        chunk_size=chunk_size,
        max_chunks=chunks,
        dtype=dtype,
        device=device,
        kv_dtype=kv_dtype,
    )
    shared_k = torch.randn(shared_len, num_kv_heads, head_dim, generator=gen)
    shared_v = torch.randn(shared_len, num_kv_heads, head_dim, generator=gen)
    kv = {}
    for b in range(batch):
        tokens = list(range(shared_len)) + [10_000 + b * total + i for i in range(private_len)]
        k = torch.cat([shared_k, torch.randn(private_len, num_kv_heads, head_dim, generator=gen)]).to(dtype)
        v = torch.cat([shared_v, torch.randn(private_len, num_kv_heads, head_dim, generator=gen)]).to(dtype)
        sid = attn.add_sequence(tokens, k.to(device), v.to(device))
        kv[sid] = (k, v)
    q = torch.randn(batch, num_heads, head_dim, generator=gen).to(dtype)
    return attn, kv, q


def check_decode(attn, kv, q, dtype, partition="auto"):
    out = attn.decode(q.to(attn.device), partition=partition).float().cpu()
    ref = torch.stack([naive_attention(q[r], *kv[sid]) for r, sid in enumerate(attn.sequence_ids)])
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def release(attn):
    for sid in list(attn.sequence_ids):
        attn.remove_sequence(sid)
    attn.clear_cache()
    attn.check_invariants()
    assert attn.stats()["chunks_used"] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("private_len", [1, 17, 130])
@pytest.mark.parametrize("shared_len", [0, 1, 63, 64, 65, 1024])
@pytest.mark.parametrize("batch", [1, 3, 17, 64])
def test_decode_shapes(batch, shared_len, private_len, device):
    dtype = torch.float32 if device == "cpu" else torch.float16
    attn, kv, q = build(batch, shared_len, private_len, dtype=dtype, device=device)
    check_decode(attn, kv, q, dtype)
    release(attn)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(9, 3), (32, 8), (32, 32)])
@pytest.mark.parametrize("chunk_size", [16, 32, 64, 128])
def test_decode_heads_dtypes_chunks(chunk_size, heads, head_dim, dtype, device):
    attn, kv, q = build(
        5, 130, 17, heads=heads, head_dim=head_dim, chunk_size=chunk_size, dtype=dtype, device=device
    )
    check_decode(attn, kv, q, dtype)
    release(attn)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared_len", [0, 65, 1024])
def test_partitions_agree(shared_len, device):
    dtype = torch.float32 if device == "cpu" else torch.float16
    attn, kv, q = build(17, shared_len, 17, dtype=dtype, device=device)
    q = q.to(device)
    outs = {p: attn.decode(q, partition=p).float().cpu() for p in ("auto", "chunk_first", "sequence_first")}
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(outs["chunk_first"], outs["sequence_first"], atol=atol, rtol=rtol)
    torch.testing.assert_close(outs["auto"], outs["sequence_first"], atol=atol, rtol=rtol)
    check_decode(attn, kv, q.cpu(), dtype)
    release(attn)


def test_nested_sharing_and_decode_after_appends(device):
    dtype = torch.float32 if device == "cpu" else torch.float16
    gen = torch.Generator().manual_seed(1)
    attn = ChunkAttention(8, 2, 64, chunk_size=16, max_chunks=200, dtype=dtype, device=device)
    root = list(range(40))
    kv, tokens = {}, {}
    root_k, root_v = torch.randn(40, 2, 64, generator=gen), torch.randn(40, 2, 64, generator=gen)
    for group in range(2):
        branch = [1000 + group * 100 + i for i in range(35)]
        bk, bv = torch.randn(35, 2, 64, generator=gen), torch.randn(35, 2, 64, generator=gen)
        for member in range(3):
            tail = [5000 + group * 100 + member * 10 + i for i in range(member + 1)]
            k = torch.cat([root_k, bk, torch.randn(len(tail), 2, 64, generator=gen)]).to(dtype)
            v = torch.cat([root_v, bv, torch.randn(len(tail), 2, 64, generator=gen)]).to(dtype)
            sid = attn.add_sequence(root + branch + tail, k.to(device), v.to(device))
            kv[sid], tokens[sid] = (k, v), root + branch + tail
    for step in range(20):  # decode steps cross chunk boundaries
        q = torch.randn(len(kv), 8, 64, generator=gen).to(dtype)
        check_decode(attn, kv, q, dtype)
        for sid in attn.sequence_ids:
            k1, v1 = torch.randn(2, 64, generator=gen).to(dtype), torch.randn(2, 64, generator=gen).to(dtype)
            attn.append(sid, 7000 + step, k1.to(device), v1.to(device))
            kv[sid] = (torch.cat([kv[sid][0], k1[None]]), torch.cat([kv[sid][1], v1[None]]))
        attn.check_invariants()
    assert attn.stats()["shared_tokens"] == 32 + 2 * 32  # root chunks 0-1, then chunks 2-3 of each group
    release(attn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("start", [0, 1, 64, 100])
def test_prefill_over_shared_prefix(start, dtype, device):
    gen = torch.Generator().manual_seed(2)
    attn = ChunkAttention(9, 3, 64, chunk_size=32, max_chunks=32, dtype=dtype, device=device)
    n = 150
    k, v = torch.randn(n, 3, 64, generator=gen).to(dtype), torch.randn(n, 3, 64, generator=gen).to(dtype)
    first = attn.add_sequence(list(range(n)), k.to(device), v.to(device))
    second = attn.add_sequence(list(range(n - 10)) + [9] * 10)  # shares 4 full chunks with first
    assert attn.num_cached_tokens(second) == 128
    q = torch.randn(n - start, 9, 64, generator=gen).to(dtype)
    out = attn.prefill(first, q.to(device), start).float().cpu()
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(out, naive_causal_attention(q, k, v, start), atol=atol * 5, rtol=rtol * 5)
    attn.remove_sequence(first)
    attn.remove_sequence(second)
    release(attn)


def test_multilayer_add_append_decode():
    gen = torch.Generator().manual_seed(3)
    attn = ChunkAttention(4, 2, 32, chunk_size=16, max_chunks=16, dtype=torch.float32, num_layers=3)
    k, v = torch.randn(3, 20, 2, 32, generator=gen), torch.randn(3, 20, 2, 32, generator=gen)
    sid = attn.add_sequence(range(20), k, v)
    k1, v1 = torch.randn(3, 2, 32, generator=gen), torch.randn(3, 2, 32, generator=gen)
    attn.append(sid, 99, k1, v1)
    q = torch.randn(1, 4, 32, generator=gen)
    for layer in range(3):
        kk, vv = torch.cat([k[layer], k1[layer][None]]), torch.cat([v[layer], v1[layer][None]])
        torch.testing.assert_close(
            attn.decode(q, layer=layer)[0], naive_attention(q[0], kk, vv), atol=2e-5, rtol=2e-5
        )
    with pytest.raises(ValueError, match="must be"):
        attn.add_sequence(range(5), k[0, :5], v[0, :5])  # missing the layer dimension
    release(attn)


def test_int8_kv_close_to_fp32():
    attn, kv, q = build(6, 100, 40, dtype=torch.float32, kv_dtype=torch.int8)
    out = attn.decode(q)
    ref = torch.stack([naive_attention(q[r], *kv[sid]) for r, sid in enumerate(attn.sequence_ids)])
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 0.03, f"int8 KV relative error {err:.4f}"
    # values growing token by token force requantisation of a chunk's earlier tokens
    gen = torch.Generator().manual_seed(4)
    sid = attn.sequence_ids[0]
    k, v = kv[sid]
    for step in range(20):
        k1 = torch.randn(3, 64, generator=gen) * (1 + step)
        v1 = torch.randn(3, 64, generator=gen) * (1 + step)
        attn.append(sid, 50_000 + step, k1, v1)
        k, v = torch.cat([k, k1[None]]), torch.cat([v, v1[None]])
    gk, gv = attn.gather_kv(sid, attn.num_tokens(sid))
    chunk_of_token = attn.slots(sid, 0, attn.num_tokens(sid)) // attn.chunk_size
    for got, want, scale in ((gk, k, attn.k_scale[0]), (gv, v, attn.v_scale[0])):
        step = scale[chunk_of_token][:, :, None]  # [n, Hkv, 1]: the final scale of each token's chunk
        assert ((got - want).abs() <= step * 1.001 + 1e-6).all()
    release(attn)
