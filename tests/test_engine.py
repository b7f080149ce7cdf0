"""Engine with the real SmolLM2 model on small KV pools (model loaded once per session)."""

import threading

import pytest
import torch

from chunkattn_core.config import EngineConfig
from chunkattn_core.engine import Engine
from chunkattn_core.sampling import SamplingParams

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0.0, max_tokens=10)
SYSTEM = (
    "You are a careful assistant for a small bakery. Answer briefly, in one sentence, and always "
    "mention that the bakery opens at seven in the morning and closes at six in the evening."
)
QUESTIONS = ["What bread do you sell?", "Do you have coffee?", "Can I order a cake?", "Where are you?"]


@pytest.fixture(scope="session")
def loaded():
    from chunkattn_core.model_loader import load_model

    torch.manual_seed(0)
    return load_model("smollm2", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: with two, the native kernel's OpenMP region and torch's threads slow
    each other down about 20x on a 2-core machine unless OMP_WAIT_POLICY=passive (reported)."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture
def make_engine(loaded):
    """Builds engines on the shared model; afterwards checks each pool is back to its baseline."""
    engines = []

    def make(**overrides):
        config = EngineConfig(**{"chunk_size": 16, "max_chunks": 64, **overrides})
        engine = Engine(config, loaded=loaded)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        assert not engine.has_unfinished()
        engine.shutdown()
        stats = engine.attn.stats()
        assert stats["num_sequences"] == 0
        assert stats["chunks_used"] == stats["chunks_cached"]  # only evictable cache is left
        engine.attn.check_invariants()
        engine.attn.clear_cache()
        assert engine.attn.stats()["chunks_free"] == engine.attn.max_chunks


def ask(question, params=GREEDY, **kwargs):
    return {"prompt": question, "system": SYSTEM, "params": params, **kwargs}


def test_concurrent_generate_equals_one_at_a_time(make_engine):
    engine = make_engine(prefix_cache=False)
    requests = [ask(q) for q in QUESTIONS] + [{"prompt": "Count to five.", "params": GREEDY}]
    together = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert [o.text for o in together] == [o.text for o in alone]
    for out in together:
        assert out.finish_reason in ("stop", "length")
        assert out.completion_tokens == len(out.token_ids) <= GREEDY.max_tokens
        assert out.prompt_tokens > 0 and out.cached_prompt_tokens == 0


def test_shared_system_prompt_is_cached_and_gives_the_same_output(make_engine):
    shared, private = make_engine(prefix_cache=True), make_engine(prefix_cache=False)
    first = shared.generate([ask(QUESTIONS[0])])[0]
    second = shared.generate([ask(QUESTIONS[1])])[0]
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens >= 32  # the system message spans several 16-token chunks
    assert second.cached_prompt_tokens <= second.prompt_tokens
    reference = private.generate([ask(QUESTIONS[1])])[0]
    assert reference.cached_prompt_tokens == 0
    assert second.token_ids == reference.token_ids


def test_fully_cached_prompt_reruns_only_its_last_token(make_engine):
    engine = make_engine()
    prompt_token_ids = engine.tokenize(QUESTIONS[2], system=SYSTEM)[:48]  # exactly three chunks
    first, again = (
        engine.generate([{"prompt_token_ids": prompt_token_ids, "params": GREEDY}])[0] for _ in "ab"
    )
    assert (first.cached_prompt_tokens, again.cached_prompt_tokens) == (0, 48)
    assert again.token_ids == first.token_ids


def test_small_pool_evicts_cache_and_preempts(make_engine):
    requests = [ask(q, SamplingParams(temperature=0.0, max_tokens=12)) for q in QUESTIONS]
    requests += [
        {"prompt": f"Say the number {i}.", "system": f"Persona {i}.", "params": GREEDY} for i in range(3)
    ]
    reference = make_engine(max_chunks=128).generate(requests)
    small = make_engine(max_chunks=16)  # 256 tokens: far less than the batch needs at once
    outputs = small.generate(requests)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in reference]
    assert small.attn.stats()["evictions"] > 0
    assert sum(o.num_preemptions for o in outputs) > 0


