"""LlamaModel + ChunkAttention vs Hugging Face transformers on the packaged SmolLM2 GGUF.

Greedy decoding must agree token for token; prefill logits within a stated fp32 tolerance. Every
test leaves the ChunkAttention pool empty once its sequences are removed and the cache is cleared.
"""

import os

import pytest
import torch

from chunkattn_core import ChunkAttention
from chunkattn_core.model_loader import load_model, packaged_model_path

transformers = pytest.importorskip("transformers")

MAX_NEW_TOKENS = 24
CHUNK_SIZE = 16
# fp32 on both sides; only the summation order differs (fused projections, chunked KV, SDPA).
# Measured max |diff| of the last-position logits is ~4e-5.
LOGITS_TOLERANCE = dict(atol=5e-4, rtol=5e-4)
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is and why lookups are fast.",
    "List five fruits and their colors.",
]
LONG_SYSTEM_PROMPT = (
    "You are a careful assistant for a cooking website. Answer in plain English, keep answers short, "
    "never invent ingredients, and always mention the oven temperature in Celsius when it matters."
)


@pytest.fixture(scope="module")
def loaded():
    return load_model("smollm2")


@pytest.fixture(scope="module")
def hf_model():
    path = packaged_model_path("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def prompt_ids(loaded):
    tokenizer = loaded.tokenizer
    return [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS
    ]


@pytest.fixture(scope="module")
def hf_greedy(hf_model, loaded):
    """Greedy continuation by transformers (stops after an EOS id, like ours), memoised per prompt."""
    cache = {}
    eos_ids = sorted(loaded.tokenizer.eos_token_ids)

    def run(ids):
        key = tuple(ids)
        if key not in cache:
            with torch.no_grad():
                out = hf_model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    eos_token_id=eos_ids,
                    pad_token_id=eos_ids[0],
                )
            cache[key] = out[0, len(ids) :].tolist()
        return cache[key]

    return run


@pytest.fixture
def attn(loaded):
    config = loaded.config
    attn = ChunkAttention(
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        chunk_size=CHUNK_SIZE,
        max_chunks=128,
        dtype=torch.float32,
        num_layers=config.num_layers,
    )
    yield attn
    for sid in attn.sequence_ids:  # only after a failed test; passing tests remove their own
        attn.remove_sequence(sid)
    attn.clear_cache()
    assert attn.stats()["chunks_used"] == 0
    attn.check_invariants()


def prefill(model, attn, ids):
    """Adds a sequence and prefills what the prefix cache does not hold -> (sid, last logits)."""
    sid = attn.add_sequence(ids)
    cached = attn.num_cached_tokens(sid)
    start = min(cached, len(ids) - 1)  # a fully cached prompt still runs its last token for logits
    return sid, model.prefill(attn, sid, torch.tensor(ids[start:]), start=start, write_from=cached)


def generate(model, attn, prompts, eos_ids, max_new_tokens=MAX_NEW_TOKENS):
    """Greedy decoding of all prompts as one batch through append_tokens/decode.

    Returns (tokens per prompt, cached prompt tokens per prompt). Sequences are removed (their full
    chunks kept as prefix cache) as they finish.
    """
    outputs, cached = {}, {}
    for index, ids in enumerate(prompts):
        sid, logits = prefill(model, attn, ids)
        outputs[sid], cached[sid] = (index, [int(logits.argmax())]), attn.num_cached_tokens(sid)
    while True:
        for sid in attn.sequence_ids:
            tokens = outputs[sid][1]
            if tokens[-1] in eos_ids or len(tokens) >= max_new_tokens:
                attn.remove_sequence(sid)
        order = attn.sequence_ids
        if not order:
            break
        last = torch.tensor([outputs[sid][1][-1] for sid in order])
        slots = attn.append_tokens(order, last)
        assert attn.sequence_ids == order
        positions = torch.tensor([attn.num_tokens(sid) - 1 for sid in order])
        logits = model.decode(attn, last, positions, slots)
        assert logits.shape == (len(order), 49152) and logits.dtype == torch.float32
        for sid, row in zip(order, logits, strict=True):
            outputs[sid][1].append(int(row.argmax()))
    by_prompt = sorted(outputs.items(), key=lambda item: item[1][0])
    return [tokens for _, (_, tokens) in by_prompt], [cached[sid] for sid, _ in by_prompt]


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_prefill_logits_match_transformers(loaded, hf_model, prompt_ids, attn, index):
    ids = prompt_ids[index]
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0, -1].float()
    sid, logits = prefill(loaded.model, attn, ids)
    assert logits.shape == (49152,) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, **LOGITS_TOLERANCE)
    attn.remove_sequence(sid)


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_greedy_generation_matches_transformers(loaded, hf_greedy, prompt_ids, attn, index):
    ids = prompt_ids[index]
    (tokens,), _ = generate(loaded.model, attn, [ids], loaded.tokenizer.eos_token_ids)
    assert tokens == hf_greedy(ids), loaded.tokenizer.decode(tokens)


