"""load_model: the packaged GGUF, local Hugging Face directories, and clear errors for bad input."""

import json
import os

import pytest
import torch

from chunkattn_core import ChunkAttention
from chunkattn_core.gguf_loader import unpermute_rotary
from chunkattn_core.model import LlamaModel
from chunkattn_core.model_loader import load_model, packaged_model_path

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_smollm2_config(smollm2):
    config = smollm2.config
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (30, 9, 3, 64)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (49152, 576, 1536)
    assert config.rope_theta == 100000.0
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert config.max_position_embeddings == 8192
    assert config.tie_word_embeddings
    assert config.bos_token_id == 1 and config.eos_token_ids == (2,)


def test_smollm2_model(smollm2):
    model = smollm2.model
    assert isinstance(model, LlamaModel)
    assert not model.training
    params = list(model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad for p in params)
    assert model.lm_head is None  # tied to the embeddings
    assert model.layers[0].self_attn.qkv_proj.weight.shape == (9 * 64 + 2 * 3 * 64, 576)
    assert sum(p.numel() for p in params) == 134_515_008


def test_unpermute_rotary_inverts_llama_cpp_permute():
    def llama_cpp_permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for num_heads in (1, 3, 9):
        w = torch.randn(num_heads * 64, 40)
        torch.testing.assert_close(unpermute_rotary(llama_cpp_permute(w, num_heads), num_heads), w)


# ---- errors --------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "nope.gguf"))


def test_unknown_name():
    with pytest.raises(FileNotFoundError, match="smollm2"):
        load_model("no-such-model")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a .gguf"):
        load_model(str(path))


@pytest.mark.parametrize("content", [b"", b"GGUF", os.urandom(4096)], ids=["empty", "magic-only", "random"])
def test_garbage_gguf(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_model(str(path))


@pytest.mark.parametrize("size", [100_000, 20_000_000], ids=["in-metadata", "in-tensors"])
def test_truncated_gguf(tmp_path, size):
    path = tmp_path / "truncated.gguf"
    with open(packaged_model_path("smollm2"), "rb") as f:
        path.write_bytes(f.read(size))
    with pytest.raises(ValueError, match="truncated.gguf"):
        load_model(str(path))


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        load_model("smollm2", dtype=torch.int8)


# ---- a tiny Hugging Face checkpoint directory ----------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROPE_VARIANTS = {
    "tied-default-rope": dict(
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e4}
    ),
    "untied-llama3-rope": dict(
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 5e4,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
}


def write_tokenizer(path, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["hello world, the tiny llama says hello to the world"] * 20, trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE}
    (path / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module", params=sorted(ROPE_VARIANTS))
def tiny_hf_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        **ROPE_VARIANTS[request.param],
    )
    hf_model = transformers.LlamaForCausalLM(config).eval()
    hf_model.save_pretrained(path)
    write_tokenizer(path, 300)
    return path, hf_model


def test_hf_dir_loads_and_matches_transformers(tiny_hf_dir):
    path, hf_model = tiny_hf_dir
    loaded = load_model(str(path))
    config, model = loaded.config, loaded.model
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (2, 4, 2, 16)
    assert config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    assert loaded.tokenizer.eos_token_id == loaded.tokenizer.token_to_id("<|im_end|>")
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hello tiny world"}])
    assert prompt.endswith("<|im_start|>assistant\n")

    torch.manual_seed(1)
    token_ids = torch.randint(0, 320, (90,))  # crosses chunks and the llama3 rope's wavelength bands
    with torch.no_grad():
        expected = hf_model(token_ids[None]).logits[0].float()  # [90, vocab]
    attn = ChunkAttention(4, 2, 16, chunk_size=16, max_chunks=16, dtype=torch.float32, num_layers=2)
    num_prompt = 37
    sid = attn.add_sequence(token_ids[:num_prompt].tolist())
    # prefill in two pieces (the second attends to the first's KV), then decode the rest
    model.prefill(attn, sid, token_ids[:20], start=0, write_from=0)
    logits = model.prefill(attn, sid, token_ids[20:num_prompt], start=20, write_from=20)
    torch.testing.assert_close(logits, expected[num_prompt - 1], atol=1e-4, rtol=1e-4)
    for position in range(num_prompt, 90):
        slots = attn.append_tokens([sid], token_ids[position : position + 1])
        logits = model.decode(attn, token_ids[position : position + 1], torch.tensor([position]), slots)
        torch.testing.assert_close(logits[0], expected[position], atol=1e-4, rtol=1e-4)
    attn.remove_sequence(sid)
    attn.clear_cache()
    assert attn.stats()["chunks_used"] == 0


def _copy_dir(src, dst, skip=()):
    dst.mkdir()
    for name in os.listdir(src):
        if name not in skip:
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_hf_dir_errors(tiny_hf_dir, tmp_path):
    src, _ = tiny_hf_dir
    no_weights = _copy_dir(src, tmp_path / "no_weights", skip=("model.safetensors",))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(str(no_weights))

    no_tokenizer = _copy_dir(src, tmp_path / "no_tokenizer", skip=("tokenizer.json",))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_model(str(no_tokenizer))

    bad_json = _copy_dir(src, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{ this is not json")
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(bad_json))

    not_llama = _copy_dir(src, tmp_path / "not_llama")
    config = json.loads((src / "config.json").read_text())
    (not_llama / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        load_model(str(not_llama))

    wrong_shape = _copy_dir(src, tmp_path / "wrong_shape")
    (wrong_shape / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(ValueError, match="shape"):
        load_model(str(wrong_shape))

    garbage_weights = _copy_dir(src, tmp_path / "garbage_weights")
    (garbage_weights / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(str(garbage_weights))


# logits of the tiny model have std ~0.2; measured max |diff| vs fp32 is ~2e-3 (bf16), ~3e-4 (fp16)
HALF_TOLERANCE = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=5e-3, rtol=5e-3)}


@pytest.mark.parametrize("dtype", sorted(HALF_TOLERANCE, key=str))
def test_hf_dir_half_precision(tiny_hf_dir, dtype):
    """Weights, activations and KV in 16 bits (the GPU configuration), run here on the CPU."""
    path, hf_model = tiny_hf_dir
    model = load_model(str(path), dtype=dtype).model
    assert all(p.dtype == dtype for p in model.parameters())
    token_ids = torch.randint(0, 320, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf_model(token_ids[None]).logits[0].float()
    attn = ChunkAttention(4, 2, 16, chunk_size=16, max_chunks=8, dtype=dtype, num_layers=2)
    sid = attn.add_sequence(token_ids[:39].tolist())
    logits = model.prefill(attn, sid, token_ids[:39], start=0, write_from=0)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected[38], **HALF_TOLERANCE[dtype])
    slots = attn.append_tokens([sid], token_ids[39:])
    logits = model.decode(attn, token_ids[39:], torch.tensor([39]), slots)
    torch.testing.assert_close(logits[0], expected[39], **HALF_TOLERANCE[dtype])
    attn.remove_sequence(sid)
    attn.clear_cache()
    assert attn.stats()["chunks_used"] == 0