def test_too_long_and_bad_requests_are_refused(make_engine):
    engine = make_engine(max_model_len=40, max_chunks=8)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(QUESTIONS[0], GREEDY, system=SYSTEM)
    with pytest.raises(ValueError, match="exactly one"):
        engine.add_request(QUESTIONS[0], GREEDY, prompt_token_ids=[1, 2])
    with pytest.raises(ValueError, match="prompt_token_ids"):
        engine.add_request(prompt_token_ids=[10**9])
    with pytest.raises(ValueError, match="messages"):
        engine.add_request(messages=[{"role": "robot", "content": "hi"}])
    out = engine.generate([{"prompt_token_ids": [1, 2, 3], "params": SamplingParams(max_tokens=100)}])[0]
    assert out.finish_reason in ("length", "stop") and out.completion_tokens <= 37


def test_abort_mid_stream_frees_chunks(make_engine):
    engine = make_engine()
    free_before = engine.attn.num_free_tokens()
    handle = engine.add_request(
        QUESTIONS[0], SamplingParams(max_tokens=50, ignore_eos=True), "r1", system=SYSTEM
    )
    deltas = []
    for delta in handle:
        deltas.append(delta)
        if len(deltas) == 3:
            assert engine.abort("r1")
    assert deltas[-1].finished and deltas[-1].output.finish_reason == "abort"
    assert 3 <= deltas[-1].output.completion_tokens < 50
    assert engine.attn.stats()["num_sequences"] == 0
    assert engine.attn.num_free_tokens() == free_before
    assert not engine.abort("r1")
    stream = engine.stream(QUESTIONS[1], SamplingParams(max_tokens=50, ignore_eos=True), system=SYSTEM)
    next(stream)
    stream.close()  # leaving a stream early aborts its request
    assert engine.attn.stats()["num_sequences"] == 0 and not engine.has_unfinished()


def test_stop_strings_cut_the_text(make_engine):
    engine = make_engine()
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    full = engine.generate([ask(QUESTIONS[0], params)])[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[3]
    expected = full[: full.find(stop)]
    stopped = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=["@@never@@", stop])
    out = engine.generate([ask(QUESTIONS[0], stopped)])[0]
    assert (out.text, out.finish_reason) == (expected, "stop")
    streamed = "".join(d.text for d in engine.stream(QUESTIONS[0], stopped, system=SYSTEM))
    assert streamed == expected


def test_eos_ends_with_stop_and_is_not_in_the_text(make_engine):
    engine = make_engine()
    out = engine.generate([{"prompt": "Say hi.", "params": SamplingParams(temperature=0.0, max_tokens=40)}])[
        0
    ]
    assert out.finish_reason == "stop", out
    assert out.token_ids[-1] in engine.tokenizer.eos_token_ids
    assert out.text == engine.tokenizer.decode(out.token_ids[:-1])


def test_seed_reproducible_whatever_the_batch(make_engine):
    engine = make_engine()
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=10, seed=1234, ignore_eos=True)
    alone = engine.generate([ask(QUESTIONS[0], sampled)])[0]
    others = [ask(q, SamplingParams(temperature=0.8, max_tokens=12)) for q in QUESTIONS[1:]]
    batched = engine.generate([*others[:1], ask(QUESTIONS[0], sampled), *others[1:]])[1]
    assert batched.token_ids == alone.token_ids
    other_seed = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=10, seed=4321, ignore_eos=True)
    assert engine.generate([ask(QUESTIONS[0], other_seed)])[0].token_ids != alone.token_ids


def test_background_loop_serves_other_threads(make_engine):
    engine = make_engine()
    expected = {q: engine.generate([ask(q)])[0].token_ids for q in QUESTIONS}
    engine.start()
    results = {}

    def client(question):
        handle = engine.add_request(question, GREEDY, system=SYSTEM)
        results[question] = [t for d in handle for t in d.token_ids]

    threads = [threading.Thread(target=client, args=(q,)) for q in QUESTIONS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    engine.shutdown()
    assert results == expected
