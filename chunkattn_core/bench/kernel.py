"""`chunkattn bench kernel`: decode attention on the paper's shapes.

Per configuration: ChunkAttention decode latency (median), the same tree run sequence-first (every
sequence reads all of its chunks, as PagedAttention does), torch scaled_dot_product_attention over
each sequence's full KV (the no-sharing baseline) in the same run, the speedup, and the achieved
bandwidth on unique KV bytes beside this machine's measured memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from chunkattn_core.attention import ChunkAttention

HEAD_SHAPES = {"32x128": (32, 32, 128), "smollm2-9/3x64": (9, 3, 64)}


@dataclass(slots=True)
class Row:
    heads: str
    batch: int
    shared_tokens: int
    private_tokens: int
    dtype: str
    chunk_ms: float
    seq_first_ms: float
    sdpa_ms: float
    speedup_vs_sdpa: float
    speedup_vs_seq_first: float
    unique_kv_gb: float
    achieved_gbps: float
    bandwidth_fraction: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_bandwidth_gbps(device: torch.device, gib: float = 1.0) -> float:
    """Read bandwidth: median time to sum a `gib` GiB tensor."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    ms = median_ms(lambda: x.sum(), device, warmup=2, repeats=7)
    return x.numel() * 4 / (ms * 1e-3) / 1e9


def run_case(
    heads: str,
    batch: int,
    shared: int,
    private: int,
    dtype: torch.dtype,
    device: torch.device,
    chunk_size: int,
    bandwidth: float,
    warmup: int,
    repeats: int,
) -> Row:
    num_heads, num_kv_heads, head_dim = HEAD_SHAPES[heads]
    gen = torch.Generator(device="cpu").manual_seed(0)
    max_chunks = shared // chunk_size + 1 + batch * (private // chunk_size + 2)
    attn = ChunkAttention(
        num_heads,
        num_kv_heads,
        head_dim,
        chunk_size=chunk_size,
        max_chunks=max_chunks,
        dtype=dtype,
        device=device,
    )
    shared_k = torch.randn(shared, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    shared_v = torch.randn(shared, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    full_k, full_v = [], []
    for b in range(batch):
        tokens = list(range(shared)) + [1_000_000 + b * private + i for i in range(private)]
        k = torch.cat(
            [shared_k, torch.randn(private, num_kv_heads, head_dim, generator=gen).to(device, dtype)]
        )
        v = torch.cat(
            [shared_v, torch.randn(private, num_kv_heads, head_dim, generator=gen).to(device, dtype)]
        )
        attn.add_sequence(tokens, k, v)
        full_k.append(k.transpose(0, 1))
        full_v.append(v.transpose(0, 1))
    # Baseline inputs: every sequence's own full KV, [B, Hkv, n, D] (all sequences have equal length).
    k_all, v_all = torch.stack(full_k), torch.stack(full_v)
    del full_k, full_v
    q = torch.randn(batch, num_heads, head_dim, generator=gen).to(device, dtype)
    q_sdpa = q.unsqueeze(2)  # [B, H, 1, D]
    gqa = num_heads != num_kv_heads

    def sdpa():
        return F.scaled_dot_product_attention(q_sdpa, k_all, v_all, enable_gqa=gqa)

    ours = attn.decode(q)
    torch.testing.assert_close(ours.float(), sdpa().squeeze(2).float(), atol=2e-2, rtol=2e-2)
    chunk_ms = median_ms(lambda: attn.decode(q), device, warmup, repeats)
    seq_first_ms = median_ms(lambda: attn.decode(q, partition="sequence_first"), device, warmup, repeats)
    sdpa_ms = median_ms(sdpa, device, warmup, repeats)
    unique_bytes = (shared + batch * private) * num_kv_heads * head_dim * 2 * attn.k_pool.element_size()
    achieved = unique_bytes / (chunk_ms * 1e-3) / 1e9
    return Row(
        heads,
        batch,
        shared,
        private,
        str(dtype).replace("torch.", ""),
        chunk_ms,
        seq_first_ms,
        sdpa_ms,
        sdpa_ms / chunk_ms,
        seq_first_ms / chunk_ms,
        unique_bytes / 1e9,
        achieved,
        achieved / bandwidth,
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("kernel", help="decode attention: ChunkAttention vs SDPA on the paper's shapes")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="default: float32 on cpu, float16 on cuda",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--shared", default="0,1024,2048,4096", help="comma-separated shared token counts")
    p.add_argument("--private", default="64,512", help="comma-separated private token counts")
    p.add_argument("--heads", default=",".join(HEAD_SHAPES), help=f"comma-separated of {list(HEAD_SHAPES)}")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", metavar="PATH", help="write the rows and the machine's figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("chunkattn bench kernel: --device cuda but no CUDA GPU is visible")
        return 2
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "float16"))
    heads = args.heads.split(",")
    for h in heads:
        if h not in HEAD_SHAPES:
            print(f"chunkattn bench kernel: unknown --heads {h!r}; choose from {list(HEAD_SHAPES)}")
            return 2
    bandwidth = measure_bandwidth_gbps(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {name} ({torch.get_num_threads()} threads), measured read bandwidth {bandwidth:.1f} GB/s")
    header = (
        f"{'heads':>15} {'batch':>5} {'shared':>6} {'private':>7} {'dtype':>8} {'chunk ms':>9} "
        f"{'seqfirst ms':>11} {'sdpa ms':>9} {'x sdpa':>7} {'x seqfirst':>10} {'GB/s':>7} {'of bw':>6}"
    )
    print(header)
    rows = []
    for h in heads:
        for shared in map(int, args.shared.split(",")):
            for private in map(int, args.private.split(",")):
                row = run_case(
                    h,
                    args.batch,
                    shared,
                    private,
                    dtype,
                    device,
                    args.chunk_size,
                    bandwidth,
                    args.warmup,
                    args.repeats,
                )
                rows.append(row)
                print(
                    f"{row.heads:>15} {row.batch:>5} {row.shared_tokens:>6} {row.private_tokens:>7} "
                    f"{row.dtype:>8} {row.chunk_ms:>9.3f} {row.seq_first_ms:>11.3f} {row.sdpa_ms:>9.3f} "
                    f"{row.speedup_vs_sdpa:>7.2f} {row.speedup_vs_seq_first:>10.2f} "
                    f"{row.achieved_gbps:>7.1f} {row.bandwidth_fraction:>6.0%}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": name,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "bandwidth_gbps": bandwidth,
                    "rows": [asdict(r) for r in rows],
                },
                f,
                indent=2,
            )
        print(f"wrote {args.json}")
    return 0
