"""The `chunkattn` command line: generate, bench kernel, bench e2e."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from chunkattn_core import generate
    from chunkattn_core.bench import e2e, kernel

    parser = argparse.ArgumentParser(prog="chunkattn", description="LLM serving with ChunkAttention")
    commands = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(commands)
    bench = commands.add_parser("bench", help="benchmarks that print one row per configuration")
    benches = bench.add_subparsers(dest="bench", required=True)
    kernel.add_parser(benches)
    e2e.add_parser(benches)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
