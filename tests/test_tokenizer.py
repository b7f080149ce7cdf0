"""Tokenizer built from the packaged SmolLM2 GGUF vs transformers' tokenizer of the same file."""

import os

import pytest

from chunkattn_core.model_loader import packaged_model_path
from chunkattn_core.tokenizer import Tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "a 123 4567 x1 3.14159 1,000,000",
    "  leading spaces, trailing   \n\n\ttabs\r\nand CRLF  ",
    "héllo wörld — naïve café, 日本語のテキスト, Привет, 🙂🚀 emoji",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_start|>",
    "def f(x):\n    return x ** 2  # square\n",
    "It's we'll they're I'M",
    "",
    " ",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three colors."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "And three more? ünïcödé 🙂"},
    ],
]


@pytest.fixture(scope="module")
def gguf_path():
    return packaged_model_path("smollm2")


@pytest.fixture(scope="module")
def ours(gguf_path):
    import gguf

    from chunkattn_core.gguf_loader import read_metadata

    return Tokenizer.from_gguf_metadata(read_metadata(gguf.GGUFReader(gguf_path)))


@pytest.fixture(scope="module")
def hf(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path)
    )


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(ours, hf, text):
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False)
    assert ours.encode(text, add_special_tokens=True) == hf.encode(text, add_special_tokens=True)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers(ours, hf, text):
    ids = hf.encode(text, add_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_special_tokens(ours):
    im_start, im_end = ours.token_to_id("<|im_start|>"), ours.token_to_id("<|im_end|>")
    assert ours.encode("<|im_start|>") == [im_start]
    assert ours.encode("x<|im_end|>y")[1] == im_end
    assert ours.bos_token_id == 1
    assert ours.eos_token_id == im_end == 2
    assert {im_end, ours.token_to_id("<|endoftext|>")} <= ours.eos_token_ids
    assert ours.decode([im_start, *ours.encode("hi"), im_end]) == "hi"
    assert ours.vocab_size == 49152


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(ours, hf, chat, add_generation_prompt):
    expected = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = ours.apply_chat_template(chat, add_generation_prompt=add_generation_prompt)
    assert text == expected
    assert ours.encode(text) == hf.encode(expected, add_special_tokens=False)


def test_chat_template_rejects_bad_messages(ours):
    with pytest.raises(ValueError, match="role"):
        ours.apply_chat_template([{"content": "no role"}])
    with pytest.raises(ValueError, match="content"):
        ours.apply_chat_template([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="list"):
        ours.apply_chat_template("just a string")


def test_from_pretrained_dir_matches_gguf(ours, hf, tmp_path):
    """The Hugging Face directory path (tokenizer.json + tokenizer_config.json) gives the same tokenizer."""
    hf.save_pretrained(tmp_path)
    from_dir = Tokenizer.from_pretrained_dir(tmp_path)
    for text in TEXTS:
        assert from_dir.encode(text) == ours.encode(text)
    assert from_dir.apply_chat_template(CHATS[1]) == ours.apply_chat_template(CHATS[1])
    assert from_dir.bos_token_id == ours.bos_token_id
    assert from_dir.eos_token_ids == ours.eos_token_ids


def test_from_pretrained_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_gguf_metadata_errors():
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="lacks"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})