def test_batched_generation_matches_transformers(loaded, hf_greedy, prompt_ids, attn):
    """All prompts decoded together; they share the template's default system prompt chunk."""
    outputs, cached = generate(loaded.model, attn, prompt_ids, loaded.tokenizer.eos_token_ids)
    assert cached[0] == 0 and all(c >= CHUNK_SIZE for c in cached[1:])
    for ids, tokens in zip(prompt_ids, outputs, strict=True):
        assert tokens == hf_greedy(ids), loaded.tokenizer.decode(tokens)


def test_shared_system_prompt(loaded, attn):
    tokenizer, max_new_tokens = loaded.tokenizer, 8
    chats = [
        [{"role": "system", "content": LONG_SYSTEM_PROMPT}, {"role": "user", "content": question}]
        for question in ("How long should I boil an egg?", "What can I cook with rice and beans?")
    ]
    prompts = [tokenizer.encode(tokenizer.apply_chat_template(chat)) for chat in chats]
    num_common = next(i for i, (a, b) in enumerate(zip(*prompts, strict=False)) if a != b)
    assert num_common >= 2 * CHUNK_SIZE
    alone = [
        generate(loaded.model, attn, [ids], tokenizer.eos_token_ids, max_new_tokens)[0][0] for ids in prompts
    ]
    attn.clear_cache()

    # live together: the second sequence shares the first one's system-prompt chunks
    together, cached = generate(loaded.model, attn, prompts, tokenizer.eos_token_ids, max_new_tokens)
    assert cached[0] == 0
    assert cached[1] == num_common // CHUNK_SIZE * CHUNK_SIZE
    assert together == alone

    # one after the other: the first's chunks stayed as prefix cache after it finished
    (again,), (cached_again,) = generate(
        loaded.model, attn, [prompts[1]], tokenizer.eos_token_ids, max_new_tokens
    )
    assert cached_again == len(prompts[1]) // CHUNK_SIZE * CHUNK_SIZE
    assert again == alone[1]


def test_fully_cached_prompt(loaded, prompt_ids, attn):
    """A prompt of whole chunks seen before: nothing is rewritten, the last token is recomputed."""
    ids = prompt_ids[0][: 2 * CHUNK_SIZE]
    sid, first = prefill(loaded.model, attn, ids)
    attn.remove_sequence(sid)
    sid, second = prefill(loaded.model, attn, ids)
    assert attn.num_cached_tokens(sid) == len(ids)
    torch.testing.assert_close(second, first, **LOGITS_TOLERANCE)  # 1 row vs 32 rows: other GEMM blocking
    attn.remove_sequence(sid)


def test_bad_arguments(loaded, prompt_ids, attn):
    model, ids = loaded.model, prompt_ids[0]
    sid = attn.add_sequence(ids)
    with pytest.raises(ValueError, match="write_from"):
        model.prefill(attn, sid, torch.tensor(ids), start=0, write_from=len(ids) + 1)
    with pytest.raises(ValueError, match="positions up to"):
        model.prefill(attn, sid, torch.tensor(ids + [5]), start=0, write_from=0)
    with pytest.raises(ValueError, match="live sequences"):
        model.decode(attn, torch.tensor([1, 2]), torch.tensor([5, 5]), torch.tensor([0, 1]))
    attn.remove_sequence(sid)
    other = ChunkAttention(9, 3, 64, chunk_size=CHUNK_SIZE, max_chunks=4, dtype=torch.float32, num_layers=2)
    with pytest.raises(ValueError, match="does not fit"):
        model.prefill(other, 0, torch.tensor(ids), start=0, write_from=0)
