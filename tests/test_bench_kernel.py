"""`chunkattn bench kernel` runs end to end on a tiny configuration and writes its JSON."""

import argparse
import json

from chunkattn_core.bench import kernel


def test_bench_kernel_tiny(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    kernel.add_parser(parser.add_subparsers())
    out = tmp_path / "kernel.json"
    args = parser.parse_args(
        [
            "kernel",
            "--batch",
            "3",
            "--shared",
            "0,65",
            "--private",
            "17",
            "--heads",
            "smollm2-9/3x64",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    assert args.func(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shared_tokens"], r["private_tokens"]) for r in rows] == [(0, 17), (65, 17)]
    assert all(r["chunk_ms"] > 0 and r["sdpa_ms"] > 0 and r["speedup_vs_sdpa"] > 0 for r in rows)
    assert "x sdpa" in capsys.readouterr().out


def test_bench_kernel_rejects_unknown_heads(capsys):
    parser = argparse.ArgumentParser()
    kernel.add_parser(parser.add_subparsers())
    args = parser.parse_args(["kernel", "--heads", "7x7"])
    assert args.func(args) == 2
    assert "unknown --heads" in capsys.readouterr().out
