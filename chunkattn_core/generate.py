"""`chunkattn generate`: complete one prompt (streamed), or a JSONL file of requests run concurrently."""

from __future__ import annotations

import argparse
import json
import sys

from chunkattn_core.config import EngineConfig
from chunkattn_core.sampling import SamplingParams

RESULT_FIELDS = ("text", "token_ids", "prompt_tokens", "cached_prompt_tokens", "completion_tokens")


class UsageError(Exception):
    """Bad input: reported on stderr with exit code 2."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="complete a prompt (chat template applied) or a JSONL file of requests",
        description="Complete PROMPT as a user message (after --system), streaming the text; or, with "
        '--jsonl, run every line ({"id", "system", "prompt"} or {"id", "prompt_token_ids"}) '
        "concurrently and print one JSON result per line.",
    )
    parser.add_argument("prompt", nargs="?", metavar="PROMPT", help="the user message")
    parser.add_argument("--jsonl", metavar="FILE", help="requests, one JSON object per line")
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a local HF Llama checkpoint dir")
    parser.add_argument("--system", help="system message, put before the prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], metavar="S", help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--kv-int8", action="store_true", help="store the KV cache as INT8")
    parser.add_argument("--no-prefix-cache", action="store_true", help="give every request private chunks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--max-chunks", type=int, default=512, help="KV pool size in chunks")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        if (args.prompt is None) == (args.jsonl is None):
            raise UsageError("give a PROMPT or --jsonl FILE (not both)")
        requests = read_jsonl(args.jsonl) if args.jsonl else None
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
        )
        config = EngineConfig(
            model=args.model,
            dtype=args.dtype,
            device=args.device,
            chunk_size=args.chunk_size,
            max_chunks=args.max_chunks,
            max_batch_size=args.max_batch_size,
            kv_int8=args.kv_int8,
            prefix_cache=not args.no_prefix_cache,
        )
        engine = _make_engine(config)
        if requests is None:
            return _run_prompt(engine, args, params)
        return _run_jsonl(engine, requests, params)
    except (UsageError, ValueError) as exc:
        print(f"chunkattn generate: error: {exc}", file=sys.stderr)
        return 2


def read_jsonl(path: str) -> list[dict]:
    """Parses and checks a requests file; raises UsageError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    requests = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: bad JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a JSON object")
        unknown = set(item) - {"id", "system", "prompt", "prompt_token_ids"}
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {sorted(unknown)}")
        if ("prompt" in item) == ("prompt_token_ids" in item):
            raise UsageError(f"{where}: give exactly one of 'prompt' and 'prompt_token_ids'")
        if "prompt" in item and not isinstance(item["prompt"], str):
            raise UsageError(f"{where}: 'prompt' must be a string")
        if not isinstance(item.get("system", ""), str):
            raise UsageError(f"{where}: 'system' must be a string")
        ids = item.get("prompt_token_ids", [])
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise UsageError(f"{where}: 'prompt_token_ids' must be a list of integers")
        item.setdefault("id", str(line_no))
        item["line"] = where
        requests.append(item)
    if not requests:
        raise UsageError(f"{path}: no requests")
    ids = [str(item["id"]) for item in requests]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{path}: request ids must be unique")
    return requests


def _make_engine(config: EngineConfig):
    from chunkattn_core.engine import Engine

    try:
        return Engine(config)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load model {config.model!r}: {exc}") from None


def _run_prompt(engine, args, params: SamplingParams) -> int:
    for delta in engine.stream(args.prompt, params, system=args.system):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _run_jsonl(engine, requests: list[dict], params: SamplingParams) -> int:
    handles = []
    for item in requests:
        kwargs = {"request_id": str(item["id"]), "system": item.get("system")}
        if "prompt" in item:
            kwargs["prompt"] = item["prompt"]
        else:
            kwargs["prompt_token_ids"] = item["prompt_token_ids"]
        try:
            handles.append(engine.add_request(params=params, **kwargs))
        except ValueError as exc:
            for handle in handles:
                engine.abort(handle.request_id)
            raise UsageError(f"{item['line']}: {exc}") from None
    for item, handle in zip(requests, handles, strict=True):
        out = handle.result()
        result = {"id": item["id"], **{k: getattr(out, k) for k in RESULT_FIELDS}}
        result["finish_reason"] = out.finish_reason
        print(json.dumps(result), flush=True)
    return 0
